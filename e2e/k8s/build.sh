#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kube-scheduler 1.20 from
# Debian's kubernetes source package, offline (vendored dependencies), into a
# cache outside the repository, and extracts kubectl 1.20 from Debian's
# kubernetes-client package. Idempotent: a second run only checks.
#
# Facts this works around (Debian bookworm, Go 1.19):
# - module mode with -mod=vendor misreads the old vendor/modules.txt, so the
#   build runs in GOPATH mode (as upstream's hack/run-in-gopath.sh does);
# - pkg/generated/openapi/zz_generated.openapi.go is not in the tarball: it is
#   generated with the vendored openapi-gen, with upstream's inputs
#   (build/root/Makefile.generated_files);
# - the vendored github.com/modern-go/reflect2 1.0.1 crashes kube-apiserver on
#   Go 1.18+: Debian's golang-github-modern-go-reflect2-dev (1.0.2) replaces it.
set -o errexit -o pipefail -o nounset

CACHE=${E2E_CACHE:-/var/cache/trishanku-e2e}
BIN=$CACHE/bin
mkdir -p "$BIN"

have_all() {
	for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
		[[ -x $BIN/$b ]] || return 1
	done
}
if have_all; then
	echo "kubernetes binaries ready in $BIN"
	exit 0
fi

log() { echo "e2e/k8s/build: $*" >&2; }

# Debian packages: Go, dpkg-source, reflect2 1.0.2, openssl, curl.
need=()
command -v go >/dev/null || need+=(golang-go)
command -v dpkg-source >/dev/null || need+=(dpkg-dev)
[[ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ]] || need+=(golang-github-modern-go-reflect2-dev)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
	log "installing ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# A deb-src entry derived from the machine's own Debian source.
if ! compgen -G "$CACHE/kubernetes-*/cmd/kube-apiserver" >/dev/null; then
	if ! grep -rqs '^Types: deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
		src=/etc/apt/sources.list.d/debian.sources
		if [[ -f $src ]]; then
			sed 's/^Types: deb$/Types: deb-src/' "$src" >/etc/apt/sources.list.d/trishanku-src.sources
		else
			grep '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' >/etc/apt/sources.list.d/trishanku-src.list
		fi
		apt-get update -qq
	fi
	log "fetching the kubernetes source package"
	(cd "$CACHE" && apt-get source -qq kubernetes >/dev/null)
fi
SRC=$(compgen -G "$CACHE/kubernetes-*/cmd/kube-apiserver" | head -1)
SRC=${SRC%/cmd/kube-apiserver}

export GOPATH=$CACHE/gopath GO111MODULE=off CGO_ENABLED=0 GOFLAGS=
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn "$SRC" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"

if [[ ! -f pkg/generated/openapi/zz_generated.openapi.go ]]; then
	log "generating pkg/generated/openapi"
	go build -o "$BIN/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
	# Every package tagged +k8s:openapi-gen, as vendored import paths. (xargs
	# exits 123 when one batch of files has no match: that is not an error.)
	dirs=$(find . -path ./debian -prune -o -path ./_output -prune -o -name '*.go' -type f -print \
		| sed 's|^\./||; s|^staging/src/k8s.io/|vendor/k8s.io/|' \
		| grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' \
		| { xargs grep -l '^// *+k8s:openapi-gen=' || (($? == 123)); } | xargs -n1 dirname | LC_ALL=C sort -u)
	# shellcheck disable=SC2001 # a prefix on every line
	inputs=$(sed 's|^|k8s.io/kubernetes/|' <<<"$dirs" | paste -sd, -)
	"$BIN/openapi-gen" --logtostderr -i "$inputs" -p k8s.io/kubernetes/pkg/generated/openapi \
		-O zz_generated.openapi -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
		-r "$CACHE/openapi-violations.report" -o "$GOPATH/src"
fi

if [[ ! -f vendor/github.com/modern-go/reflect2/.from-debian ]]; then
	log "replacing the vendored reflect2 1.0.1 with Debian's 1.0.2"
	rm -rf vendor/github.com/modern-go/reflect2
	mkdir -p vendor/github.com/modern-go/reflect2
	cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go vendor/github.com/modern-go/reflect2/
	rm -f vendor/github.com/modern-go/reflect2/*_test.go
	touch vendor/github.com/modern-go/reflect2/.from-debian
fi

for b in kube-apiserver kube-controller-manager kube-scheduler; do
	if [[ ! -x $BIN/$b ]]; then
		log "building $b (several minutes on 2 cores)"
		go build -o "$BIN/$b.tmp" "./cmd/$b"
		mv "$BIN/$b.tmp" "$BIN/$b"
	fi
done

if [[ ! -x $BIN/kubectl ]]; then
	log "extracting kubectl from Debian's kubernetes-client"
	tmp=$(mktemp -d)
	(cd "$tmp" && apt-get download -qq kubernetes-client >/dev/null && dpkg -x kubernetes-client_*.deb x)
	cp "$tmp/x/usr/bin/kubectl" "$BIN/kubectl"
	rm -rf "$tmp"
fi
have_all
echo "kubernetes binaries ready in $BIN"
