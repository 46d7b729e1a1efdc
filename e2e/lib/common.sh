# Shared by the end-to-end scripts: logging, failing with the logs, free
# ports, waiting for a condition with a deadline, the PKI and kubeconfigs of
# a kube-apiserver. Source it after setting WORK (a scratch directory whose
# *.log files are printed on failure, and which is removed on success unless
# KEEP_WORK is set) and SUITE (the name in log lines).

PIDS=()
CURRENT=""

log() { printf '\e[1m[e2e %s %s]\e[0m %s\n' "$SUITE" "${CURRENT:-setup}" "$*" >&2; }

on_exit() {
	local rc=${1:-$?}
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if ((rc != 0)); then
		log "FAILED (exit $rc); logs follow"
		local f
		while IFS= read -r f; do
			echo "===== $f (last 60 lines) ====="
			tail -n 60 "$f"
		done < <(find "$WORK" -name '*.log' -type f | sort)
	elif [[ -z ${KEEP_WORK:-} ]]; then
		rm -rf "$WORK"
	else
		log "kept $WORK"
	fi
}

fail() {
	log "FAIL: $*"
	exit 1
}

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for DESCRIPTION SECONDS COMMAND...: polls every 0.5 s.
wait_for() {
	local what=$1 secs=$2
	shift 2
	local deadline=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || fail "timed out after ${secs}s waiting for $what"
		sleep 0.5
	done
}

# now: seconds since the epoch, with fractions (for convergence times).
now() { date +%s.%N; }

# took START: seconds since START, two decimals.
took() { python3 -c "import sys,time; print(f'{time.time() - float(sys.argv[1]):.2f}')" "$1"; }

# pki DIR: a service-account key pair and an admin token for kube-apiserver.
pki() {
	local dir=$1
	mkdir -p "$dir"
	openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
	openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
	TOKEN=$(openssl rand -hex 16)
	echo "$TOKEN,admin,admin,\"system:masters\"" >"$dir/tokens.csv"
}

# kubeconfig FILE PORT: an admin kubeconfig for the kube-apiserver on PORT
# (written by hand: kubectl 1.20's `config set-credentials` panics).
kubeconfig() {
	cat >"$1" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://127.0.0.1:$2
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $TOKEN
contexts:
- name: e2e
  context: {cluster: e2e, user: admin}
current-context: e2e
KUBECONFIG
}
