# shellcheck shell=bash
# Shared by the scenarios that form one cluster out of heavens: a Node
# without a kubelet, a Deployment of web pods, and whether they are bound.
# The sourcing script defines `k HEAVEN ARGS...` (kubectl against a heaven)
# and WORK.

# create_node HEAVEN: node-1, Ready and schedulable. No kubelet exists here,
# so its status is written through the API (kubectl 1.20 has no
# --subresource: the status is PUT with `replace --raw`).
create_node() {
	local name=$1
	k "$name" apply -f - >/dev/null <<'NODE'
apiVersion: v1
kind: Node
metadata:
  name: node-1
  labels: {kubernetes.io/hostname: node-1, kubernetes.io/os: linux}
spec: {}
NODE
	k "$name" get node node-1 -o json | python3 -c '
import json, sys, time
node = json.load(sys.stdin)
t = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
resources = {"cpu": "8", "memory": "16Gi", "pods": "110"}
node["status"] = {"capacity": resources, "allocatable": resources, "conditions": [{
    "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "no kubelet: written by the test",
    "lastHeartbeatTime": t, "lastTransitionTime": t}]}
json.dump(node, sys.stdout)' >"$WORK/node-1.json"
	k "$name" replace --raw /api/v1/nodes/node-1/status -f "$WORK/node-1.json" >/dev/null ||
		fail "cannot write node-1's status"
	# kube-apiserver's TaintNodesByCondition admission taints a new node
	# not-ready; the node lifecycle controller would lift it once the node
	# reports Ready, but it is off (no kubelet renews the node): lift it here.
	k "$name" patch node node-1 --type=json -p='[{"op":"remove","path":"/spec/taints"}]' >/dev/null ||
		fail "cannot lift node-1's not-ready taint"
}

# create_deployment HEAVEN: the Deployment web, 2 replicas.
create_deployment() {
	k "$1" apply -f - >/dev/null <<'DEPLOYMENT'
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      # No kubelet confirms a graceful stop: pods go at once when deleted.
      terminationGracePeriodSeconds: 0
      containers: [{name: web, image: registry.invalid/web:1}]
DEPLOYMENT
}

# web_pods HEAVEN [RESOURCES]: the names of the web pods (or other resources), one per line.
web_pods() { k "$1" get "${2:-pods}" -l app=web -o name; }

# nodes_of HEAVEN: the node name of each web pod, one per line, sorted.
nodes_of() {
	k "$1" get pods -l app=web -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort
}

# bound HEAVEN N: N web pods, every one on node-1.
bound() {
	local got
	got=$(nodes_of "$1" | grep -c '^node-1$' || true)
	[[ $got == "$2" && $(web_pods "$1" | wc -l) == "$2" ]]
}
