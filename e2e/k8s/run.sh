#!/usr/bin/env bash
# End-to-end scenarios: a real kube-apiserver (with kube-controller-manager
# and kube-scheduler) on gitcd, on loopback ports. Needs the binaries that
# e2e/k8s/build.sh builds. Usage: run.sh [scenario...]; default: all.
# On failure, prints the logs that explain it.
set -o errexit -o pipefail -o nounset

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${E2E_CACHE:-/var/cache/trishanku-e2e}
BIN=$CACHE/bin
GITCD=${GITCD:-$ROOT/target/release/gitcd}
WORK=$(mktemp -d /tmp/trishanku-e2e.XXXXXX)
export ETCDCTL_API=3
SUITE=k8s
# shellcheck source=../lib/common.sh
source "$ROOT/e2e/lib/common.sh"
trap on_exit EXIT

# start_gitcd NAME PORT: a gitcd on repository $WORK/<scenario>/NAME.git.
start_gitcd() {
	local name=$1 port=$2
	"$GITCD" serve --repo "$WORK/$CURRENT/$name.git" --listen-urls "http://127.0.0.1:$port" --name "$name" \
		>>"$WORK/gitcd-$name.log" 2>&1 &
	PIDS+=($!)
	eval "GITCD_PID_$name=$!"
	wait_for "gitcd $name" 30 etcdctl --endpoints="127.0.0.1:$port" endpoint health
}

start_etcd() {
	local port=$1 peer
	peer=$(free_port)
	etcd --name events --data-dir "$WORK/$CURRENT/etcd" --listen-client-urls "http://127.0.0.1:$port" \
		--advertise-client-urls "http://127.0.0.1:$port" --listen-peer-urls "http://127.0.0.1:$peer" \
		--initial-advertise-peer-urls "http://127.0.0.1:$peer" --initial-cluster "events=http://127.0.0.1:$peer" \
		>>"$WORK/etcd.log" 2>&1 &
	PIDS+=($!)
	wait_for "etcd" 30 etcdctl --endpoints="127.0.0.1:$port" endpoint health
}

kubectl() { "$BIN/kubectl" --kubeconfig="$WORK/kubeconfig" --request-timeout=20s "$@"; }

# start_apiserver ETCD_SERVERS [extra flags...]
start_apiserver() {
	local servers=$1
	shift
	KAS_PORT=$(free_port)
	kubeconfig "$WORK/kubeconfig" "$KAS_PORT"
	"$BIN/kube-apiserver" \
		--etcd-servers="$servers" --storage-media-type=application/yaml \
		--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$KAS_PORT" --insecure-port=0 \
		--cert-dir="$WORK/pki/serving" --token-auth-file="$WORK/pki/tokens.csv" \
		--authorization-mode=Node,RBAC --service-cluster-ip-range=10.96.0.0/24 \
		--service-account-key-file="$WORK/pki/sa.pub" --service-account-signing-key-file="$WORK/pki/sa.key" \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--enable-admission-plugins=NamespaceLifecycle,ServiceAccount --endpoint-reconciler-type=lease \
		"$@" >>"$WORK/kube-apiserver.log" 2>&1 &
	KAS_PID=$!
	PIDS+=("$KAS_PID")
	wait_for "kube-apiserver /readyz" 120 kubectl get --raw /readyz
}

start_controllers() {
	"$BIN/kube-controller-manager" --kubeconfig="$WORK/kubeconfig" --leader-elect=true \
		--service-account-private-key-file="$WORK/pki/sa.key" --use-service-account-credentials=false \
		--port=0 --secure-port=0 --controllers='*,-nodeipam,-nodelifecycle,-attachdetach,-persistentvolume-binder' \
		>>"$WORK/kube-controller-manager.log" 2>&1 &
	PIDS+=($!)
	"$BIN/kube-scheduler" --kubeconfig="$WORK/kubeconfig" --leader-elect=true --port=0 --secure-port=0 \
		>>"$WORK/kube-scheduler.log" 2>&1 &
	PIDS+=($!)
}

