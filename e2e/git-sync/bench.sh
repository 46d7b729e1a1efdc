#!/usr/bin/env bash
# Sync latency and cost of two git-sync binaries, same machine, same run:
#
#   e2e/git-sync/bench.sh OURS THEIRS        (make bench-git-sync GIT_SYNC_V4=...)
#
# THEIRS is a kubernetes/git-sync v4 binary built by hand (nothing here builds
# or ships it). Workloads, all on a local file:// repository of 2,000 files
# (4 KiB each) and 50 commits, loopback only:
#   B1 initial sync: --one-time into an empty root, ROUNDS runs each, median
#      wall time and CPU (user+sys of git-sync and its git children);
#   B2 signal to publish: --period=1h --sync-on-signal=SIGHUP; commit, SIGHUP,
#      time until the link names the new hash (pure sync latency), N times;
#   B3 poll to publish: --period=100ms; commit, time until the link moves;
#   B2 and B3 run twice: with v4's default --git-gc=always (every publish
#      removes the old worktree, so a full `git gc` follows it and the next
#      sync waits for it) and with --git-gc=off (the sync alone);
#   B4 idle cost: --period=100ms, no changes, IDLE seconds: CPU per sync
#      (process and children) and the git-sync process's peak RSS;
#   B5, B6: B2 (--git-gc=off) and B4 on a one-file repository, where
#      git-sync's own per-sync overhead is not hidden behind checkouts.
# Prints a markdown table. Timing loops poll with a 5 ms step.
set -o errexit -o nounset -o pipefail

