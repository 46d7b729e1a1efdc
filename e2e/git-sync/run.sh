#!/usr/bin/env bash
# Runs git-sync's end-to-end cases against a git-sync binary.
#
#   GIT_SYNC=target/release/git-sync e2e/git-sync/run.sh [-j JOBS] [REGEX...]
#
# Every case (cases.sh, in upstream test_e2e.sh's order) runs in its own
# directory under a temporary root, in its own bash process; up to JOBS
# (default 4: most of a case's time is spent waiting on git-sync's timers)
# run at once. A case passes, fails (status 42), or is skipped (43). Logs of
# failed cases are printed; KEEP=1 keeps every case's directory.
set -o errexit -o nounset -o pipefail

E2E_DIR=$(cd "$(dirname "$0")" && pwd)
export E2E_DIR
: "${GIT_SYNC:?set GIT_SYNC to the git-sync binary under test}"
GIT_SYNC=$(realpath "$GIT_SYNC")
export GIT_SYNC
JOBS=${JOBS:-4}
patterns=()
while (($#)); do
    case $1 in
    -j) JOBS=$2; shift 2 ;;
    -l | --list) LIST=1; shift ;;
    *) patterns+=("$1"); shift ;;
    esac
done

# shellcheck source=cases.sh
source "$E2E_DIR/cases.sh"
cases=("${ALL_CASES[@]}" "${EXTRA_CASES[@]}")
selected=()
for c in "${cases[@]}"; do
    if ((${#patterns[@]} == 0)); then
        selected+=("$c")
        continue
    fi
    for p in "${patterns[@]}"; do
        if [[ $c =~ $p ]]; then
            selected+=("$c")
            break
        fi
    done
done
if [[ -n "${LIST:-}" ]]; then
    printf '%s\n' "${selected[@]}"
    exit 0
fi
((${#selected[@]})) || { echo "no case matches ${patterns[*]}" >&2; exit 1; }

for tool in git python3 curl openssl sshd ssh-keygen setsid unshare; do
    command -v "$tool" >/dev/null || { echo "missing $tool (make deps installs it)" >&2; exit 1; }
done

TOP=$(mktemp -d /tmp/git-sync-e2e.XXXXXX)
echo "git-sync e2e: ${#selected[@]} cases, $JOBS at a time, in $TOP, binary $GIT_SYNC"
"$GIT_SYNC" --version

run_one() {
    local i=$1 name=$2
    local dir
    dir="$TOP/$(printf %03d "$i")-$name"
    mkdir -p "$dir"
    local start=$SECONDS rc=0
    DIR=$dir bash -c '
        set -o errexit -o nounset -o pipefail
        source "$E2E_DIR/lib.sh"
        source "$E2E_DIR/cases.sh"
        setup_case "$1"
        "case_$1"
    ' _ "$name" >"$dir/case.log" 2>&1 || rc=$?
    echo "$rc $((SECONDS - start))" >"$dir/status"
}

start=$SECONDS
i=0
for name in "${selected[@]}"; do
    i=$((i + 1))
    while (($(jobs -rp | wc -l) >= JOBS)); do
        wait -n || true
    done
    run_one "$i" "$name" &
done
wait

passed=0 failed=0 skipped=0
failures=()
i=0
for name in "${selected[@]}"; do
    i=$((i + 1))
    dir="$TOP/$(printf '%03d' "$i")-$name"
    read -r rc secs <"$dir/status"
    case $rc in
    0) passed=$((passed + 1)); echo "PASS  $name (${secs}s)" ;;
    43) skipped=$((skipped + 1)); echo "SKIP  $name: $(sed -n 's/^SKIP: //p' "$dir/result")" ;;
    *)
        failed=$((failed + 1))
        failures+=("$name")
        echo "FAIL  $name (${secs}s, status $rc)"
        ;;
    esac
done
for name in "${failures[@]}"; do
    dir=$(ls -d "$TOP"/*-"$name")
    echo
    echo "===== $name: case.log"
    tail -n 40 "$dir/case.log"
    echo "===== $name: git-sync.log (last 40 lines)"
    tail -n 40 "$dir/git-sync.log" 2>/dev/null || true
done
echo
echo "git-sync e2e took $((SECONDS - start))s"
echo "$passed passed, $failed failed, $skipped skipped"
if [[ -z "${KEEP:-}" && $failed == 0 ]]; then
    rm -rf "$TOP"
else
    echo "logs kept in $TOP"
fi
((failed == 0))
