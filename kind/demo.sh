#!/usr/bin/env bash
# Shows the two heavens coordinating through Git on the kind cluster of
# kind/up.sh: a Node created in the scheduler heaven, a Deployment in the kcm
# heaven, its pods bound by kube-scheduler and seen in kcm, and the upstream's
# main with merges from both heavens.
#
#   kind/demo.sh [--dry-run]
set -o errexit -o pipefail -o nounset
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
need kubectl git
FORWARDS=()
stop_forwards() {
	local p
	for p in "${FORWARDS[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap stop_forwards EXIT

# forward SERVICE LOCAL REMOTE: a port-forward in the background.
forward() {
	if [[ -n $DRY_RUN ]]; then
		run kubectl --context "kind-$CLUSTER" -n "$NS" port-forward "svc/$1" "$2:$3"
		return
	fi
	kubectl --context "kind-$CLUSTER" -n "$NS" port-forward "svc/$1" "$2:$3" >/dev/null &
	FORWARDS+=($!)
	sleep 2
}
# h PORT ARGS...: kubectl against a heaven through its forward, with the admin
# kubeconfig of heaven-secrets.sh (its certificate names localhost).
h() {
	local port=$1
	shift
	run kubectl --kubeconfig "$STATE/pki/admin.kubeconfig" --server "https://localhost:$port" "$@"
}

forward kcm-heaven 16443 6443
forward scheduler-heaven 26443 6443
forward git-server 18080 8080
say "a Node in the scheduler heaven (no kubelet: its status is written by hand)"
h 26443 apply -f - <<'NODE'
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {kubernetes.io/hostname: node-1}}
NODE
h 26443 patch node node-1 --subresource=status --type=merge -p \
	'{"status":{"allocatable":{"cpu":"8","memory":"16Gi","pods":"110"},"capacity":{"cpu":"8","memory":"16Gi","pods":"110"},"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"demo"}]}}'
h 26443 taint nodes node-1 node.kubernetes.io/not-ready- || true
say "a Deployment in the kcm heaven"
h 16443 create deployment web --image=registry.invalid/web:1 --replicas=2
say "its pods, bound by the scheduler heaven, seen in the kcm heaven"
if [[ -z $DRY_RUN ]]; then
	for _ in $(seq 60); do
		[[ $(h 16443 get pods -l app=web -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | grep -c node-1) == 2 ]] &&
			break
		sleep 2
	done
fi
h 16443 get pods -o wide
say "the upstream's main: commits of both heavens, merged by the automerge"
# The password comes from its file through a credential helper, never in argv.
run git -c credential.helper="!f() { echo username=heaven; printf 'password='; cat '$STATE/git-password'; }; f" \
	clone -q http://localhost:18080/cluster.git "$STATE/cluster"
run git -C "$STATE/cluster" log --oneline --graph -12 main
