#!/usr/bin/env bash
# The manifests, proved before anyone applies them:
#
#   1. every kustomization under manifests/ (and e2e/manifests/overlay)
#      renders with `kubectl kustomize` (kustomize v5) and passes
#      kubernetes-validate --strict, offline; kind/ is checked where kind
#      cannot run (its config, the scripts' --dry-run, the image tags);
#   2. a real kube-apiserver 1.20 on gitcd (with kube-controller-manager)
#      accepts the e2e overlay (two heavens, the automerge, the in-cluster Git
#      server, the git-sync example) with `apply --dry-run=server`, then for
#      real: every object is there, every Deployment gets its ReplicaSet;
#   3. e2e/manifests/runner.py runs each Deployment's pod as the kubelet would
#      (a network namespace per pod, volumes, users, probes; the table of
#      images in the runner maps each image to the binary it is built from);
#      every pod becomes ready, each heaven's kube-apiserver answers with the
#      heaven's own certificates, and the two heavens converge as in
#      e2e/heavens/run.sh: a Node in the scheduler heaven, a Deployment in the
#      kcm heaven, its pods bound and seen in kcm; the git-sync example
#      serves the upstream's main, bound pods included.
#
# Needs root (network namespaces), the Kubernetes 1.20 build of
# e2e/k8s/build.sh and the release binaries; make e2e-manifests makes both.
set -o errexit -o pipefail -o nounset

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${E2E_CACHE:-/var/cache/trishanku-e2e}
BIN=$CACHE/bin
TARGET=${TARGET:-$ROOT/target/release}
VENV=${VALIDATE_VENV:-$ROOT/target/e2e-venv}
# Not under /tmp: pods mount an emptyDir there, which would hide the volumes.
WORK=$(mktemp -d /var/tmp/trishanku-manifests.XXXXXX)
chmod 0755 "$WORK"
NS=trishanku
export ETCDCTL_API=3
SUITE=manifests
# shellcheck source=../lib/common.sh
source "$ROOT/e2e/lib/common.sh"
# shellcheck source=../lib/cluster.sh
source "$ROOT/e2e/lib/cluster.sh"
RUNNER_PID=""
cleanup() {
	local rc=$?
	if [[ -n $RUNNER_PID ]]; then
		kill "$RUNNER_PID" 2>/dev/null || true
		wait "$RUNNER_PID" 2>/dev/null || true
	fi
	on_exit "$rc"
}
trap cleanup EXIT

# kubectl 1.32 renders (kustomize v5); kubectl 1.20, the server's own, applies.
RENDER=${KUSTOMIZE_KUBECTL:-kubectl}
host() { "$BIN/kubectl" --kubeconfig="$WORK/host.kubeconfig" --request-timeout=30s "$@"; }

# k HEAVEN ARGS...: kubectl against a heaven's kube-apiserver in its pod,
# with the user's admin kubeconfig (the certificate names localhost).
k() {
	local name=$1
	shift
	"$BIN/kubectl" --kubeconfig="$WORK/$name.kubeconfig" --request-timeout=20s "$@"
}

