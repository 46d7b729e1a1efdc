#!/usr/bin/env bash
# Two heavens: unchanged Kubernetes controllers, each with its own
# kube-apiserver on its own gitcd, form one cluster; the only thing they
# share is an upstream Git repository (git http-backend behind basic auth on
# a loopback port).
#
#   heaven kcm:       git-pre -> gitcd-init -> git-post -> gitcd serve (branch kcm,
#                     pulling main, pushing) -> events etcd -> kube-apiserver ->
#                     kube-controller-manager
#   heaven scheduler: the same, with kube-scheduler
#   automerge:        gitcd-pull merging kcm and scheduler into main, pushing
#
# Every process is started as the manifests start it (same binaries, flags,
# env), as plain processes. Needs the Kubernetes 1.20 build of e2e/k8s/build.sh
# and the release binaries (make e2e-heavens builds both). Prints the
# convergence time of each step and, on failure, every log.
set -o errexit -o pipefail -o nounset

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${E2E_CACHE:-/var/cache/trishanku-e2e}
BIN=$CACHE/bin
TARGET=${TARGET:-$ROOT/target/release}
WORK=$(mktemp -d /tmp/trishanku-heavens.XXXXXX)
export ETCDCTL_API=3
SUITE=heavens
# shellcheck source=../lib/common.sh
source "$ROOT/e2e/lib/common.sh"
# shellcheck source=../lib/cluster.sh
source "$ROOT/e2e/lib/cluster.sh"
trap on_exit EXIT

UP_PORT=$(free_port)
UPSTREAM="http://127.0.0.1:$UP_PORT/up.git"
PASSWORD_FILE=$WORK/git-password
CREDENTIALS=(--username=heaven --password-file="$PASSWORD_FILE")
# What a heaven never shares (docs/kubernetes.md says why, key by key).
MERGE=(--exclude-preset=kubernetes)

start_upstream() {
	python3 "$ROOT/e2e/support/git-http-server.py" --root "$WORK/upstream" --port "$UP_PORT" \
		--user heaven --password-file "$PASSWORD_FILE" >>"$WORK/upstream.log" 2>&1 &
	UP_PID=$!
	PIDS+=("$UP_PID")
	wait_for "the upstream" 20 git ls-remote "http://heaven:$(cat "$PASSWORD_FILE")@127.0.0.1:$UP_PORT/up.git"
}

# upstream_show PATH: a file of the upstream's main.
upstream_show() { git --git-dir="$WORK/upstream/up.git" show "refs/heads/main:$1"; }

# prepare NAME: a heaven's init containers, in order.
prepare() {
	local name=$1 repo=$WORK/$1/repo
	local branch=(--repo="$repo" --data-ref="refs/heads/$name" --committer-name="$name")
	"$TARGET/git-pre" "${branch[@]}" --remote-url="$UPSTREAM" --upstream-ref=refs/heads/main "${CREDENTIALS[@]}" \
		>>"$WORK/$name/git-pre.log" 2>&1 || fail "git-pre $name"
	"$TARGET/gitcd-init" "${branch[@]}" >>"$WORK/$name/gitcd-init.log" 2>&1 || fail "gitcd-init $name"
	"$TARGET/git-post" "${branch[@]}" "${CREDENTIALS[@]}" >>"$WORK/$name/git-post.log" 2>&1 || fail "git-post $name"
}

