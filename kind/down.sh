#!/usr/bin/env bash
# Deletes the kind cluster of kind/up.sh and what it kept in target/kind.
#
#   kind/down.sh [--dry-run]
set -o errexit -o pipefail -o nounset
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
need kind
run kind delete cluster --name "$CLUSTER"
run rm -rf "$STATE"