stop_all() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	PIDS=()
}

# The common checks of scenarios 1 and 2: objects of every kind through kubectl.
check_objects() {
	log "bootstrap: namespaces, RBAC, priority classes"
	wait_for "default namespaces" 60 kubectl get namespace default kube-system kube-public kube-node-lease
	wait_for "RBAC bootstrap" 60 kubectl get clusterrole cluster-admin
	wait_for "priority classes" 60 kubectl get priorityclass system-cluster-critical system-node-critical

	log "create, get, list, update, patch, delete"
	kubectl create namespace e2e >/dev/null
	kubectl -n e2e create configmap cm1 --from-literal=a=1 >/dev/null
	kubectl -n e2e create secret generic s1 --from-literal=password=hunter2 >/dev/null
	kubectl -n e2e create service clusterip svc1 --tcp=80:8080 >/dev/null
	kubectl -n e2e create deployment web --image=registry.invalid/web:1 --replicas=2 >/dev/null
	[[ $(kubectl -n e2e get configmap cm1 -o jsonpath='{.data.a}') == 1 ]] || fail "configmap value"
	kubectl -n e2e patch configmap cm1 -p '{"data":{"a":"2"}}' >/dev/null
	[[ $(kubectl -n e2e get configmap cm1 -o jsonpath='{.data.a}') == 2 ]] || fail "patched value"
	kubectl -n e2e get configmap cm1 -o yaml | sed 's/a: "2"/a: "3"/' | kubectl replace -f - >/dev/null
	[[ $(kubectl -n e2e get configmap cm1 -o jsonpath='{.data.a}') == 3 ]] || fail "replaced value"
	kubectl -n e2e label secret s1 tier=gold >/dev/null
	[[ $(kubectl -n e2e get secrets -l tier=gold -o name) == secret/s1 ]] || fail "label selector"
	kubectl -n e2e delete secret s1 >/dev/null
	local gone
	gone=$(kubectl -n e2e get secret s1 2>&1 || true)
	[[ $gone == *NotFound* ]] || fail "deleted secret still there: $gone"

	log "a CRD and custom resources"
	kubectl apply -f - >/dev/null <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.e2e.trishanku.dev}
spec:
  group: e2e.trishanku.dev
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer}}}
EOF
	wait_for "the CRD to be established" 60 kubectl wait --for=condition=established crd/widgets.e2e.trishanku.dev --timeout=2s
	wait_for "widgets served" 60 kubectl -n e2e get widgets
	printf 'apiVersion: e2e.trishanku.dev/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n' | kubectl -n e2e apply -f - >/dev/null
	[[ $(kubectl -n e2e get widget w1 -o jsonpath='{.spec.size}') == 3 ]] || fail "custom resource"
	kubectl -n e2e patch widget w1 --type=merge -p '{"spec":{"size":4}}' >/dev/null
	[[ $(kubectl -n e2e get widget w1 -o jsonpath='{.spec.size}') == 4 ]] || fail "patched custom resource"

	log "kubectl get --watch sees changes"
	kubectl -n e2e get configmaps --watch -o name >"$WORK/watch.out" 2>>"$WORK/kubectl-watch.log" &
	local watcher=$!
	# The watch lists what exists first: once cm1 shows, it is watching.
	wait_for "the watch to start" 30 grep -q configmap/cm1 "$WORK/watch.out"
	kubectl -n e2e create configmap watched --from-literal=x=1 >/dev/null
	wait_for "the watch to see configmap/watched" 30 grep -q configmap/watched "$WORK/watch.out"
	kill $watcher 2>/dev/null || true

	log "server-side pagination"
	for i in $(seq 1 30); do kubectl -n e2e create configmap "page-$i" >/dev/null; done
	local n
	n=$(kubectl -n e2e get configmaps --chunk-size=7 -o name | grep -c page-)
	[[ $n == 30 ]] || fail "paged list returned $n of 30"
	n=$(kubectl get --raw "/api/v1/namespaces/e2e/configmaps?limit=7" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(len(d["items"]), bool(d["metadata"].get("continue")), d["metadata"].get("remainingItemCount"))')
	[[ $n == "7 True 26" ]] || fail "first page: $n"

	log "controllers: the Deployment's ReplicaSet and Pods; the scheduler leads"
	wait_for "the ReplicaSet" 90 bash -c "$(declare -f kubectl); BIN=$BIN WORK=$WORK; [[ \$(kubectl -n e2e get rs -l app=web -o name | wc -l) == 1 ]]"
	wait_for "2 pods" 90 bash -c "$(declare -f kubectl); BIN=$BIN WORK=$WORK; [[ \$(kubectl -n e2e get pods -l app=web -o name | wc -l) == 2 ]]"
	wait_for "the scheduler's leader lease" 90 kubectl -n kube-system get lease kube-scheduler
	wait_for "the controller manager's leader lease" 90 kubectl -n kube-system get lease kube-controller-manager
}

