#!/usr/bin/env bash
# Builds the images from binaries built on the host (make images builds them
# first), without pulling anything:
#
#   trishanku/base:bookworm         Debian bookworm minbase + git, openssh-client, ca-certificates
#   trishanku/base-python:bookworm  the same + python3 (for the demo Git host only)
#   trishanku/trishanku:VERSION     gitcd, gitcd-init, git-pre, git-post, gitcd-pull (UID 65532)
#   trishanku/git-sync:VERSION      git-sync (UID 65533, HOME=/tmp, GITSYNC_ROOT=/git)
#   trishanku/git-server:VERSION    git http-backend behind basic auth, for the demos (UID 65532)
#
# The bases are made with debootstrap and `docker import` (cached as tarballs
# in $IMAGES_CACHE). Docker is installed from Debian (docker.io) and dockerd
# started in the background when no daemon answers.
#
#   images/build.sh [--bin DIR] [--dry-run]
set -o errexit -o pipefail -o nounset

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release
CACHE=${IMAGES_CACHE:-/var/cache/trishanku-images}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKER_DATA=${DOCKER_DATA:-/var/lib/trishanku-docker}
DRY_RUN=""
while (($#)); do
	case $1 in
	--bin) BIN=$2 && shift 2 ;;
	--dry-run) DRY_RUN=1 && shift ;;
	*) echo "usage: images/build.sh [--bin DIR] [--dry-run]" >&2 && exit 2 ;;
	esac
done
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
REVISION=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
TOOLS=(gitcd gitcd-init git-pre git-post gitcd-pull)

log() { printf '\e[1m[images]\e[0m %s\n' "$*" >&2; }
run() {
	log "$*"
	[[ -n $DRY_RUN ]] || "$@"
}

# ensure_docker: a daemon that answers, installing and starting one if needed.
ensure_docker() {
	docker info >/dev/null 2>&1 && return
	if ! command -v dockerd >/dev/null; then
		run apt-get update -qq
		run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io
	fi
	[[ -n $DRY_RUN ]] && return
	mkdir -p "$DOCKER_DATA"
	log "starting dockerd (data in $DOCKER_DATA, log in $DOCKER_DATA.log)"
	nohup dockerd --data-root "$DOCKER_DATA" --ip-forward=false --ip-masq=false >>"$DOCKER_DATA.log" 2>&1 &
	local _
	for _ in $(seq 60); do
		docker info >/dev/null 2>&1 && return
		sleep 1
	done
	echo "dockerd did not start; see $DOCKER_DATA.log" >&2
	exit 1
}

# rootfs: the two base tarballs, made once by debootstrap.
rootfs() {
	[[ -s $CACHE/base-python.tar && -s $CACHE/base.tar ]] && return
	command -v debootstrap >/dev/null || run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
	[[ -n $DRY_RUN ]] && return
	local dir
	dir=$(mktemp -d /tmp/trishanku-rootfs.XXXXXX)
	log "debootstrap bookworm into $dir (about 2 minutes)"
	debootstrap --variant=minbase --include=git,openssh-client,ca-certificates,python3 bookworm "$dir" "$MIRROR" \
		>"$dir.log" 2>&1 || {
		tail -20 "$dir.log" >&2
		exit 1
	}
	# The fixed users of the images. OpenSSH refuses to run for a UID
	# without a passwd entry; HOME is /tmp because the root fs is read-only.
	echo 'nonroot:x:65532:65532:nonroot:/tmp:/usr/sbin/nologin' >>"$dir/etc/passwd"
	echo 'nonroot:x:65532:' >>"$dir/etc/group"
	echo 'git-sync:x:65533:65533:git-sync:/tmp:/usr/sbin/nologin' >>"$dir/etc/passwd"
	echo 'git-sync:x:65533:' >>"$dir/etc/group"
	rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/* "$dir"/usr/share/{doc,man,info,locale}/* \
		"$dir"/var/log/* "$dir"/etc/ssh/ssh_host_*
	mkdir -p "$CACHE"
	tar -C "$dir" --numeric-owner -cf "$CACHE/base-python.tar.tmp" .
	# shellcheck disable=SC2046,SC2016 # one word per package; ${Package} is dpkg-query's
	chroot "$dir" dpkg --purge $(chroot "$dir" dpkg-query -W -f '${Package}\n' | grep -E 'python|^media-types$') \
		>>"$dir.log" 2>&1 || {
		tail -20 "$dir.log" >&2
		exit 1
	}
	find "$dir/usr/lib" -name '__pycache__' -prune -exec rm -rf {} +
	tar -C "$dir" --numeric-owner -cf "$CACHE/base.tar.tmp" .
	mv "$CACHE/base-python.tar.tmp" "$CACHE/base-python.tar"
	mv "$CACHE/base.tar.tmp" "$CACHE/base.tar"
	rm -rf "$dir" "$dir.log"
}

# import NAME: trishanku/NAME:bookworm from its tarball, unless present.
import() {
	docker image inspect "trishanku/$1:bookworm" >/dev/null 2>&1 && return
	run docker import "$CACHE/$1.tar" "trishanku/$1:bookworm"
}

# stage: stripped copies of the binaries, where the Dockerfiles take them.
stage() {
	local stage=$ROOT/target/images b
	rm -rf "$stage" && mkdir -p "$stage/bin"
	for b in "${TOOLS[@]}" git-sync; do
		[[ -x $BIN/$b ]] || {
			echo "no $b in $BIN: build the binaries first (make images does)" >&2
			exit 1
		}
		objcopy --strip-debug "$BIN/$b" "$stage/bin/$b"
	done
	install -m 0755 "$ROOT/e2e/support/git-http-server.py" "$stage/bin/git-http-server"
	chmod 0755 "$stage"/bin/*
}

# build NAME: trishanku/NAME:VERSION from images/NAME/Dockerfile.
build() {
	run docker build --pull=false --network host --quiet -f "$ROOT/images/$1/Dockerfile" \
		--build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
		-t "trishanku/$1:$VERSION" "$ROOT"
}

ensure_docker
rootfs
import base
import base-python
stage
build trishanku
build git-sync
build git-server
[[ -n $DRY_RUN ]] || docker image ls trishanku/* --format '{{.Repository}}:{{.Tag}}  {{.Size}}' >&2
