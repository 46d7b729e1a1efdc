#!/usr/bin/env bash
# Checks the images images/build.sh made (make e2e-images runs both): every
# binary answers --help and its version as the image's non-root user; the
# toolkit image's gitcd serves etcdctl on a loopback port; the git-sync
# image syncs a repository into /git as UID 65533; the demo Git host serves
# a clone behind basic auth.
set -o errexit -o pipefail -o nounset

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
WORK=$(mktemp -d /tmp/trishanku-images.XXXXXX)
SUITE=images
export ETCDCTL_API=3
source "$ROOT/e2e/lib/common.sh"
CONTAINERS=()
cleanup() {
	local rc=$? c
	for c in "${CONTAINERS[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
	on_exit "$rc"
}
trap cleanup EXIT

run() { docker run --rm --pull=never --network host "$@"; }
# started NAME: records a detached container to remove at the end, and its logs.
started() {
	CONTAINERS+=("$1")
	(docker logs -f "$1" >"$WORK/$1.log" 2>&1 &)
}

# user IMAGE UID: the image's configured user, and what `id -u` says in it.
user() {
	local configured got
	configured=$(docker image inspect -f '{{.Config.User}}' "$1")
	[[ $configured == "$2:$2" ]] || fail "$1 runs as '$configured', not $2:$2"
	got=$(run --entrypoint id "$1" -u)
	[[ $got == "$2" ]] || fail "$1: id -u says $got"
}

# labels IMAGE: the OCI labels carry the version and revision.
labels() {
	local v
	v=$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.version"}}' "$1")
	[[ $v == "$VERSION" ]] || fail "$1: version label '$v'"
	v=$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.revision"}}' "$1")
	[[ $v =~ ^[0-9a-f]{40}$|^unknown$ ]] || fail "$1: revision label '$v'"
}

main() {
	local toolkit=trishanku/trishanku:$VERSION sync=trishanku/git-sync:$VERSION server=trishanku/git-server:$VERSION
	local image b out
	for image in "$toolkit" "$sync" "$server"; do
		docker image inspect "$image" >/dev/null 2>&1 || fail "no image $image: run make images"
		labels "$image"
	done

	CURRENT=toolkit
	user "$toolkit" 65532
	for b in gitcd gitcd-init git-pre git-post gitcd-pull; do
		out=$(run "$toolkit" "$b" --help)
		[[ $out == *"Usage: $b "* ]] || fail "$b --help says '$out'"
		out=$(run "$toolkit" "$b" --version)
		[[ $out == "$b $VERSION" ]] || fail "$b --version says '$out'"
	done
	out=$(run "$toolkit" gitcd version)
	[[ $out == "gitcd $VERSION"* ]] || fail "gitcd version says '$out'"
	[[ $(run "$toolkit" git --version) == "git version "* ]] || fail "no git in $toolkit"
	[[ $(run "$toolkit" ssh -V 2>&1) == OpenSSH* ]] || fail "no ssh in $toolkit"
	log "the five binaries answer --help and --version as UID 65532; git and ssh are there"

	local port
	port=$(free_port)
	docker run -d --pull=never --network host --name "trishanku-check-gitcd-$$" "$toolkit" \
		gitcd serve --repo=/tmp/repo --listen-urls="http://127.0.0.1:$port" >/dev/null
	started "trishanku-check-gitcd-$$"
	wait_for "gitcd in its container" 30 etcdctl --endpoints="127.0.0.1:$port" endpoint health
	etcdctl --endpoints="127.0.0.1:$port" put /images/check ok >/dev/null || fail "put through the container"
	out=$(etcdctl --endpoints="127.0.0.1:$port" get --print-value-only /images/check)
	[[ $out == ok ]] || fail "get through the container: '$out'"
	out=$(docker exec "trishanku-check-gitcd-$$" git --git-dir=/tmp/repo show refs/heads/main:images/check)
	[[ $out == ok ]] || fail "the write is not a commit in the container's repository: '$out'"
	log "gitcd serves etcdctl from its container; the write is a commit"

	CURRENT=git-sync
	user "$sync" 65533
	out=$(run "$sync" --help 2>&1)
	[[ $out == *--repo* ]] || fail "git-sync --help says '$out'"
	out=$(run "$sync" --version)
	[[ $out == *"$VERSION"* ]] || fail "git-sync --version says '$out'"
	# shellcheck disable=SC2016 # expanded in the container
	out=$(run --entrypoint sh "$sync" -c 'echo "$HOME $GITSYNC_ROOT"; stat -c "%u:%g %a" /git')
	[[ $out == $'/tmp /git\n65533:65533 2775' ]] || fail "git-sync's environment and /git: $out"
	git init -q -b main "$WORK/src"
	echo hello >"$WORK/src/index.html"
	git -C "$WORK/src" add index.html
	git -C "$WORK/src" -c user.name=t -c user.email=t@t commit -q -m one
	chmod -R a+rX "$WORK"
	mkdir -m 0777 "$WORK/out"
	run -v "$WORK/src:/src:ro" -v "$WORK/out:/git" "$sync" --repo=file:///src --ref=main --one-time --link=current \
		>"$WORK/git-sync.log" 2>&1 || fail "git-sync --one-time in its container"
	[[ $(cat "$WORK/out/current/index.html") == hello ]] || fail "git-sync's checkout lacks the file"
	[[ $(stat -c %u "$WORK/out/current/index.html") == 65533 ]] || fail "the checkout is not owned by 65533"
	log "git-sync syncs a repository into /git as UID 65533"

	CURRENT=git-server
	user "$server" 65532
	mkdir -m 0777 "$WORK/srv"
	# As the two-heavens overlay's init container makes it.
	run -v "$WORK/srv:/srv/git" --entrypoint git "$server" init -q --bare -b main /srv/git/up.git
	echo s3cret >"$WORK/password" && chmod 0444 "$WORK/password"
	port=$(free_port)
	docker run -d --pull=never --network host --name "trishanku-check-git-server-$$" \
		-v "$WORK/srv:/srv/git" -v "$WORK/password:/etc/git-secret/password:ro" "$server" \
		--root=/srv/git --address=127.0.0.1 --port="$port" --user=demo --password-file=/etc/git-secret/password >/dev/null
	started "trishanku-check-git-server-$$"
	wait_for "the Git host in its container" 30 git ls-remote "http://demo:s3cret@127.0.0.1:$port/up.git"
	git -C "$WORK/src" push -q "http://demo:s3cret@127.0.0.1:$port/up.git" main 2>"$WORK/push.log" || fail "push to the Git host"
	git ls-remote "http://demo:wrong@127.0.0.1:$port/up.git" >/dev/null 2>&1 && fail "a wrong password was accepted"
	log "the Git host serves fetch and push behind basic auth"
	CURRENT=""
	log "passed"
}

main "$@"