# store_revision PORT: the revision of the gitcd on PORT.
store_revision() {
	etcdctl --endpoints="127.0.0.1:$1" endpoint status -w json |
		python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])'
}

# check_git REPO KEYPATH: the object is readable YAML in the data ref, and
# the data ref's commits hold every revision once: each commit's message is
# its revision, or the first and last of the revisions it groups.
check_git() {
	local repo=$1 path=$2 port=$3
	git -C "$repo" show "refs/heads/main:$path" | grep -q '^kind: ' || fail "$path is not YAML in $repo"
	local covered before after messages
	# The controllers keep writing: the count must fall between the store's
	# revision just before and just after it (a revision is in Git before
	# any client sees it).
	before=$(store_revision "$port")
	covered=$(git -C "$repo" log --format=%s refs/heads/main | awk -F- '{ n += (NF == 2 ? $2 - $1 + 1 : 1) } END { print n }')
	after=$(store_revision "$port")
	((before <= covered && covered <= after)) ||
		fail "$repo: its commits hold $covered revisions, the store was at revision $before before and $after after"
	messages=$(git -C "$repo" log --format=%s -3 refs/heads/main | tr '\n' ' ')
	[[ $messages =~ ^([0-9]+(-[0-9]+)?\ )+$ ]] || fail "commit messages are not revisions: $messages"
	return 0
}

scenario_one() {
	CURRENT=one
	log "one gitcd for everything"
	local port
	port=$(free_port)
	start_gitcd main "$port"
	start_apiserver "http://127.0.0.1:$port"
	start_controllers
	check_objects
	check_git "$WORK/$CURRENT/main.git" registry/configmaps/e2e/cm1 "$port"
	check_git "$WORK/$CURRENT/main.git" registry/deployments/e2e/web "$port"
	stop_all
	log "passed"
}

scenario_two() {
	CURRENT=two
	log "the seed's split layout: gitcd per resource, events on etcd"
	local main pods cms nodes leases events
	main=$(free_port) pods=$(free_port) cms=$(free_port) nodes=$(free_port) leases=$(free_port) events=$(free_port)
	start_gitcd main "$main"
	start_gitcd pods "$pods"
	start_gitcd configmaps "$cms"
	start_gitcd nodes "$nodes"
	start_gitcd leases "$leases"
	start_etcd "$events"
	start_apiserver "http://127.0.0.1:$main" \
		--etcd-servers-overrides="/events#http://127.0.0.1:$events,/pods#http://127.0.0.1:$pods,/configmaps#http://127.0.0.1:$cms,/nodes#http://127.0.0.1:$nodes,coordination.k8s.io/leases#http://127.0.0.1:$leases"
	start_controllers
	check_objects
	check_git "$WORK/$CURRENT/configmaps.git" registry/configmaps/e2e/cm1 "$cms"
	check_git "$WORK/$CURRENT/main.git" registry/deployments/e2e/web "$main"
	[[ -z $(git -C "$WORK/$CURRENT/main.git" ls-tree --name-only refs/heads/main registry/configmaps) ]] ||
		fail "configmaps leaked into the main gitcd"
	[[ -n $(git -C "$WORK/$CURRENT/pods.git" ls-tree -r --name-only refs/heads/main registry/pods/e2e) ]] || fail "no pods in the pods gitcd"
	[[ -n $(git -C "$WORK/$CURRENT/leases.git" ls-tree -r --name-only refs/heads/main registry/leases/kube-system) ]] ||
		fail "no leases in the leases gitcd"
	stop_all
	log "passed"
}