# heaven NAME CONTROLLER: prepare, then gitcd, the events etcd, kube-apiserver and the controller.
heaven() {
	local name=$1 controller=$2
	mkdir -p "$WORK/$name"
	prepare "$name"
	local gitcd etcd peer kas
	gitcd=$(free_port) etcd=$(free_port) peer=$(free_port) kas=$(free_port)
	eval "GITCD_PORT_$name=$gitcd KAS_PORT_$name=$kas"
	"$TARGET/gitcd" serve --repo="$WORK/$name/repo" --data-ref="refs/heads/$name" --committer-name="$name" \
		--listen-urls="http://127.0.0.1:$gitcd" --name="$name" \
		--upstream-ref=refs/heads/main --pull-interval=1s --push "${MERGE[@]}" "${CREDENTIALS[@]}" \
		>>"$WORK/$name/gitcd.log" 2>&1 &
	PIDS+=($!)
	eval "GITCD_PID_$name=$!"
	wait_for "gitcd $name" 30 etcdctl --endpoints="127.0.0.1:$gitcd" endpoint health
	etcd --name "$name-events" --data-dir "$WORK/$name/etcd" --listen-client-urls "http://127.0.0.1:$etcd" \
		--advertise-client-urls "http://127.0.0.1:$etcd" --listen-peer-urls "http://127.0.0.1:$peer" \
		--initial-advertise-peer-urls "http://127.0.0.1:$peer" --initial-cluster "$name-events=http://127.0.0.1:$peer" \
		>>"$WORK/$name/etcd.log" 2>&1 &
	PIDS+=($!)
	eval "ETCD_PID_$name=$!"
	wait_for "etcd $name" 30 etcdctl --endpoints="127.0.0.1:$etcd" endpoint health
	kubeconfig "$WORK/$name/kubeconfig" "$kas"
	"$BIN/kube-apiserver" \
		--etcd-servers="http://127.0.0.1:$gitcd" --etcd-servers-overrides="/events#http://127.0.0.1:$etcd" \
		--storage-media-type=application/yaml \
		--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$kas" --insecure-port=0 \
		--cert-dir="$WORK/$name/serving" --token-auth-file="$WORK/pki/tokens.csv" \
		--authorization-mode=Node,RBAC --service-cluster-ip-range=10.96.0.0/24 \
		--service-account-key-file="$WORK/pki/sa.pub" --service-account-signing-key-file="$WORK/pki/sa.key" \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--enable-admission-plugins=NamespaceLifecycle,ServiceAccount --endpoint-reconciler-type=lease \
		>>"$WORK/$name/kube-apiserver.log" 2>&1 &
	PIDS+=($!)
	eval "KAS_PID_$name=$!"
	wait_for "kube-apiserver $name /readyz" 120 k "$name" get --raw /readyz
	case $controller in
	kube-controller-manager)
		# No kubelet renews the Node: keep the node lifecycle controller from
		# tainting it (and the controllers that need nodes' CIDRs or volumes).
		"$BIN/kube-controller-manager" --kubeconfig="$WORK/$name/kubeconfig" --leader-elect=true \
			--service-account-private-key-file="$WORK/pki/sa.key" --use-service-account-credentials=false \
			--port=0 --secure-port=0 --controllers='*,-nodelifecycle,-nodeipam,-attachdetach,-persistentvolume-binder' \
			>>"$WORK/$name/kube-controller-manager.log" 2>&1 &
		;;
	kube-scheduler)
		"$BIN/kube-scheduler" --kubeconfig="$WORK/$name/kubeconfig" --leader-elect=true --port=0 --secure-port=0 \
			>>"$WORK/$name/kube-scheduler.log" 2>&1 &
		;;
	esac
	PIDS+=($!)
	eval "CONTROLLER_PID_$name=$!"
}

# stop_heaven NAME: every process of a heaven, at once (its pod is gone).
stop_heaven() {
	local name=$1 v p
	for v in CONTROLLER_PID KAS_PID ETCD_PID GITCD_PID; do
		p=$(eval "echo \${${v}_$name}")
		kill -9 "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
}

# k HEAVEN ARGS...: kubectl against a heaven's kube-apiserver.
k() {
	local name=$1
	shift
	"$BIN/kubectl" --kubeconfig="$WORK/$name/kubeconfig" --request-timeout=20s "$@"
}

# revision HEAVEN: the revision of its gitcd.
revision() {
	etcdctl --endpoints="127.0.0.1:$(eval "echo \$GITCD_PORT_$1")" endpoint status -w json |
		python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])'
}

# step START WHAT: prints how long WHAT took since START.
step() { log "  $2: $(took "$1") s"; }

