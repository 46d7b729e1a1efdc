# Helpers for the git-sync end-to-end cases (sourced by run.sh for each case).
#
# Each case runs in its own bash process with its own directory $DIR:
#   $DIR/repo, $DIR/repo2  source repositories (branch e2e-branch, one file "file"
#                          holding the case name), reached as file://
#   $DIR/root              the --root volume
#   $DIR/work              scratch space
#   $DIR/runlog            hook scripts append a line per run ($RUNLOG)
# git-sync runs as a plain process (its own process group, so SIGSTOP/SIGCONT
# pause it with its git children, as `docker pause` would), with a fresh $HOME
# per start (as a fresh container would have), and these flags always added:
#   -v=6 --add-user --group-write --touch-file=_sync_lock
#   --git-config-add=protocol.file.allow:always --git-config-add=safe.directory:*
#   --http-bind=127.0.0.1:$HTTP_PORT --http-metrics --http-pprof
# A case fails with exit status 42 (fail) and is skipped with 43 (skip).

MAIN_BRANCH=e2e-branch
INTERLOCK=_sync_lock
# Longest wait for something that should happen (polled; passing cases do not wait it out).
MAXWAIT=${MAXWAIT:-10}
METRIC_GOOD_SYNC_COUNT='git_sync_count_total{status="success"}'
METRIC_FETCH_COUNT='git_fetch_count_total'
TOOLS="$E2E_DIR/tools"
GIT_HTTP_SERVER="$E2E_DIR/../support/git-http-server.py"

fail() {
    echo "FAIL: $*" >&2
    echo "FAIL: $*" >>"$DIR/result"
    exit 42
}

skip() {
    echo "SKIP: $*" >>"$DIR/result"
    exit 43
}

# A free loopback TCP port (bound and released; good enough on a test machine).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

setup_case() {
    local name=$1
    export GIT_CONFIG_GLOBAL="$DIR/gitconfig"
    export GIT_CONFIG_SYSTEM=/dev/null
    git config --global user.email "git-sync-test@example.com"
    git config --global user.name "git-sync-test"
    git config --global --add safe.directory '*'
    git config --global protocol.file.allow always
    git config --global credential.helper "store --file $DIR/gitcreds"
    umask 0002
    REPO="$DIR/repo"
    REPO2="$DIR/repo2"
    ROOT="$DIR/root"
    WORK="$DIR/work"
    RUNLOG="$DIR/runlog"
    export RUNLOG
    mkdir -p "$ROOT" "$WORK"
    chmod g+rwx "$ROOT"
    : >"$RUNLOG"
    git -C "$DIR" init -q -b "$MAIN_BRANCH" repo
    echo "$name" >"$REPO/file"
    git -C "$REPO" add file
    git -C "$REPO" commit -qam "init file"
    cp -a "$REPO" "$REPO2"
    HTTP_PORT=$(free_port)
    CASE=$name
    trap teardown EXIT
}

# Stops what the case started: process groups in $DIR/pgids, then the
# credential-cache daemons of each $HOME git-sync had.
teardown() {
    local rc=$?
    if [[ -f "$DIR/pgids" ]]; then
        while read -r pg; do
            kill -CONT -- "-$pg" 2>/dev/null || true
            kill -KILL -- "-$pg" 2>/dev/null || true
        done <"$DIR/pgids"
    fi
    if [[ -f "$DIR/pids" ]]; then
        while read -r p; do
            kill -KILL "$p" 2>/dev/null || true
        done <"$DIR/pids"
    fi
    local h
    for h in "$DIR"/home.*; do
        [[ -d "$h" ]] && HOME="$h" git credential-cache exit 2>/dev/null || true
    done
    exit "$rc"
}

# The git-sync command line: the standard flags, then the case's.
gs_cmd() {
    local home
    home=$(mktemp -d "$DIR/home.XXXXXX")
    GS_CMD=(env HOME="$home" ENVKEY=envval RUNLOG="$RUNLOG" "$GIT_SYNC"
        -v=6
        --add-user
        --group-write
        --touch-file="$INTERLOCK"
        --git-config-add='protocol.file.allow:always'
        --git-config-add='safe.directory:*'
        --http-bind="127.0.0.1:$HTTP_PORT"
        --http-metrics
        --http-pprof
        "$@")
}

# Runs git-sync in the foreground; its exit status is returned.
GIT_SYNC_FG() {
    gs_cmd "$@"
    echo "+ git-sync $*" >>"$DIR/git-sync.log"
    "${GS_CMD[@]}" >>"$DIR/git-sync.log" 2>&1
}

# Starts git-sync in the background in its own process group; $GS_PID is it.
GIT_SYNC_BG() {
    gs_cmd "$@"
    echo "+ git-sync (background) $*" >>"$DIR/git-sync.log"
    setsid "${GS_CMD[@]}" >>"$DIR/git-sync.log" 2>&1 &
    GS_PID=$!
    echo "$GS_PID" >>"$DIR/pgids"
}

# Starts a helper process in the background; it is killed at teardown.
bg() {
    setsid "$@" >>"$DIR/helpers.log" 2>&1 &
    local pid=$!
    echo "$pid" >>"$DIR/pgids"
    BG_PID=$pid
}

pause_gs() { kill -STOP -- "-$GS_PID"; }
resume_gs() { kill -CONT -- "-$GS_PID"; }

# Polls until "$@" succeeds, for at most $1 seconds.
eventually() {
    local secs=$1
    shift
    local deadline=$((SECONDS + secs))
    while ! "$@" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.05
    done
}