scenario_three() {
	CURRENT=three
	log "restart and compaction under a running kube-apiserver"
	local port
	port=$(free_port)
	start_gitcd main "$port"
	start_apiserver "http://127.0.0.1:$port" --etcd-compaction-interval=5s
	start_controllers
	wait_for "default namespaces" 60 kubectl get namespace default
	kubectl create namespace e2e >/dev/null
	kubectl -n e2e create deployment web --image=registry.invalid/web:1 --replicas=1 >/dev/null
	for i in $(seq 1 10); do kubectl -n e2e create configmap "before-$i" --from-literal=i="$i" >/dev/null; done
	wait_for "a compaction" 60 bash -c "etcdctl --endpoints=127.0.0.1:$port get compact_rev_key -w json | python3 -c 'import json,sys; kv=json.load(sys.stdin)[\"kvs\"][0]; sys.exit(0 if kv[\"version\"] >= 3 else 1)'"
	grep -i 'compact.*fail\|failed to compact' "$WORK/kube-apiserver.log" && fail "compaction errors in the kube-apiserver log"

	log "kill -9 gitcd and restart it"
	# shellcheck disable=SC2154 # assigned by eval in start_gitcd
	kill -9 "$GITCD_PID_main"
	wait "$GITCD_PID_main" 2>/dev/null || true
	start_gitcd main "$port"
	wait_for "kube-apiserver ready again" 60 kubectl get --raw /readyz
	for i in $(seq 1 10); do
		[[ $(kubectl -n e2e get configmap "before-$i" -o jsonpath='{.data.i}') == "$i" ]] || fail "configmap before-$i lost"
	done
	kubectl -n e2e create configmap after --from-literal=x=1 >/dev/null
	log "informers resume: scaling the deployment creates pods"
	kubectl -n e2e scale deployment web --replicas=3 >/dev/null
	wait_for "3 pods after the restart" 120 bash -c "$(declare -f kubectl); BIN=$BIN WORK=$WORK; [[ \$(kubectl -n e2e get pods -l app=web -o name | wc -l) == 3 ]]"
	stop_all
	# fsck the repository at rest: a concurrent writer's new objects can look
	# missing to it, and a background repack may still be folding packs.
	wait_for "git fsck after the restart" 60 git -C "$WORK/$CURRENT/main.git" fsck --no-dangling
	log "passed"
}

scenario_four() {
	CURRENT=four
	log "leases: event TTL and the master lease"
	local port
	port=$(free_port)
	start_gitcd main "$port"
	start_apiserver "http://127.0.0.1:$port" --event-ttl=8s
	wait_for "default namespace" 60 kubectl get namespace default
	kubectl apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Event
metadata: {name: e2e-event, namespace: default}
involvedObject: {kind: Namespace, name: default}
reason: Testing
message: this event expires with its lease
type: Normal
EOF
	kubectl get event e2e-event >/dev/null || fail "event not created"
	local key
	key=$(etcdctl --endpoints="127.0.0.1:$port" get /registry/events/default/e2e-event -w json |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["kvs"][0]["lease"])')
	[[ $key != 0 ]] || fail "the event has no lease"
	wait_for "the event to expire" 30 bash -c "! $BIN/kubectl --kubeconfig=$WORK/kubeconfig get event e2e-event"
	wait_for "the master lease" 30 bash -c "etcdctl --endpoints=127.0.0.1:$port get --prefix /registry/masterleases/ --keys-only | grep -q masterleases"
	log "stopping kube-apiserver: its master lease expires"
	kill "$KAS_PID"
	wait_for "the master lease to expire" 40 bash -c "! etcdctl --endpoints=127.0.0.1:$port get --prefix /registry/masterleases/ --keys-only | grep -q masterleases"
	stop_all
	log "passed"
}