main() {
	[[ -x $BIN/kube-apiserver ]] || fail "run e2e/k8s/build.sh first (make e2e-heavens does)"
	for b in gitcd gitcd-init git-pre git-post gitcd-pull; do
		[[ -x $TARGET/$b ]] || fail "no $b in $TARGET (make e2e-heavens builds it)"
	done
	command -v etcd >/dev/null || fail "etcd is needed (make deps)"
	mkdir -p "$WORK/upstream" "$WORK/automerge"
	openssl rand -hex 12 >"$PASSWORD_FILE"
	chmod 0400 "$PASSWORD_FILE"
	pki "$WORK/pki"
	git init -q --bare "$WORK/upstream/up.git"
	start_upstream

	log "the upstream and the automerge"
	local am=(--repo="$WORK/automerge/repo" --data-ref=refs/heads/main --committer-name=automerge)
	"$TARGET/git-pre" "${am[@]}" --remote-url="$UPSTREAM" "${CREDENTIALS[@]}" >>"$WORK/automerge/git-pre.log" 2>&1 ||
		fail "git-pre automerge"
	"$TARGET/gitcd-init" "${am[@]}" >>"$WORK/automerge/gitcd-init.log" 2>&1 || fail "gitcd-init automerge"
	"$TARGET/git-post" "${am[@]}" "${CREDENTIALS[@]}" >>"$WORK/automerge/git-post.log" 2>&1 || fail "git-post automerge"
	local am_metrics
	am_metrics=$(free_port)
	RUST_LOG=${RUST_LOG:-info} "$TARGET/gitcd-pull" "${am[@]}" --merge-ref=refs/heads/kcm --merge-ref=refs/heads/scheduler \
		--push --interval=1s "${MERGE[@]}" "${CREDENTIALS[@]}" --listen-metrics-urls="http://127.0.0.1:$am_metrics" \
		>>"$WORK/automerge/gitcd-pull.log" 2>&1 &
	PIDS+=($!)

	CURRENT=kcm
	log "heaven kcm: git-pre, gitcd-init, git-post, gitcd, etcd for events, kube-apiserver, kube-controller-manager"
	heaven kcm kube-controller-manager
	wait_for "kcm's bootstrap objects" 90 k kcm get namespace default kube-system kube-public kube-node-lease
	wait_for "the default service account" 90 k kcm -n default get serviceaccount default
	local start
	start=$(now)
	wait_for "the bootstrap objects on the upstream's main" 90 upstream_show registry/namespaces/default
	step "$start" "kcm's namespaces on main"

	CURRENT=scheduler
	log "heaven scheduler: the same, with kube-scheduler, from main"
	heaven scheduler kube-scheduler
	wait_for "the default namespace in the scheduler heaven" 60 k scheduler get namespace default

	CURRENT=schedule
	log "a Node (scheduler heaven) and a Deployment of 2 (kcm heaven): bound, and the bindings back in kcm"
	create_node scheduler
	start=$(now)
	wait_for "node-1 in the kcm heaven" 90 k kcm get node node-1
	step "$start" "node-1 from scheduler to kcm"
	start=$(now)
	create_deployment kcm
	wait_for "2 pods in the kcm heaven" 90 bash -c "[[ \$($BIN/kubectl --kubeconfig=$WORK/kcm/kubeconfig get pods -l app=web -o name | wc -l) == 2 ]]"
	step "$start" "the ReplicaSet's 2 pods (kcm)"
	wait_for "2 pods in the scheduler heaven" 90 bash -c "[[ \$($BIN/kubectl --kubeconfig=$WORK/scheduler/kubeconfig get pods -l app=web -o name | wc -l) == 2 ]]"
	step "$start" "the pods reach the scheduler heaven"
	wait_for "2 pods bound in the scheduler heaven" 90 bound scheduler 2
	step "$start" "kube-scheduler binds them"
	wait_for "2 pods bound, seen in the kcm heaven" 90 bound kcm 2
	step "$start" "the bindings back in the kcm heaven"
	k kcm get pods -o wide >&2

	CURRENT=scale
	log "scale to 3 (kcm): the third pod is bound too"
	start=$(now)
	k kcm scale deployment web --replicas=3 >/dev/null
	wait_for "3 pods bound, seen in the kcm heaven" 120 bound kcm 3
	step "$start" "the third pod bound, seen in kcm"

	CURRENT=git
	log "upstream main: merges from both heavens, and the Pod as YAML with its node"
	local pod
	pod=$(k kcm get pods -l app=web -o jsonpath='{.items[0].metadata.name}')
	wait_for "the bound pod on main" 60 bash -c "git --git-dir=$WORK/upstream/up.git show refs/heads/main:registry/pods/default/$pod | grep -q 'nodeName: node-1'"
	upstream_show "registry/pods/default/$pod" | grep -q '^kind: Pod' || fail "the pod on main is not YAML"
	local authors merges
	authors=$(git --git-dir="$WORK/upstream/up.git" log --format=%an refs/heads/main | sort -u | tr '\n' ' ')
	[[ $authors == *kcm* && $authors == *scheduler* ]] || fail "main lacks commits of both heavens: $authors"
	merges=$(git --git-dir="$WORK/upstream/up.git" log --merges --format=%B refs/heads/main | grep -c '^merge refs/heads/' || true)
	((merges > 0)) || fail "main has no merge commits"
	log "  main has commits by: $authors; $merges merge commits"

	CURRENT=delete
	log "delete the Deployment (kcm): the garbage collector removes the ReplicaSet and Pods, in both heavens"
	start=$(now)
	k kcm delete deployment web >/dev/null
	wait_for "no web pods in the kcm heaven" 120 bash -c "[[ -z \$($BIN/kubectl --kubeconfig=$WORK/kcm/kubeconfig get pods,rs -l app=web -o name) ]]"
	step "$start" "gone in kcm"
	wait_for "no web pods in the scheduler heaven" 120 bash -c "[[ -z \$($BIN/kubectl --kubeconfig=$WORK/scheduler/kubeconfig get pods,rs -l app=web -o name) ]]"
	step "$start" "gone in scheduler"

	CURRENT=restart
	log "the scheduler heaven restarted from empty directories: its revisions go on upward, scheduling goes on"
	local before after
	before=$(revision scheduler)
	stop_heaven scheduler
	rm -rf "$WORK/scheduler"
	start=$(now)
	heaven scheduler kube-scheduler
	after=$(revision scheduler)
	((after > before)) || fail "the scheduler heaven's revision went back: $before -> $after"
	log "  revision $before before, $after after the restart"
	k scheduler get node node-1 >/dev/null || fail "node-1 lost in the restart"
	create_deployment kcm
	wait_for "2 new pods bound, seen in the kcm heaven" 120 bound kcm 2
	step "$start" "restarted and scheduling again"

	CURRENT=""
	log "passed"
}

main "$@"