# Waits for git-sync to touch the interlock file (a sync that published or
# the first sync of a process), then removes it.
wait_for_sync() {
    local secs=${1:-$MAXWAIT} lock=${SYNC_LOCK:-$ROOT/$INTERLOCK}
    if ! eventually "$secs" test -f "$lock"; then
        fail "no sync within ${secs}s"
    fi
    rm -f "$lock"
}

wait_for_file_exists() {
    eventually "$2" test -f "$1" || true
}

# Waits for a file to exist and then holds `$2` lines (hooks and webhooks are
# asynchronous).
wait_for_lines() {
    eventually "${3:-$MAXWAIT}" bash -c '[[ -f "$1" && $(wc -l <"$1") -ge $2 ]]' _ "$1" "$2" || true
}

# Waits until the HTTP endpoint answers at all.
wait_for_http() {
    eventually "$MAXWAIT" curl --silent --output /dev/null "http://127.0.0.1:$HTTP_PORT/" ||
        fail "HTTP endpoint did not come up"
}

http_code() {
    curl --silent --output /dev/null --write-out '%{http_code}' "http://127.0.0.1:$HTTP_PORT$1"
}

assert_link_exists() {
    [[ -e "$1" ]] || fail "$1 does not exist"
    [[ -L "$1" ]] || fail "$1 is not a symlink"
}

assert_link_basename_eq() {
    [[ $(basename "$(readlink "$1")") == "$2" ]] || fail "$1 does not point to $2: $(readlink "$1")"
}

assert_file_exists() {
    [[ -f "$1" ]] || fail "$1 does not exist"
}

assert_file_absent() {
    [[ ! -e "$1" ]] || fail "$1 exists but should not"
}

assert_file_eq() {
    [[ -f "$1" ]] || fail "$1 does not exist"
    [[ $(cat "$1") == "$2" ]] || fail "$1 does not contain '$2': $(cat "$1")"
}

assert_file_contains() {
    grep -q -- "$2" "$1" || fail "$1 does not contain '$2': $(cat "$1")"
}

assert_file_lines_eq() {
    local n
    n=$(wc -l <"$1")
    ((n == $2)) || fail "$1 is not $2 lines: $n"
}

assert_file_lines_ge() {
    local n
    n=$(wc -l <"$1")
    ((n >= $2)) || fail "$1 is not at least $2 lines: $n"
}

metric() {
    curl --silent "http://127.0.0.1:$HTTP_PORT/metrics" | awk -v m="$1" '$1 == m {print $NF}'
}

assert_metric_eq() {
    local val
    val=$(metric "$1")
    [[ "$val" == "$2" ]] || fail "metric $1 was expected to be '$2': '$val'"
}

# Runs "$@" and fails the case unless it exits non-zero.
assert_fail() {
    local rc=0
    "$@" || rc=$?
    ((rc != 0)) || fail "expected a non-zero exit code: $*"
}

assert_depth() {
    local depth
    depth=$(git -C "$1" rev-list HEAD | wc -l)
    [[ "$depth" == "$2" ]] || fail "expected depth $2 in $1, got $depth"
}

commit_file() {
    local repo=$1 content=$2
    echo "$content" >"$repo/file"
    git -C "$repo" commit -qam "$content"
}

# Starts git http-backend behind basic auth on loopback: serves the parent
# directory of $1 (so the URL is http://127.0.0.1:PORT/<basename $1>); prints
# the port. User and password file are optional.
start_git_http() {
    local dir=$1 user=${2:-} pwfile=${3:-}
    local portfile
    portfile=$(mktemp -u "$DIR/httpport.XXXXXX")
    local args=(--root "$(dirname "$dir")" --port-file "$portfile")
    if [[ -n "$user" ]]; then
        args+=(--user="$user" --password-file="$pwfile")
    fi
    bg python3 "$GIT_HTTP_SERVER" "${args[@]}"
    eventually "$MAXWAIT" test -f "$portfile" || fail "git http server did not start"
    cat "$portfile"
}

# Starts the HTTP stub (tools/httpstub.py): answers from $2 (a responses
# file, re-read per request), logs each request to $3; prints the port.
start_stub() {
    local port=$1 responses=$2 hits=$3
    local portfile
    portfile=$(mktemp -u "$DIR/stubport.XXXXXX")
    bg python3 "$TOOLS/httpstub.py" --port "$port" --port-file "$portfile" --responses "$responses" --hits "$hits"
    eventually "$MAXWAIT" test -f "$portfile" || fail "HTTP stub did not start"
    cat "$portfile"
}

# Starts sshd on a loopback port, authorizing the public keys given; the
# repositories are reached as root@127.0.0.1:/path. Prints the port.
start_sshd() {
    local name=$1
    shift
    local d="$DIR/sshd-$name"
    mkdir -p "$d"
    [[ -f "$d/host_key" ]] || ssh-keygen -q -t ed25519 -N "" -f "$d/host_key"
    cat "$@" >"$d/authorized_keys"
    local port
    port=$(free_port)
    install -d -m 0755 /run/sshd
    cat >"$d/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $d/host_key
AuthorizedKeysFile $d/authorized_keys
PidFile $d/sshd.pid
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
EOF
    bg "$(command -v sshd)" -D -e -f "$d/sshd_config"
    eventually "$MAXWAIT" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" || fail "sshd did not start"
    echo "$port"
}

# Three test key pairs, as upstream's ssh secrets 1, 2 and 3.
make_ssh_keys() {
    local i
    for i in 1 2 3; do
        [[ -f "$DIR/ssh/$i/id_test" ]] && continue
        mkdir -p "$DIR/ssh/$i"
        ssh-keygen -q -t ed25519 -N "" -f "$DIR/ssh/$i/id_test"
    done
}