# tls_certs DIR: a CA, gitcd's serving certificate for 127.0.0.1, and a
# client certificate for kube-apiserver, made with openssl.
tls_certs() {
	local d=$1
	mkdir -p "$d"
	(
		cd "$d"
		openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=e2e etcd CA" -keyout ca.key -out ca.crt 2>/dev/null
		printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
		printf 'extendedKeyUsage=clientAuth\n' >client.ext
		for who in server client; do
			openssl req -newkey rsa:2048 -nodes -subj "/CN=$who" -keyout "$who.key" -out "$who.csr" 2>/dev/null
			openssl x509 -req -in "$who.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
				-extfile "$who.ext" -out "$who.crt" 2>/dev/null
		done
	)
}

scenario_five() {
	CURRENT=five
	log "TLS: kube-apiserver on gitcd over https with client certificates"
	local port d=$WORK/five/tls
	port=$(free_port)
	tls_certs "$d"
	"$GITCD" serve --repo "$WORK/five/main.git" --listen-urls "https://127.0.0.1:$port" --name tls \
		--cert-file "$d/server.crt" --key-file "$d/server.key" --trusted-ca-file "$d/ca.crt" --client-cert-auth \
		>>"$WORK/gitcd-tls.log" 2>&1 &
	PIDS+=($!)
	local tls=(--endpoints="127.0.0.1:$port" --cacert="$d/ca.crt" --cert="$d/client.crt" --key="$d/client.key")
	wait_for "gitcd over TLS" 30 etcdctl "${tls[@]}" endpoint health
	etcdctl --endpoints="127.0.0.1:$port" --cacert="$d/ca.crt" --dial-timeout=2s get /x >/dev/null 2>&1 &&
		fail "a client without a certificate was let in"
	start_apiserver "https://127.0.0.1:$port" \
		--etcd-cafile="$d/ca.crt" --etcd-certfile="$d/client.crt" --etcd-keyfile="$d/client.key"
	wait_for "default namespaces" 60 kubectl get namespace default kube-system
	kubectl create namespace tls >/dev/null
	kubectl -n tls create configmap over-tls --from-literal=a=1 >/dev/null
	[[ $(kubectl -n tls get configmap over-tls -o jsonpath='{.data.a}') == 1 ]] || fail "configmap over TLS"
	git -C "$WORK/five/main.git" show refs/heads/main:registry/configmaps/tls/over-tls | grep -q '^kind: ConfigMap' ||
		fail "the configmap is not in the repository"
	curl -sf --cacert "$d/ca.crt" --cert "$d/client.crt" --key "$d/client.key" "https://127.0.0.1:$port/health" |
		grep -q '"health":"true"' || fail "/health over TLS"
	stop_all
	log "passed"
}

main() {
	[[ -x $BIN/kube-apiserver ]] || fail "run e2e/k8s/build.sh first (make e2e-k8s does)"
	[[ -x $GITCD ]] || fail "no gitcd binary at $GITCD (cargo build --release)"
	{ command -v etcd && command -v etcdctl; } >/dev/null || fail "etcd and etcdctl are needed (make deps)"
	pki "$WORK/pki"
	local scenarios=("$@")
	((${#scenarios[@]})) || scenarios=(one two three four five)
	for s in "${scenarios[@]}"; do "scenario_$s"; done
	CURRENT=""
	log "all scenarios passed: ${scenarios[*]}"
}

main "$@"