OURS=$(realpath "$1")
THEIRS=$(realpath "$2")
ROUNDS=${ROUNDS:-7}
N=${N:-20}
IDLE=${IDLE:-20}
DIR=$(mktemp -d /tmp/git-sync-bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT
export GIT_CONFIG_GLOBAL="$DIR/gitconfig" GIT_CONFIG_SYSTEM=/dev/null
git config --global user.email bench@example.com
git config --global user.name bench
git config --global --add safe.directory '*'

REPO="$DIR/repo"
git init -q -b main "$REPO"
python3 - "$REPO" <<'EOF'
import os, sys
repo = sys.argv[1]
for d in range(20):
    os.makedirs(f"{repo}/d{d:02}", exist_ok=True)
    for f in range(100):
        with open(f"{repo}/d{d:02}/f{f:03}", "wb") as fh:
            fh.write(os.urandom(2048).hex().encode())
EOF
git -C "$REPO" add -A
git -C "$REPO" commit -qm base
for i in $(seq 1 49); do
    echo "$i" >"$REPO/d00/f000"
    git -C "$REPO" commit -qam "c$i"
done
SMALL="$DIR/small"
git init -q -b main "$SMALL"
mkdir -p "$SMALL/d01"
echo small >"$SMALL/d01/f001"
git -C "$SMALL" add -A
git -C "$SMALL" commit -qm base
BIG=$REPO

now_ms() { date +%s%3N; }

# Waits (5 ms steps, 30 s at most) until the link's basename is $2.
wait_link() {
    local deadline=$(($(now_ms) + 60000))
    while [[ "$(basename "$(readlink "$1" 2>/dev/null)" 2>/dev/null)" != "$2" ]]; do
        (($(now_ms) < deadline)) || { echo "timed out waiting for $2" >&2; return 1; }
        sleep 0.005
    done
}

# median, p90, max of the numbers on stdin
stats() { sort -n | awk '{a[NR]=$1} END {printf "%s %s %s", a[int((NR+1)/2)], a[int(NR*0.9+0.999)], a[NR]}'; }

# CPU seconds (process + waited children) of pid $1, from /proc.
cpu_of() { awk -v t="$(getconf CLK_TCK)" '{printf "%.3f", ($14+$15+$16+$17)/t}' "/proc/$1/stat"; }

common=(--link=link --git-config='safe.directory:*' -v=0)

b1() {
    local bin=$1 i out
    REPO=$BIG
    for i in $(seq 1 "$ROUNDS"); do
        rm -rf "${DIR:?}/b1root" "${DIR:?}/home"
        mkdir -p "$DIR/home"
        out=$(HOME="$DIR/home" /usr/bin/time -f '%e %U %S' "$bin" "${common[@]}" --repo="file://$REPO" --root="$DIR/b1root" --one-time 2>&1 >/dev/null | tail -1)
        echo "$out"
    done
}

# $1 binary, $2 mode (signal|poll), $3 --git-gc value: one latency (ms) per line.
latency() {
    local bin=$1 mode=$2 gc=$3 root="$DIR/lat-root" i t0 hash pid
    rm -rf "$root" "${DIR:?}/home"
    mkdir -p "$DIR/home"
    if [[ $mode == signal ]]; then
        HOME="$DIR/home" "$bin" "${common[@]}" --repo="file://$REPO" --git-gc="$gc" --root="$root" --period=1h --sync-on-signal=SIGHUP 2>/dev/null &
    else
        HOME="$DIR/home" "$bin" "${common[@]}" --repo="file://$REPO" --git-gc="$gc" --root="$root" --period=100ms 2>/dev/null &
    fi
    pid=$!
    wait_link "$root/link" "$(git -C "$REPO" rev-parse HEAD)"
    for i in $(seq 1 "$N"); do
        echo "lat $i $RANDOM" >"$REPO/d01/f001"
        git -C "$REPO" commit -qam "lat $i"
        hash=$(git -C "$REPO" rev-parse HEAD)
        t0=$(now_ms)
        [[ $mode == signal ]] && kill -HUP "$pid"
        wait_link "$root/link" "$hash"
        echo $(($(now_ms) - t0))
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

# $1 binary: "cpu-ms-per-sync peak-rss-MiB syncs"
idle() {
    local bin=$1 root="$DIR/idle-root" pid port syncs cpu rss
    rm -rf "$root" "${DIR:?}/home"
    mkdir -p "$DIR/home"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    HOME="$DIR/home" "$bin" "${common[@]}" --repo="file://$REPO" --root="$root" --period=100ms --http-bind="127.0.0.1:$port" --http-metrics 2>/dev/null &
    pid=$!
    wait_link "$root/link" "$(git -C "$REPO" rev-parse HEAD)"
    local c0
    c0=$(cpu_of "$pid")
    local s0
    s0=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^git_sync_count_total/ {n+=$NF} END {print n+0}')
    sleep "$IDLE" # the workload: IDLE seconds of polling with nothing to do
    cpu=$(awk -v a="$(cpu_of "$pid")" -v b="$c0" 'BEGIN {print a-b}')
    syncs=$(curl -s "http://127.0.0.1:$port/metrics" | awk -v s="$s0" '/^git_sync_count_total/ {n+=$NF} END {print n-s}')
    rss=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$pid/status")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    awk -v c="$cpu" -v n="$syncs" -v r="$rss" 'BEGIN {printf "%.1f %s %d", (n ? c*1000/n : 0), r, n}'
}

declare -A R
for who in ours theirs; do
    bin=$OURS
    [[ $who == theirs ]] && bin=$THEIRS
    echo "== $who: $("$bin" --version 2>&1 | head -1)" >&2
    b1 "$bin" >"$DIR/b1.$who"
    R[b1wall.$who]=$(cut -d' ' -f1 "$DIR/b1.$who" | stats | cut -d' ' -f1)
    R[b1cpu.$who]=$(awk '{print $2+$3}' "$DIR/b1.$who" | stats | cut -d' ' -f1)
    REPO=$BIG
    for gc in always off; do
        R[b2$gc.$who]=$(latency "$bin" signal "$gc" | stats)
        R[b3$gc.$who]=$(latency "$bin" poll "$gc" | stats)
    done
    R[b4.$who]=$(idle "$bin")
    REPO=$SMALL
    R[b5off.$who]=$(latency "$bin" signal off | stats)
    R[b6.$who]=$(idle "$bin")
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a/b; else print "-"}'; }
row() { echo "| $1 | $2 | $3 | $(ratio "$3" "$2") |"; }

echo
echo "| workload | metric | kubernetes/git-sync | ours | ours/theirs |"
echo "|---|---|---:|---:|---:|"
row2() { echo "| $1 | $2 | $3 | $4 | $(ratio "$4" "$3") |"; }
row2 B1 "initial sync wall s (median of $ROUNDS)" "${R[b1wall.theirs]}" "${R[b1wall.ours]}"
row2 B1 "initial sync CPU s, with git" "${R[b1cpu.theirs]}" "${R[b1cpu.ours]}"
for b in b2always b3always b2off b3off b5off; do
    read -r tm tp tx <<<"${R[$b.theirs]}"
    read -r om op ox <<<"${R[$b.ours]}"
    label="signal to publish"
    [[ $b == b3* ]] && label="commit to publish, --period=100ms"
    [[ $b == b5* ]] && label="one-file repo: signal to publish"
    label+=", --git-gc=${b#b?}"
    row2 "B${b:1:1}" "$label p50 ms ($N)" "$tm" "$om"
    row2 "B${b:1:1}" "$label p90 ms" "$tp" "$op"
    row2 "B${b:1:1}" "$label max ms" "$tx" "$ox"
done
read -r tc tr tn <<<"${R[b4.theirs]}"
read -r oc or on <<<"${R[b4.ours]}"
row2 B4 "idle CPU ms per sync, with git ($IDLE s: $tn / $on syncs)" "$tc" "$oc"
row2 B4 "git-sync peak RSS MiB" "$tr" "$or"
read -r tc tr tn <<<"${R[b6.theirs]}"
read -r oc or on <<<"${R[b6.ours]}"
row2 B6 "one-file repo: idle CPU ms per sync ($tn / $on syncs)" "$tc" "$oc"
row2 B6 "one-file repo: git-sync peak RSS MiB" "$tr" "$or"