# state JQ...: a value of the runner's state, by a Python expression on `s`.
state() { python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print($1)" "$WORK/state.json"; }
pod_of() { state "next(n for n, p in s['pods'].items() if p['deployment'] == '$1')"; }
ip_of() { state "next(p['ip'] for p in s['pods'].values() if p['deployment'] == '$1')"; }
all_ready() { [[ $(state "all(p['ready'] for p in s['pods'].values())") == True ]]; }

validate() {
	CURRENT=validate
	if ! [[ -x $VENV/bin/kubernetes-validate ]]; then
		log "kubernetes-validate into $VENV (PyPI)"
		python3 -m venv "$VENV" >"$WORK/venv.log" 2>&1
		"$VENV/bin/pip" install -q kubernetes-validate==1.37.0 >>"$WORK/venv.log" 2>&1 ||
			fail "cannot install kubernetes-validate"
	fi
	local dir out n=0
	while IFS= read -r dir; do
		dir=${dir%/kustomization.yaml}
		# A component is rendered by the kustomizations that use it.
		grep -q '^kind: Component' "$dir/kustomization.yaml" && continue
		out=$WORK/render/${dir#"$ROOT"/}.yaml
		mkdir -p "$(dirname "$out")"
		"$RENDER" kustomize "$dir" >"$out" 2>"$WORK/render.err" || {
			cat "$WORK/render.err" >&2
			fail "kubectl kustomize ${dir#"$ROOT"/}"
		}
		# Kubernetes 1.25 is the oldest schema the tool ships offline; the
		# real 1.20 kube-apiserver below is the 1.20 check.
		"$VENV/bin/kubernetes-validate" --strict -k 1.25.0 "$out" >"$WORK/validate.out" 2>&1 || {
			cat "$WORK/validate.out" >&2
			fail "kubernetes-validate --strict ${dir#"$ROOT"/}"
		}
		n=$((n + 1))
	done < <(find "$ROOT/manifests" "$ROOT/e2e/manifests" -name kustomization.yaml | sort)
	((n >= 6)) || fail "only $n kustomizations rendered"
	local ssh=$WORK/render/e2e/manifests/ssh.yaml
	grep -q 'GITCD_REMOTE_URL: ssh://' "$ssh" || fail "the SSH heaven has no ssh:// remote"
	! grep -q 'GITCD_USERNAME\|GITCD_PASSWORD_FILE' "$ssh" ||
		fail "components/ssh-credentials leaves HTTPS settings in the ConfigMap"
	log "$n kustomizations render and validate (strict)"
}

# kind_scripts: what can be checked of kind/ where kind cannot run: the
# cluster config's shape, each script's --dry-run, and that the images it
# loads are the tags the manifests use.
kind_scripts() {
	CURRENT=kind
	"$VENV/bin/python" - "$ROOT/kind/kind-config.yaml" <<'PY' || fail "kind/kind-config.yaml"
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
assert (config["apiVersion"], config["kind"]) == ("kind.x-k8s.io/v1alpha4", "Cluster"), "not a kind v1alpha4 Cluster"
known = {"kind", "apiVersion", "name", "nodes", "networking", "featureGates", "runtimeConfig",
         "kubeadmConfigPatches", "kubeadmConfigPatchesJSON6902", "containerdConfigPatches"}
assert set(config) <= known, f"unknown fields {set(config) - known}"
roles = [node["role"] for node in config["nodes"]]
assert "control-plane" in roles and set(roles) <= {"control-plane", "worker"}, f"node roles {roles}"
PY
	local script out version image expected
	for script in up demo down; do
		"$ROOT/kind/$script.sh" --dry-run >"$WORK/kind-$script.out" 2>&1 || {
			cat "$WORK/kind-$script.out" >&2
			fail "kind/$script.sh --dry-run"
		}
	done
	out=$(cat "$WORK"/kind-*.out)
	version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
	for image in trishanku git-sync git-server; do
		grep -q "kind load docker-image --name trishanku trishanku/$image:$version" <<<"$out" ||
			fail "kind/up.sh does not load trishanku/$image:$version"
		grep -A1 -x "  - name: trishanku/$image" "$ROOT/manifests/components/images/kustomization.yaml" |
			grep -q "newTag: $version" || fail "manifests/components/images: trishanku/$image is not at $version"
	done
	for expected in "kind create cluster --config $ROOT/kind/kind-config.yaml" \
		"apply -k $ROOT/manifests/overlays/two-heavens" "create deployment web" "kind delete cluster --name trishanku"; do
		grep -qF -- "$expected" <<<"$out" || fail "the kind scripts do not run: $expected"
	done
	log "kind/: config valid, up/demo/down --dry-run as expected, image tags at $version"
}

# host_cluster: gitcd, kube-apiserver 1.20 on it, kube-controller-manager.
host_cluster() {
	CURRENT=apiserver
	local gitcd kas
	gitcd=$(free_port) kas=$(free_port)
	pki "$WORK/pki"
	kubeconfig "$WORK/host.kubeconfig" "$kas"
	"$TARGET/gitcd" serve --repo="$WORK/host/repo" --listen-urls="http://127.0.0.1:$gitcd" \
		>>"$WORK/host/gitcd.log" 2>&1 &
	PIDS+=($!)
	wait_for "the host's gitcd" 30 etcdctl --endpoints="127.0.0.1:$gitcd" endpoint health
	"$BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$gitcd" \
		--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$kas" --insecure-port=0 \
		--cert-dir="$WORK/host/serving" --token-auth-file="$WORK/pki/tokens.csv" \
		--authorization-mode=Node,RBAC --service-cluster-ip-range=10.96.0.0/24 \
		--service-account-key-file="$WORK/pki/sa.pub" --service-account-signing-key-file="$WORK/pki/sa.key" \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		>>"$WORK/host/kube-apiserver.log" 2>&1 &
	PIDS+=($!)
	wait_for "the host's kube-apiserver" 120 host get --raw /readyz
	"$BIN/kube-controller-manager" --kubeconfig="$WORK/host.kubeconfig" --leader-elect=false \
		--service-account-private-key-file="$WORK/pki/sa.key" --use-service-account-credentials=false \
		--port=0 --secure-port=0 --controllers='*,-nodelifecycle,-nodeipam,-attachdetach,-persistentvolume-binder' \
		>>"$WORK/host/kube-controller-manager.log" 2>&1 &
	PIDS+=($!)
}

# apply: the Secrets the README tells users to make, then the overlay.
apply() {
	CURRENT=apply
	local overlay=$WORK/render/e2e/manifests/overlay.yaml
	host create namespace "$NS" >/dev/null
	openssl rand -hex 12 >"$WORK/git-password"
	host -n "$NS" create secret generic git-credentials --from-file=password="$WORK/git-password" >/dev/null
	"$ROOT/manifests/heaven-secrets.sh" --dir "$WORK/heaven-pki" --namespace "$NS" \
		kcm scheduler=system:kube-scheduler >"$WORK/secrets.yaml"
	host apply -f "$WORK/secrets.yaml" >/dev/null
	host apply --dry-run=server -f "$overlay" >"$WORK/dry-run.out" 2>&1 || {
		cat "$WORK/dry-run.out" >&2
		fail "apply --dry-run=server"
	}
	host apply -f "$overlay" >"$WORK/apply.out" 2>&1 || {
		cat "$WORK/apply.out" >&2
		fail "apply"
	}
	host get -f "$overlay" -o name >"$WORK/objects" || fail "not every object of the overlay is there"
	local objects deployments
	objects=$(grep -c '^kind: ' "$overlay")
	[[ $(wc -l <"$WORK/objects") == "$objects" ]] || fail "$objects objects applied, $(wc -l <"$WORK/objects") found"
	deployments=$(grep -c '^kind: Deployment' "$overlay")
	wait_for "a ReplicaSet for each of the $deployments Deployments" 90 \
		bash -c "[[ \$($BIN/kubectl --kubeconfig=$WORK/host.kubeconfig -n $NS get rs -o name | wc -l) == $deployments ]]"
	wait_for "a Pod for each of the $deployments Deployments" 90 \
		bash -c "[[ \$($BIN/kubectl --kubeconfig=$WORK/host.kubeconfig -n $NS get pods -o name | wc -l) == $deployments ]]"
	log "$objects objects accepted by kube-apiserver 1.20 (dry run, then applied); $deployments ReplicaSets and Pods"
}

run_pods() {
	CURRENT=pods
	mkdir -p "$WORK/pods"
	python3 "$ROOT/e2e/manifests/runner.py" --kubeconfig="$WORK/host.kubeconfig" --kubectl="$BIN/kubectl" \
		--namespace="$NS" --work="$WORK/pods" --state="$WORK/state.json" --release="$TARGET" --kube="$BIN" \
		>>"$WORK/runner.log" 2>&1 &
	RUNNER_PID=$!
	wait_for "the runner's first state" 60 test -s "$WORK/state.json"
	local start
	start=$(now)
	wait_for "every pod ready" 300 all_ready
	local pods
	pods=$(state "' '.join(s['pods'])")
	log "every pod ready in $(took "$start") s: $pods"
	local h ip
	for h in kcm scheduler; do
		ip=$(ip_of "$h-heaven")
		sed -e "s|https://127.0.0.1:6443|https://$ip:6443|" \
			-e 's|^    server: \(.*\)|    server: \1\n    tls-server-name: localhost|' \
			"$WORK/heaven-pki/admin.kubeconfig" >"$WORK/$h.kubeconfig"
		wait_for "the $h heaven's kube-apiserver, verified by the heaven's CA" 60 k "$h" get --raw /readyz
		curl -sf "http://$ip:2381/readyz" >/dev/null || fail "the $h heaven's gitcd is not ready on /readyz"
	done
}

converge() {
	CURRENT=converge
	log "a Node (scheduler heaven) and a Deployment of 2 (kcm heaven): bound, and seen in kcm"
	wait_for "the default namespace in both heavens" 120 bash -c \
		"$BIN/kubectl --kubeconfig=$WORK/kcm.kubeconfig get ns default && $BIN/kubectl --kubeconfig=$WORK/scheduler.kubeconfig get ns default"
	local start
	start=$(now)
	create_node scheduler
	wait_for "node-1 in the kcm heaven" 90 k kcm get node node-1
	create_deployment kcm
	wait_for "2 pods bound, seen in the kcm heaven" 180 bound kcm 2
	log "  bound and seen in kcm in $(took "$start") s"
	k kcm get pods -o wide >&2

	CURRENT=git-sync
	local pod web
	pod=$(k kcm get pods -l app=web -o jsonpath='{.items[0].metadata.name}')
	web=$(ip_of git-sync-nginx)
	wait_for "the web server serving the bound pod from main" 90 bash -c \
		"curl -sf http://$web:8080/registry/pods/default/$pod | grep -q 'nodeName: node-1'"
	log "  git-sync keeps main checked out; the web server serves registry/pods/default/$pod"
}

main() {
	[[ $(id -u) == 0 ]] || fail "needs root (network namespaces, bind mounts)"
	[[ -x $BIN/kube-apiserver ]] || fail "run e2e/k8s/build.sh first (make e2e-manifests does)"
	for b in gitcd gitcd-init git-pre git-post gitcd-pull git-sync; do
		[[ -x $TARGET/$b ]] || fail "no $b in $TARGET (make e2e-manifests builds it)"
	done
	command -v etcd >/dev/null || fail "etcd is needed (make deps)"
	"$RENDER" kustomize --help >/dev/null 2>&1 || fail "kubectl with kustomize v5 is needed (KUSTOMIZE_KUBECTL)"
	mkdir -p "$WORK/host"
	validate
	kind_scripts
	host_cluster
	apply
	run_pods
	converge
	CURRENT=stop
	kill "$RUNNER_PID"
	wait "$RUNNER_PID" || fail "the runner failed; see runner.log"
	RUNNER_PID=""
	[[ -z $(ip netns list | grep '^trishanku-' || true) ]] || fail "the runner left network namespaces"
	CURRENT=""
	log "passed"
}

main "$@"
