# shellcheck shell=bash
# Shared by kind/up.sh, demo.sh and down.sh: --dry-run prints each command
# instead of running it (how these scripts are checked where kind cannot run).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=${KIND_CLUSTER:-trishanku}
NS=trishanku
# shellcheck disable=SC2034 # used by the scripts that source this
STATE=${KIND_STATE:-$ROOT/target/kind}
DRY_RUN=""
for arg in "$@"; do
	case $arg in
	--dry-run) DRY_RUN=1 ;;
	-h | --help)
		sed -n '2,/^set -o/{/^set -o/d;s/^# \{0,1\}//;p}' "$0"
		exit 0
		;;
	*) echo "$(basename "$0"): unknown argument $arg (try --help)" >&2 && exit 2 ;;
	esac
done

say() { printf '\e[1m[kind]\e[0m %s\n' "$*" >&2; }
# run CMD...: runs it, or prints it with --dry-run.
run() {
	if [[ -n $DRY_RUN ]]; then
		printf '+ %s\n' "$*"
	else
		"$@"
	fi
}
need() {
	[[ -n $DRY_RUN ]] && return
	local tool
	for tool in "$@"; do
		command -v "$tool" >/dev/null || {
			echo "$(basename "$0"): $tool is needed (see README: On kind)" >&2
			exit 1
		}
	done
}
k() { run kubectl --context "kind-$CLUSTER" -n "$NS" "$@"; }
