#!/usr/bin/env bash
# Creates the kind cluster, loads Trishanku's images into it, makes the
# heavens' Secrets and applies the two-heavens overlay, then waits until every
# Deployment is available.
#
#   kind/up.sh [--dry-run]
#
# Needs kind, kubectl and Docker; builds the images with `make images`.
# Secrets and the admin kubeconfig are kept in target/kind/.
set -o errexit -o pipefail -o nounset
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
need kind kubectl docker openssl

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
say "cluster $CLUSTER"
run kind create cluster --config "$ROOT/kind/kind-config.yaml" --name "$CLUSTER"
say "images, built here and loaded into the node"
run make -C "$ROOT" images
for image in trishanku git-sync git-server; do
	run kind load docker-image --name "$CLUSTER" "trishanku/$image:$VERSION"
done
say "namespace and Secrets (kept in $STATE)"
run mkdir -p "$STATE"
k create namespace "$NS"
if [[ -z $DRY_RUN && ! -s $STATE/git-password ]]; then
	(umask 077 && openssl rand -hex 16 >"$STATE/git-password")
fi
k create secret generic git-credentials --from-file=password="$STATE/git-password"
if [[ -n $DRY_RUN ]]; then
	run "$ROOT/manifests/heaven-secrets.sh" --dir "$STATE/pki" --namespace "$NS" kcm scheduler=system:kube-scheduler
	k apply -f "$STATE/secrets.yaml"
else
	"$ROOT/manifests/heaven-secrets.sh" --dir "$STATE/pki" --namespace "$NS" kcm scheduler=system:kube-scheduler \
		>"$STATE/secrets.yaml"
	k apply -f "$STATE/secrets.yaml"
fi
say "the two-heavens overlay"
k apply -k "$ROOT/manifests/overlays/two-heavens"
k wait --for=condition=Available --timeout=300s deployment --all
say "up: kind/demo.sh shows the heavens coordinating"
