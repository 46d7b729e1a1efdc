#!/bin/bash
# A --git wrapper for the askpass cases: a file:// fetch has no credentials
# of its own, so this one demands that git-sync stored my-username and
# my-password for the URL with `git credential approve` (git's cache helper,
# which `git credential fill` reads back here).
set -o errexit -o nounset
case "$1" in
clone | ls-remote | fetch)
    url=$(printf '%s\n' "$@" | grep -m1 '^file://')
    creds=$(printf 'url=%s\n\n' "$url" | git credential fill)
    user=$(printf '%s\n' "$creds" | grep '^username=' || true)
    pass=$(printf '%s\n' "$creds" | grep '^password=' || true)
    if [[ "$user" != "username=my-username" || "$pass" != "password=my-password" ]]; then
        echo "git-askpass.sh: wrong or missing credentials for $url" >&2
        exit 1
    fi
    ;;
esac
exec git "$@"
