# The git-sync end-to-end cases, re-created from kubernetes/git-sync's
# test_e2e.sh (same names, same order, same assertions), run against the
# binary in $GIT_SYNC without a container engine: local file:// repositories,
# git http-backend behind basic auth, a scripted HTTP stub, sshd on loopback,
# SIGSTOP/SIGCONT/SIGHUP to the process instead of container pauses.
# shellcheck shell=bash disable=SC2154

##### init

case_init_root_doesnt_exist() {
    GIT_SYNC_FG --one-time --repo="file://$REPO" --root="$ROOT/subdir" --link=link
    assert_link_exists "$ROOT/subdir/link"
    assert_file_eq "$ROOT/subdir/link/file" "$CASE"
}

case_init_root_exists_empty() {
    GIT_SYNC_FG --one-time --repo="file://$REPO" --root="$ROOT" --link=link
    assert_link_exists "$ROOT/link"
    assert_file_eq "$ROOT/link/file" "$CASE"
}

case_init_root_flag_is_weird() {
    GIT_SYNC_FG --one-time --repo="file://$REPO" \
        --root="../../../../../$ROOT/../../../../../../$ROOT" --link=link
    assert_link_exists "$ROOT/link"
    assert_file_eq "$ROOT/link/file" "$CASE"
}

case_init_root_flag_has_symlink() {
    mkdir -p "$ROOT/subdir"
    ln -s "$ROOT/subdir" "$ROOT/rootlink"
    GIT_SYNC_FG --one-time --repo="file://$REPO" --root="$ROOT/rootlink" --link=link
    assert_link_exists "$ROOT/subdir/link"
    assert_file_eq "$ROOT/subdir/link/file" "$CASE"
}

case_init_root_is_under_another_repo() {
    mkdir -p "$ROOT/subdir/root"
    date >"$ROOT/subdir/root/file"
    git -C "$ROOT/subdir" init -q
    GIT_SYNC_FG --one-time --repo="file://$REPO" --root="$ROOT/subdir/root" --link=link
    assert_link_exists "$ROOT/subdir/root/link"
    assert_file_eq "$ROOT/subdir/root/link/file" "$CASE"
}

case_init_root_fails_sanity() {
    git -C "$ROOT" init -q
    echo "ref: refs/heads/nonexist" >"$ROOT/.git/HEAD"
    GIT_SYNC_FG --one-time --repo="file://$REPO" --root="$ROOT" --link=link
    assert_link_exists "$ROOT/link"
    assert_file_eq "$ROOT/link/file" "$CASE"
}

case_bad_ref_non_zero_exit() {
    assert_fail GIT_SYNC_FG --one-time --repo="file://$REPO" --ref=does-not-exist --root="$ROOT" --link=link
    assert_file_absent "$ROOT/link"
}

##### following a ref

# Three steps: the current state, a new commit, then a rewind.
follow_three_steps() {
    local link=$1
    wait_for_sync
    assert_link_exists "$link"
    assert_file_eq "$link/file" "$CASE 1"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 1
    assert_metric_eq "$METRIC_FETCH_COUNT" 1
    commit_file "$REPO" "$CASE 2"
    wait_for_sync
    assert_file_eq "$link/file" "$CASE 2"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 2
    assert_metric_eq "$METRIC_FETCH_COUNT" 2
    git -C "$REPO" reset -q --hard HEAD^
    wait_for_sync
    assert_file_eq "$link/file" "$CASE 1"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 3
    assert_metric_eq "$METRIC_FETCH_COUNT" 3
}

case_sync_default_ref() {
    commit_file "$REPO" "$CASE 1"
    git -C "$REPO" checkout -q -b weird-name
    GIT_SYNC_BG --period=100ms --repo="file://$REPO" --root="$ROOT" --link=link
    follow_three_steps "$ROOT/link"
}

case_sync_head() {
    commit_file "$REPO" "$CASE 1"
    GIT_SYNC_BG --period=100ms --repo="file://$REPO" --ref=HEAD --root="$ROOT" --link=link
    follow_three_steps "$ROOT/link"
}

case_sync_head_absolute_link() {
    commit_file "$REPO" "$CASE 1"
    GIT_SYNC_BG --period=100ms --repo="file://$REPO" --ref=HEAD --root="$ROOT/root" --link="$ROOT/other/dir/link"
    SYNC_LOCK="$ROOT/root/$INTERLOCK"
    follow_three_steps "$ROOT/other/dir/link"
    assert_file_absent "$ROOT/root/link"
}

case_sync_head_subdir_link() {
    commit_file "$REPO" "$CASE 1"
    GIT_SYNC_BG --period=100ms --repo="file://$REPO" --ref=HEAD --root="$ROOT" --link=other/dir/link
    follow_three_steps "$ROOT/other/dir/link"
    assert_file_absent "$ROOT/link"
}

##### worktrees

case_worktree_cleanup() {
    GIT_SYNC_BG --period=100ms --repo="file://$REPO" --root="$ROOT" --link=link
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 1
    assert_metric_eq "$METRIC_FETCH_COUNT" 1
    pause_gs
    echo "$CASE-ok" >"$REPO/file2"
    git -C "$REPO" add file2
    git -C "$REPO" commit -qam "$CASE new file"
    local sha
    sha=$(git -C "$REPO" rev-list -n1 HEAD)
    # Something else already sits where the new worktree goes, plus garbage.
    git -C "$REPO" worktree add -q "$ROOT/.worktrees/$sha" -b e2e --no-checkout
    mkdir -p "$ROOT/.worktrees/not_a_hash/subdir"
    touch "$ROOT/.worktrees/not_a_directory"
    resume_gs
    wait_for_sync
    assert_file_eq "$ROOT/link/file2" "$CASE-ok"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 2
    assert_metric_eq "$METRIC_FETCH_COUNT" 2
    eventually "$MAXWAIT" test ! -e "$ROOT/.worktrees/not_a_hash" || true
    assert_file_absent "$ROOT/.worktrees/not_a_hash"
    assert_file_absent "$ROOT/.worktrees/not_a_directory"
    # The foreign worktree was replaced by git-sync's own for that hash.
    assert_link_basename_eq "$ROOT/link" "$sha"
    [[ "$(git -C "$ROOT/.worktrees/$sha" rev-parse --git-common-dir)" != "$REPO/.git" ]] ||
        fail "the foreign worktree at .worktrees/$sha was kept"
}

case_worktree_unexpected_removal() {
    GIT_SYNC_BG --period=100ms --repo="file://$REPO" --root="$ROOT" --link=link
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 1
    assert_metric_eq "$METRIC_FETCH_COUNT" 1
    pause_gs
    rm -r "$ROOT/.worktrees/$(git -C "$REPO" rev-list -n1 HEAD)"
    resume_gs
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 2
    assert_metric_eq "$METRIC_FETCH_COUNT" 2
}

case_sync_recover_wrong_worktree_hash() {
    GIT_SYNC_BG --period=100ms --repo="file://$REPO" --root="$ROOT" --link=link
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 1
    assert_metric_eq "$METRIC_FETCH_COUNT" 1
    pause_gs
    echo "unexpected" >"$ROOT/link/file"
    git -C "$ROOT/link" commit -qam "corrupt it"
    resume_gs
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 2
    assert_metric_eq "$METRIC_FETCH_COUNT" 2
}

add_file_commit() {
    echo "$2" >"$REPO/$1"
    git -C "$REPO" add "$1"
    git -C "$REPO" commit -qam "$CASE $1"
    git -C "$REPO" rev-list -n1 HEAD
}

case_stale_worktree_timeout() {
    commit_file "$REPO" "$CASE 1"
    local wt1 wt2
    wt1=$(git -C "$REPO" rev-list -n1 HEAD)
    GIT_SYNC_BG --period=100ms --repo="file://$REPO" --root="$ROOT" --link=link --stale-worktree-timeout=5s
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    sleep 2 # the scenario: commits 2 s apart
    wt2=$(add_file_commit file2 "$CASE 2")
    wait_for_sync
    # wt1 is superseded but kept (timeout not reached).
    assert_file_eq "$ROOT/.worktrees/$wt1/file" "$CASE 1"
    assert_file_absent "$ROOT/.worktrees/$wt1/file2"
    sleep 2
    add_file_commit file3 "$CASE 3" >/dev/null
    wait_for_sync
    assert_file_eq "$ROOT/.worktrees/$wt1/file" "$CASE 1"
    assert_file_eq "$ROOT/.worktrees/$wt2/file2" "$CASE 2"
    assert_file_absent "$ROOT/.worktrees/$wt2/file3"
    sleep 4 # wt1 superseded ~6 s ago: gone; wt2 ~4 s ago: kept
    assert_file_absent "$ROOT/.worktrees/$wt1/file"
    assert_file_eq "$ROOT/.worktrees/$wt2/file2" "$CASE 2"
    sleep 2 # wt2 superseded ~6 s ago: gone; the current one stays
    assert_file_absent "$ROOT/.worktrees/$wt2/file"
    assert_file_absent "$ROOT/.worktrees/$wt2/file2"
    assert_file_eq "$ROOT/link/file3" "$CASE 3"
}

case_stale_worktree_timeout_restart() {
    commit_file "$REPO" "$CASE 1"
    local wt1 wt2
    wt1=$(git -C "$REPO" rev-list -n1 HEAD)
    GIT_SYNC_FG --repo="file://$REPO" --root="$ROOT" --link=link --one-time
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    sleep 2
    wt2=$(add_file_commit file2 "$CASE 2")
    GIT_SYNC_FG --repo="file://$REPO" --root="$ROOT" --link=link --stale-worktree-timeout=10s --one-time
    assert_file_eq "$ROOT/.worktrees/$wt1/file" "$CASE 1"
    sleep 4
    add_file_commit file3 "$CASE 3" >/dev/null
    GIT_SYNC_FG --repo="file://$REPO" --root="$ROOT" --link=link --stale-worktree-timeout=10s --one-time
    assert_file_eq "$ROOT/.worktrees/$wt1/file" "$CASE 1"
    assert_file_eq "$ROOT/.worktrees/$wt2/file2" "$CASE 2"
    sleep 8 # wt1 superseded ~12 s ago (across restarts: mtime), wt2 ~8 s ago
    GIT_SYNC_FG --repo="file://$REPO" --root="$ROOT" --link=link --stale-worktree-timeout=10s --one-time
    assert_file_absent "$ROOT/.worktrees/$wt1/file"
    assert_file_eq "$ROOT/.worktrees/$wt2/file2" "$CASE 2"
    sleep 4
    GIT_SYNC_FG --repo="file://$REPO" --root="$ROOT" --link=link --stale-worktree-timeout=10s --one-time
    assert_file_absent "$ROOT/.worktrees/$wt2/file2"
    assert_file_eq "$ROOT/link/file3" "$CASE 3"
}

case_v3_v4_upgrade_in_place() {
    commit_file "$REPO" "$CASE 1"
    GIT_SYNC_FG --one-time --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    # Make it look like v3 left it: the worktree at <root>/<sha>.
    local wt sha
    wt=$(readlink "$ROOT/link")
    sha=$(basename "$wt")
    mv -f "$ROOT/$wt" "$ROOT/$sha"
    ln -sfn "$sha" "$ROOT/link"
    add_file_commit file2 "$CASE 2" >/dev/null
    GIT_SYNC_FG --one-time --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    assert_file_eq "$ROOT/link/file2" "$CASE 2"
    assert_file_absent "$ROOT/$sha"
    [[ "$(readlink "$ROOT/link")" == .worktrees/* ]] || fail "link not upgraded: $(readlink "$ROOT/link")"
}

case_readlink() {
    commit_file "$REPO" "$CASE 1"
    GIT_SYNC_BG --period=100ms --repo="file://$REPO" --root="$ROOT" --link=link
    wait_for_sync
    assert_link_basename_eq "$ROOT/link" "$(git -C "$REPO" rev-parse HEAD)"
    commit_file "$REPO" "$CASE 2"
    wait_for_sync
    assert_link_basename_eq "$ROOT/link" "$(git -C "$REPO" rev-parse HEAD)"
    git -C "$REPO" reset -q --hard HEAD^
    wait_for_sync
    assert_link_basename_eq "$ROOT/link" "$(git -C "$REPO" rev-parse HEAD)"
}

##### branches, tags, hashes

case_sync_branch() {
    local other=other-branch
    git -C "$REPO" checkout -q -b "$other"
    commit_file "$REPO" "$CASE 1"
    git -C "$REPO" checkout -q "$MAIN_BRANCH"
    GIT_SYNC_BG --period=100ms --repo="file://$REPO" --ref="$other" --root="$ROOT" --link=link
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 1
    assert_metric_eq "$METRIC_FETCH_COUNT" 1
    git -C "$REPO" checkout -q "$other"
    commit_file "$REPO" "$CASE 2"
    git -C "$REPO" checkout -q "$MAIN_BRANCH"
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE 2"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 2
    assert_metric_eq "$METRIC_FETCH_COUNT" 2
    git -C "$REPO" checkout -q "$other"
    git -C "$REPO" reset -q --hard HEAD^
    git -C "$REPO" checkout -q "$MAIN_BRANCH"
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 3
    assert_metric_eq "$METRIC_FETCH_COUNT" 3
}

case_sync_branch_switch() {
    commit_file "$REPO" "$CASE 1"
    GIT_SYNC_FG --one-time --repo="file://$REPO" --ref="$MAIN_BRANCH" --depth=1 --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    git -C "$REPO" checkout -q -b "${MAIN_BRANCH}2"
    commit_file "$REPO" "$CASE 2"
    GIT_SYNC_FG --one-time --repo="file://$REPO" --ref="${MAIN_BRANCH}2" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE 2"
}

# $1: extra `git tag` flags (-a for annotated tags).
tag_case() {
    local annotate=$1 tag=e2e-tag
    commit_file "$REPO" "$CASE 1"
    git -C "$REPO" tag -f $annotate -m "$CASE 1" "$tag" >/dev/null
    GIT_SYNC_BG --period=100ms --repo="file://$REPO" --ref="$tag" --root="$ROOT" --link=link
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 1
    assert_metric_eq "$METRIC_FETCH_COUNT" 1
    commit_file "$REPO" "$CASE 2"
    git -C "$REPO" tag -f $annotate -m "$CASE 2" "$tag" >/dev/null
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE 2"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 2
    assert_metric_eq "$METRIC_FETCH_COUNT" 2
    git -C "$REPO" reset -q --hard HEAD^
    git -C "$REPO" tag -f $annotate -m "$CASE 3" "$tag" >/dev/null
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 3
    assert_metric_eq "$METRIC_FETCH_COUNT" 3
    # A commit the tag does not point at is not synced.
    commit_file "$REPO" "$CASE 3"
    sleep 1
    assert_file_absent "$ROOT/$INTERLOCK"
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 3
    assert_metric_eq "$METRIC_FETCH_COUNT" 3
}

case_sync_tag() { tag_case ""; }

case_sync_annotated_tag() { tag_case "-a"; }

case_sync_sha() {
    commit_file "$REPO" "$CASE 1"
    local sha
    sha=$(git -C "$REPO" rev-list -n1 HEAD)
    GIT_SYNC_BG --period=100ms --repo="file://$REPO" --ref="$sha" --root="$ROOT" --link=link
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 1
    assert_metric_eq "$METRIC_FETCH_COUNT" 1
    commit_file "$REPO" "$CASE 2"
    sleep 1
    assert_file_absent "$ROOT/$INTERLOCK"
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 1
    assert_metric_eq "$METRIC_FETCH_COUNT" 1
    git -C "$REPO" reset -q --hard HEAD^
    sleep 1
    assert_file_absent "$ROOT/$INTERLOCK"
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 1
    assert_metric_eq "$METRIC_FETCH_COUNT" 1
    # Parked on the hash: SIGINT ends it with status 0.
    kill -INT "$GS_PID"
    local rc=0
    wait "$GS_PID" || rc=$?
    ((rc == 0)) || fail "SIGINT while parked on a hash should exit 0, got $rc"
}

case_sync_sha_once() {
    GIT_SYNC_FG --one-time --repo="file://$REPO" --ref="$(git -C "$REPO" rev-list -n1 HEAD)" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
}

case_sync_sha_once_sync_different_sha_known() {
    local sha1 sha2
    commit_file "$REPO" "$CASE 1"
    sha1=$(git -C "$REPO" rev-list -n1 HEAD)
    commit_file "$REPO" "$CASE 2"
    sha2=$(git -C "$REPO" rev-list -n1 HEAD)
    commit_file "$REPO" "$CASE 3"
    GIT_SYNC_FG --one-time --repo="file://$REPO" --ref="$sha1" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    GIT_SYNC_FG --one-time --repo="file://$REPO" --ref="$sha2" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE 2"
}

case_sync_sha_once_sync_different_sha_unknown() {
    local sha1 sha2
    commit_file "$REPO" "$CASE 1"
    sha1=$(git -C "$REPO" rev-list -n1 HEAD)
    GIT_SYNC_FG --one-time --repo="file://$REPO" --ref="$sha1" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    commit_file "$REPO" "$CASE 2"
    sha2=$(git -C "$REPO" rev-list -n1 HEAD)
    commit_file "$REPO" "$CASE 3"
    GIT_SYNC_FG --one-time --repo="file://$REPO" --ref="$sha2" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE 2"
}

case_sync_crash_no_link_cleanup_retry() {
    GIT_SYNC_FG --one-time --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
    rm -f "$ROOT/link"
    GIT_SYNC_FG --one-time --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
}

case_sync_crash_no_worktree_cleanup_retry() {
    GIT_SYNC_FG --one-time --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
    rm -rf "$ROOT/.worktrees/"
    GIT_SYNC_FG --one-time --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
}

case_sync_sha_shafile_exists() {
    local sha1 sha2
    commit_file "$REPO" "$CASE 1"
    sha1=$(git -C "$REPO" rev-list -n1 HEAD)
    commit_file "$REPO" "$CASE 2"
    sha2=$(git -C "$REPO" rev-list -n1 HEAD)
    GIT_SYNC_FG --one-time --repo="file://$REPO" --ref="$sha1" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    touch "$ROOT/$sha2"
    GIT_SYNC_FG --one-time --repo="file://$REPO" --ref="$sha2" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE 2"
}

case_sync_repo_switch() {
    commit_file "$REPO" "$CASE 1"
    GIT_SYNC_FG --repo="file://$REPO" --root="$ROOT" --link=link --one-time
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    commit_file "$REPO2" "$CASE 2"
    GIT_SYNC_FG --repo="file://$REPO2" --root="$ROOT" --link=link --one-time
    assert_file_eq "$ROOT/link/file" "$CASE 2"
    [[ "$(git -C "$ROOT" remote get-url origin)" == "file://$REPO2" ]] || fail "origin not switched"
}

##### timeouts and signals

case_error_slow_git_short_timeout() {
    assert_fail GIT_SYNC_FG --git="$TOOLS/git-slow-fetch.sh" --one-time --sync-timeout=1s \
        --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_absent "$ROOT/link/file"
    grep -q "context deadline exceeded" "$DIR/git-sync.log" || fail "no timeout in the log"
}

case_sync_slow_git_long_timeout() {
    commit_file "$REPO" "$CASE 1"
    GIT_SYNC_BG --git="$TOOLS/git-slow-fetch.sh" --period=100ms --sync-timeout=16s \
        --repo="file://$REPO" --root="$ROOT" --link=link
    wait_for_sync $((MAXWAIT * 3))
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 1
    assert_metric_eq "$METRIC_FETCH_COUNT" 1
    commit_file "$REPO" "$CASE 2"
    wait_for_sync $((MAXWAIT * 3))
    assert_file_eq "$ROOT/link/file" "$CASE 2"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 2
    assert_metric_eq "$METRIC_FETCH_COUNT" 2
}

# $1: the --sync-on-signal value.
signal_case() {
    commit_file "$REPO" "$CASE 1"
    GIT_SYNC_BG --period=100s --sync-on-signal="$1" --repo="file://$REPO" --root="$ROOT" --link=link
    wait_for_sync 3
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    commit_file "$REPO" "$CASE 2"
    kill -HUP "$GS_PID"
    wait_for_sync 3
    assert_file_eq "$ROOT/link/file" "$CASE 2"
}

case_sync_on_signal_sighup() { signal_case SIGHUP; }

case_sync_on_signal_hup() { signal_case HUP; }

case_sync_on_signal_1() { signal_case 1; }

##### depth

case_sync_depth_default_shallow() {
    commit_file "$REPO" "$CASE 1"
    commit_file "$REPO" "$CASE 2"
    GIT_SYNC_FG --one-time --repo="file://$REPO" --root="$ROOT" --link=link
    assert_depth "$ROOT/link" 1
}

case_sync_depth_across_updates() {
    commit_file "$REPO" "$CASE 1"
    GIT_SYNC_BG --period=100ms --repo="file://$REPO" --depth=1 --root="$ROOT" --link=link
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 1
    assert_depth "$ROOT/link" 1
    commit_file "$REPO" "$CASE 2"
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE 2"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 2
    assert_depth "$ROOT/link" 1
    git -C "$REPO" reset -q --hard HEAD^
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 3
    assert_depth "$ROOT/link" 1
}

case_sync_depth_change_on_restart() {
    commit_file "$REPO" "$CASE 1"
    commit_file "$REPO" "$CASE 2"
    commit_file "$REPO" "$CASE 3"
    local d want
    for d in 1:1 2:2 1:1 0:4; do
        want=${d#*:}
        GIT_SYNC_FG --one-time --repo="file://$REPO" --depth="${d%%:*}" --root="$ROOT" --link=link
        assert_depth "$ROOT/link" "$want"
    done
}

##### authentication

case_auth_http_password() {
    echo -n testpass >"$WORK/htpass"
    local port
    port=$(start_git_http "$REPO" testuser "$WORK/htpass")
    assert_fail GIT_SYNC_FG --one-time --repo="http://127.0.0.1:$port/repo" --username=wrong \
        --__env__GITSYNC_PASSWORD=testpass --root="$ROOT" --link=link
    assert_file_absent "$ROOT/link/file"
    assert_fail GIT_SYNC_FG --one-time --repo="http://127.0.0.1:$port/repo" --username=testuser \
        --__env__GITSYNC_PASSWORD=wrong --root="$ROOT" --link=link
    assert_file_absent "$ROOT/link/file"
    # The real way: the password in the environment.
    GITSYNC_PASSWORD=testpass GIT_SYNC_FG --one-time --repo="http://127.0.0.1:$port/repo" --username=testuser \
        --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
    ! grep -v '^+ ' "$DIR/git-sync.log" | grep -q testpass || fail "the password was logged"
}

case_auth_http_password_in_url() {
    echo -n testpass >"$WORK/htpass"
    local port
    port=$(start_git_http "$REPO" testuser "$WORK/htpass")
    assert_fail GIT_SYNC_FG --one-time --repo="http://wrong:testpass@127.0.0.1:$port/repo" --root="$ROOT" --link=link
    assert_file_absent "$ROOT/link/file"
    assert_fail GIT_SYNC_FG --one-time --repo="http://testuser:wrong@127.0.0.1:$port/repo" --root="$ROOT" --link=link
    assert_file_absent "$ROOT/link/file"
    GIT_SYNC_FG --one-time --repo="http://testuser:testpass@127.0.0.1:$port/repo" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
    ! grep -v '^+ ' "$DIR/git-sync.log" | grep -q ':testpass@' || fail "the password was logged"
}

case_auth_http_password_file() {
    echo -n testpass >"$WORK/htpass"
    local port
    port=$(start_git_http "$REPO" testuser "$WORK/htpass")
    echo -n wrong >"$WORK/password-file"
    assert_fail GIT_SYNC_FG --one-time --repo="http://127.0.0.1:$port/repo" --username=testuser \
        --password-file="$WORK/password-file" --root="$ROOT" --link=link
    assert_file_absent "$ROOT/link/file"
    echo -n testpass >"$WORK/password-file"
    GIT_SYNC_FG --one-time --repo="http://127.0.0.1:$port/repo" --username=testuser \
        --password-file="$WORK/password-file" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
}

case_auth_password_file_reload() {
    echo -n testpass >"$WORK/htpass"
    local port
    port=$(start_git_http "$REPO" testuser "$WORK/htpass")
    echo -n testpass >"$WORK/password-file"
    commit_file "$REPO" "$CASE 1"
    GIT_SYNC_BG --period=1s --repo="http://127.0.0.1:$port/repo" --username=testuser \
        --password-file="$WORK/password-file" --max-failures=100 --root="$ROOT" --link=link
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    echo -n wrong >"$WORK/password-file.tmp"
    mv "$WORK/password-file.tmp" "$WORK/password-file"
    commit_file "$REPO" "$CASE 2"
    sleep 3 # with the wrong password nothing syncs
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    echo -n testpass >"$WORK/password-file.tmp"
    mv "$WORK/password-file.tmp" "$WORK/password-file"
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE 2"
}

# $1: the repository URL form, "scp" (root@host:/path) or "url" (ssh://).
ssh_case() {
    make_ssh_keys
    local port url
    port=$(start_sshd main "$DIR/ssh/3/id_test.pub")
    if [[ $1 == scp ]]; then
        url="root@127.0.0.1:$REPO"
        # scp-like URLs have no port: it goes in the ssh command git-sync extends.
        export GIT_SSH_COMMAND="ssh -p $port"
    else
        url="ssh://root@127.0.0.1:$port$REPO"
    fi
    assert_fail GIT_SYNC_FG --one-time --repo="$url" --ssh-known-hosts=false \
        --ssh-key-file="$DIR/ssh/2/id_test" --root="$ROOT" --link=link
    assert_file_absent "$ROOT/link/file"
    GIT_SYNC_FG --one-time --repo="$url" --ssh-known-hosts=false \
        --ssh-key-file="$DIR/ssh/1/id_test" --ssh-key-file="$DIR/ssh/2/id_test" \
        --ssh-key-file="$DIR/ssh/3/id_test" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
}

case_auth_ssh() { ssh_case scp; }

case_auth_ssh_url() { ssh_case url; }

ASKPASS_OK=$'200\nusername=my-username\npassword=my-password\n'
ASKPASS_WRONG=$'200\nusername=my-username\npassword=wrong\n'

case_auth_askpass_url_wrong_password() {
    printf '%s' "$ASKPASS_WRONG" >"$WORK/responses"
    local port
    port=$(start_stub 0 "$WORK/responses" "$WORK/hitlog")
    assert_fail GIT_SYNC_FG --one-time --repo="file://$REPO" --git="$TOOLS/git-askpass.sh" \
        --askpass-url="http://127.0.0.1:$port/git_askpass" --root="$ROOT" --link=link
    assert_file_absent "$ROOT/link/file"
    assert_file_lines_ge "$WORK/hitlog" 1
}

case_auth_askpass_url_correct_password() {
    printf '%s' "$ASKPASS_OK" >"$WORK/responses"
    local port
    port=$(start_stub 0 "$WORK/responses" "$WORK/hitlog")
    GIT_SYNC_FG --one-time --repo="file://$REPO" --git="$TOOLS/git-askpass.sh" \
        --askpass-url="http://127.0.0.1:$port/git_askpass" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
    ! grep -q my-password "$DIR/git-sync.log" || fail "the password was logged"
}

# $1: the stub's alternating answers.
askpass_alternating_case() {
    printf '%s' "$1" >"$WORK/responses"
    local port
    port=$(start_stub 0 "$WORK/responses" "$WORK/hitlog")
    commit_file "$REPO" "$CASE 1"
    GIT_SYNC_BG --period=100ms --repo="file://$REPO" --git="$TOOLS/git-askpass.sh" \
        --askpass-url="http://127.0.0.1:$port/git_askpass" --max-failures=2 --root="$ROOT" --link=link
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    commit_file "$REPO" "$CASE 2"
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE 2"
    git -C "$REPO" reset -q --hard HEAD^
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    kill -0 "$GS_PID" || fail "git-sync gave up"
}

case_auth_askpass_url_sometimes_wrong() {
    askpass_alternating_case "$ASKPASS_WRONG"$'\n---\n'"$ASKPASS_OK"
}

case_auth_askpass_url_flaky() {
    askpass_alternating_case $'503\n\n---\n'"$ASKPASS_OK"
}

case_auth_askpass_url_slow_start() {
    printf '%s' "$ASKPASS_OK" >"$WORK/responses"
    local port
    port=$(free_port)
    # The credential server comes up 2 s after git-sync (upstream: a container
    # that sleeps 4 s, started 2 s before git-sync), so the first syncs fail.
    bg bash -c "sleep 2; exec python3 '$TOOLS/httpstub.py' --port $port --responses '$WORK/responses' --hits '$WORK/hitlog'"
    GIT_SYNC_BG --period=1s --repo="file://$REPO" --git="$TOOLS/git-askpass.sh" \
        --askpass-url="http://127.0.0.1:$port/git_askpass" --max-failures=5 --root="$ROOT" --link=link
    sleep 1
    assert_file_absent "$ROOT/link"
    wait_for_sync 8
    assert_file_eq "$ROOT/link/file" "$CASE"
}

# GitHub App authentication against a local stub of the API: git-sync signs a
# JWT with the App's key, trades it for an installation token at
# <base>/app/installations/<id>/access_tokens, and git uses that token (user
# "-") against the git host. $1: the flag naming the App.
github_app_case() {
    local app_flag=$1 issuer=$2
    openssl genrsa -out "$WORK/app.pem" 2048 2>/dev/null
    openssl rsa -in "$WORK/app.pem" -pubout -out "$WORK/app.pub" 2>/dev/null
    echo -n ghs_installation_token >"$WORK/htpass"
    local git_port api_port
    git_port=$(start_git_http "$REPO" - "$WORK/htpass")
    printf '201\n{"token":"ghs_installation_token","expires_at":"2099-01-01T00:00:00Z"}' >"$WORK/responses"
    api_port=$(start_stub 0 "$WORK/responses" "$WORK/hitlog")
    GIT_SYNC_FG --one-time --repo="http://127.0.0.1:$git_port/repo" \
        --github-base-url="http://127.0.0.1:$api_port/" "$app_flag" \
        --github-app-installation-id=42 --github-app-private-key-file="$WORK/app.pem" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
    assert_file_lines_eq "$WORK/hitlog" 1
    assert_file_contains "$WORK/hitlog" "^POST /app/installations/42/access_tokens "
    # The JWT is RS256 over header.payload with the App's key, issued by the App.
    local jwt header payload sig
    jwt=$(sed -n 's/.* auth=Bearer_\([^ ]*\)$/\1/p' "$WORK/hitlog")
    IFS=. read -r header payload sig <<<"$jwt"
    b64url_decode "$payload" | grep -q "\"iss\":\"$issuer\"" || fail "JWT issuer is not $issuer: $(b64url_decode "$payload")"
    b64url_decode "$header" | grep -q '"alg":"RS256"' || fail "JWT is not RS256"
    printf '%s' "$header.$payload" >"$WORK/signed"
    b64url_decode "$sig" >"$WORK/sig"
    openssl dgst -sha256 -verify "$WORK/app.pub" -signature "$WORK/sig" "$WORK/signed" >/dev/null ||
        fail "JWT signature does not verify with the App's key"
    ! grep -q ghs_installation_token "$DIR/git-sync.log" || fail "the token was logged"
}

b64url_decode() {
    local s=${1//-/+}
    s=${s//_//}
    while ((${#s} % 4)); do s+="="; done
    printf '%s' "$s" | base64 -d
}

case_auth_github_app_application_id() {
    github_app_case --github-app-application-id=1234 1234
}

case_auth_github_app_client_id() {
    github_app_case --github-app-client-id=Iv1.abc123 Iv1.abc123
}

##### hooks

case_exechook_success() {
    commit_file "$REPO" "$CASE 1"
    GIT_SYNC_BG --period=100ms --exechook-command="$TOOLS/exechook.sh" --repo="file://$REPO" --root="$ROOT" --link=link
    wait_for_sync
    wait_for_lines "$RUNLOG" 1
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    assert_file_eq "$ROOT/link/exechook" "$CASE 1"
    assert_file_eq "$ROOT/link/exechook-env" "ENVKEY=envval"
    assert_file_lines_eq "$RUNLOG" 1
    assert_file_contains "$RUNLOG" "^$(git -C "$REPO" rev-parse HEAD) "
    commit_file "$REPO" "$CASE 2"
    wait_for_sync
    wait_for_lines "$RUNLOG" 2
    assert_file_eq "$ROOT/link/file" "$CASE 2"
    assert_file_eq "$ROOT/link/exechook" "$CASE 2"
    assert_file_eq "$ROOT/link/exechook-env" "ENVKEY=envval"
    assert_file_lines_eq "$RUNLOG" 2
}

case_exechook_fail_retry() {
    GIT_SYNC_BG --period=100ms --exechook-command="$TOOLS/exechook-fail.sh" --exechook-backoff=1s \
        --repo="file://$REPO" --root="$ROOT" --link=link
    wait_for_lines "$RUNLOG" 2 5
    assert_file_lines_ge "$RUNLOG" 2
}

case_exechook_success_once() {
    GIT_SYNC_FG --one-time --exechook-command="$TOOLS/exechook-slow.sh" --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
    assert_file_eq "$ROOT/link/exechook" "$CASE"
    assert_file_eq "$ROOT/link/exechook-env" "ENVKEY=envval"
}

case_exechook_fail_once() {
    assert_fail GIT_SYNC_FG --one-time --exechook-command="$TOOLS/exechook-fail-slow.sh" --exechook-backoff=1s \
        --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
    assert_file_lines_eq "$RUNLOG" 1
}

case_exechook_startup_after_crash() {
    GIT_SYNC_FG --one-time --repo="file://$REPO" --ref="$MAIN_BRANCH" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
    GIT_SYNC_FG --one-time --repo="file://$REPO" --ref="$MAIN_BRANCH" --exechook-command="$TOOLS/exechook.sh" \
        --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
    assert_file_eq "$ROOT/link/exechook" "$CASE"
    assert_file_eq "$ROOT/link/exechook-env" "ENVKEY=envval"
    assert_file_lines_eq "$RUNLOG" 1
}

case_pre_publish_exechook_success() {
    commit_file "$REPO" "$CASE 1"
    GIT_SYNC_BG --period=100ms --pre-publish-exechook-command="$TOOLS/exechook.sh" --repo="file://$REPO" \
        --root="$ROOT" --link=link
    wait_for_sync
    wait_for_lines "$RUNLOG" 1
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    assert_file_eq "$ROOT/link/exechook" "$CASE 1"
    assert_file_eq "$ROOT/link/exechook-env" "ENVKEY=envval"
    assert_file_lines_eq "$RUNLOG" 1
    commit_file "$REPO" "$CASE 2"
    wait_for_sync
    wait_for_lines "$RUNLOG" 2
    assert_file_eq "$ROOT/link/file" "$CASE 2"
    assert_file_eq "$ROOT/link/exechook" "$CASE 2"
    assert_file_lines_eq "$RUNLOG" 2
}

case_pre_publish_exechook_fail_retry() {
    GIT_SYNC_BG --period=100ms --pre-publish-exechook-command="$TOOLS/exechook-fail.sh" \
        --pre-publish-exechook-backoff=1s --repo="file://$REPO" --root="$ROOT" --link=link
    wait_for_lines "$RUNLOG" 2 5
    assert_file_lines_ge "$RUNLOG" 2
}

case_pre_publish_exechook_success_once() {
    GIT_SYNC_FG --one-time --pre-publish-exechook-command="$TOOLS/exechook-slow.sh" --repo="file://$REPO" \
        --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
    assert_file_eq "$ROOT/link/exechook" "$CASE"
    assert_file_eq "$ROOT/link/exechook-env" "ENVKEY=envval"
}

case_pre_publish_exechook_fail_once() {
    assert_fail GIT_SYNC_FG --one-time --pre-publish-exechook-command="$TOOLS/exechook-fail-slow.sh" \
        --pre-publish-exechook-backoff=1s --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
    assert_file_lines_eq "$RUNLOG" 1
}

case_pre_publish_exechook_startup_after_crash() {
    GIT_SYNC_FG --one-time --repo="file://$REPO" --ref="$MAIN_BRANCH" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
    GIT_SYNC_FG --one-time --repo="file://$REPO" --ref="$MAIN_BRANCH" \
        --pre-publish-exechook-command="$TOOLS/exechook.sh" --root="$ROOT" --link=link
    assert_file_absent "$ROOT/link/exechook"
    assert_file_eq "$ROOT/link/file" "$CASE"
    assert_file_lines_eq "$RUNLOG" 0
}

case_webhook_success() {
    printf '200\n' >"$WORK/responses"
    local port
    port=$(start_stub 0 "$WORK/responses" "$WORK/hitlog")
    commit_file "$REPO" "$CASE 1"
    GIT_SYNC_BG --period=100ms --webhook-url="http://127.0.0.1:$port" --webhook-success-status=200 \
        --repo="file://$REPO" --root="$ROOT" --link=link
    wait_for_sync
    wait_for_lines "$WORK/hitlog" 1
    sleep 1 # and no more
    assert_file_lines_eq "$WORK/hitlog" 1
    assert_file_contains "$WORK/hitlog" "hash=$(git -C "$REPO" rev-parse HEAD)"
    commit_file "$REPO" "$CASE 2"
    wait_for_sync
    wait_for_lines "$WORK/hitlog" 2
    sleep 1
    assert_file_lines_eq "$WORK/hitlog" 2
    assert_file_contains "$WORK/hitlog" "^POST / hash=$(git -C "$REPO" rev-parse HEAD)"
}

case_webhook_fail_retry() {
    printf '500\n' >"$WORK/responses"
    local port
    port=$(start_stub 0 "$WORK/responses" "$WORK/hitlog")
    GIT_SYNC_BG --period=100ms --webhook-url="http://127.0.0.1:$port" --webhook-success-status=200 \
        --webhook-backoff=1s --repo="file://$REPO" --root="$ROOT" --link=link
    wait_for_sync
    wait_for_lines "$WORK/hitlog" 2 5
    assert_file_lines_ge "$WORK/hitlog" 2
    printf '200\n' >"$WORK/responses"
    : >"$WORK/hitlog"
    wait_for_lines "$WORK/hitlog" 1 5
    sleep 2 # once it succeeded, no more
    assert_file_lines_eq "$WORK/hitlog" 1
}

case_webhook_success_once() {
    printf '200\n' >"$WORK/responses"
    local port
    port=$(start_stub 0 "$WORK/responses" "$WORK/hitlog")
    GIT_SYNC_FG --period=100ms --one-time --webhook-url="http://127.0.0.1:$port" --webhook-success-status=200 \
        --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_lines_eq "$WORK/hitlog" 1
}

case_webhook_fail_retry_once() {
    printf '500\n' >"$WORK/responses"
    local port
    port=$(start_stub 0 "$WORK/responses" "$WORK/hitlog")
    assert_fail GIT_SYNC_FG --period=100ms --one-time --webhook-url="http://127.0.0.1:$port" \
        --webhook-success-status=200 --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
    assert_file_lines_eq "$WORK/hitlog" 1
}

case_webhook_fire_and_forget() {
    printf '404\n' >"$WORK/responses"
    local port
    port=$(start_stub 0 "$WORK/responses" "$WORK/hitlog")
    GIT_SYNC_BG --period=100ms --webhook-url="http://127.0.0.1:$port" --webhook-success-status=0 \
        --repo="file://$REPO" --root="$ROOT" --link=link
    wait_for_sync
    wait_for_lines "$WORK/hitlog" 1
    sleep 1
    assert_file_lines_eq "$WORK/hitlog" 1
}

##### HTTP endpoint

case_expose_http() {
    GIT_SYNC_BG --git="$TOOLS/git-slow-fetch.sh" --period=100ms --repo="file://$REPO" --root="$ROOT" --link=link
    wait_for_http
    local code
    code=$(http_code /)
    [[ $code == 503 ]] || fail "/ should answer 503 before the first sync: $code"
    wait_for_sync
    code=$(http_code /)
    [[ $code == 200 ]] || fail "/ should answer 200 after the first sync: $code"
    code=$(http_code /metrics)
    [[ $code == 200 ]] || fail "/metrics: $code"
    code=$(http_code /debug/pprof/)
    [[ $code == 200 ]] || fail "/debug/pprof/: $code"
    curl --silent "http://127.0.0.1:$HTTP_PORT/metrics" | grep -q '^process_cpu_seconds_total ' ||
        fail "no process metrics"
    # A CPU profile in pprof's format: gzipped protobuf.
    curl --silent --output "$WORK/profile" "http://127.0.0.1:$HTTP_PORT/debug/pprof/profile?seconds=1"
    [[ "$(head -c2 "$WORK/profile" | od -An -tx1 | tr -d ' ')" == 1f8b ]] || fail "profile is not gzip"
    gzip -t "$WORK/profile" 2>/dev/null || fail "profile is not valid gzip"
}

case_expose_http_after_restart() {
    GIT_SYNC_FG --one-time --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
    GIT_SYNC_BG --repo="file://$REPO" --root="$ROOT" --link=link
    wait_for_http
    eventually 3 bash -c "[[ \$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$HTTP_PORT/) == 200 ]]" ||
        fail "/ should answer 200 soon after a restart on a synced root"
    assert_file_eq "$ROOT/link/file" "$CASE"
}

##### submodules

# A repository under $WORK with one file; $1 name, $2 file name, $3 content.
make_repo() {
    mkdir "$WORK/$1"
    git -C "$WORK/$1" init -q -b "$MAIN_BRANCH"
    echo "$3" >"$WORK/$1/$2"
    git -C "$WORK/$1" add "$2"
    git -C "$WORK/$1" commit -qam "init $2"
}

# Moves $REPO's submodules to their upstreams' newest commits and commits.
bump_submodules() {
    git -C "$REPO" submodule update --recursive --remote >/dev/null 2>&1
    git -C "$REPO" commit -qam "$1"
}

case_submodule_sync_default() {
    make_repo sub submodule.file submodule
    make_repo nested-sub nested-submodule.file nested-submodule
    git -C "$REPO" submodule add -q "file://$WORK/sub" sub
    git -C "$REPO" commit -aqm "add submodule"
    GIT_SYNC_BG --period=100ms --repo="file://$REPO" --root="$ROOT" --link=link
    wait_for_sync
    assert_file_eq "$ROOT/link/sub/submodule.file" submodule
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 1
    # The submodule moves forward...
    echo "$CASE 2" >"$WORK/sub/submodule.file"
    git -C "$WORK/sub" commit -qam "$CASE 2"
    bump_submodules "$CASE 2"
    wait_for_sync
    assert_file_eq "$ROOT/link/sub/submodule.file" "$CASE 2"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 2
    # ...and back.
    git -C "$WORK/sub" reset -q --hard HEAD^
    bump_submodules "$CASE 3"
    wait_for_sync
    assert_file_eq "$ROOT/link/sub/submodule.file" submodule
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 3
    # A nested submodule appears...
    git -C "$WORK/sub" submodule add -q "file://$WORK/nested-sub" nested-sub
    git -C "$WORK/sub" commit -aqm "add nested submodule"
    bump_submodules "$CASE 4"
    wait_for_sync
    assert_file_eq "$ROOT/link/sub/nested-sub/nested-submodule.file" nested-submodule
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 4
    # ...and goes.
    git -C "$WORK/sub" submodule deinit -q nested-sub
    rm -rf "$WORK/sub/.git/modules/nested-sub"
    git -C "$WORK/sub" rm -qf nested-sub
    git -C "$WORK/sub" commit -aqm "delete nested submodule"
    bump_submodules "$CASE 5"
    wait_for_sync
    assert_file_absent "$ROOT/link/sub/nested-sub/nested-submodule.file"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 5
    # The submodule itself goes.
    git -C "$REPO" submodule deinit -q sub
    rm -rf "$REPO/.git/modules/sub"
    git -C "$REPO" rm -qf sub
    git -C "$REPO" commit -aqm "delete submodule"
    wait_for_sync
    assert_file_absent "$ROOT/link/sub/submodule.file"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 6
}

case_submodule_sync_depth() {
    make_repo sub submodule.file "$CASE 1"
    git -C "$REPO" submodule add -q "file://$WORK/sub" sub
    git -C "$REPO" config -f "$REPO/.gitmodules" submodule.sub.shallow true
    git -C "$REPO" commit -qam "$CASE 1"
    GIT_SYNC_BG --period=100ms --repo="file://$REPO" --depth=1 --root="$ROOT" --link=link
    wait_for_sync
    assert_file_eq "$ROOT/link/sub/submodule.file" "$CASE 1"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 1
    assert_depth "$ROOT/link" 1
    assert_depth "$ROOT/link/sub" 1
    echo "$CASE 2" >"$WORK/sub/submodule.file"
    git -C "$WORK/sub" commit -aqm "submodule $CASE 2"
    bump_submodules "$CASE 2"
    wait_for_sync
    assert_file_eq "$ROOT/link/sub/submodule.file" "$CASE 2"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 2
    assert_depth "$ROOT/link" 1
    assert_depth "$ROOT/link/sub" 1
    git -C "$WORK/sub" reset -q --hard HEAD^
    bump_submodules "$CASE 3"
    wait_for_sync
    assert_file_eq "$ROOT/link/sub/submodule.file" "$CASE 1"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 3
    assert_depth "$ROOT/link" 1
    assert_depth "$ROOT/link/sub" 1
}

case_submodule_sync_off() {
    make_repo sub submodule.file submodule
    git -C "$REPO" submodule add -q "file://$WORK/sub"
    git -C "$REPO" commit -aqm "add submodule"
    GIT_SYNC_BG --period=100ms --submodules=off --repo="file://$REPO" --root="$ROOT" --link=link
    wait_for_sync
    assert_file_absent "$ROOT/link/sub/submodule.file"
}

case_submodule_sync_shallow() {
    make_repo sub submodule.file submodule
    make_repo nested-sub nested-submodule.file nested-submodule
    git -C "$WORK/sub" submodule add -q "file://$WORK/nested-sub" nested-sub
    git -C "$WORK/sub" commit -aqm "add nested submodule"
    git -C "$REPO" submodule add -q "file://$WORK/sub" sub
    git -C "$REPO" commit -aqm "add submodule"
    GIT_SYNC_BG --period=100ms --submodules=shallow --repo="file://$REPO" --root="$ROOT" --link=link
    wait_for_sync
    assert_file_eq "$ROOT/link/sub/submodule.file" submodule
    assert_file_absent "$ROOT/link/sub/nested-sub/nested-submodule.file"
}

case_submodule_sync_relative() {
    make_repo sub submodule.file submodule
    git -C "$REPO" submodule add -q "$(realpath --relative-to "$REPO" "$WORK/sub")" sub
    git -C "$REPO" commit -aqm "add submodule"
    GIT_SYNC_BG --period=100ms --repo="file://$REPO" --root="$ROOT" --link=link
    wait_for_sync
    assert_file_eq "$ROOT/link/sub/submodule.file" submodule
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 1
}

case_submodule_sync_over_ssh_different_keys() {
    make_ssh_keys
    make_repo nested-sub nested-submodule.file nested-submodule
    make_repo sub submodule.file submodule
    local p_nested p_sub p_top
    # One sshd per repository, each accepting one key only.
    p_nested=$(start_sshd nested "$DIR/ssh/1/id_test.pub")
    p_sub=$(start_sshd sub "$DIR/ssh/2/id_test.pub")
    p_top=$(start_sshd top "$DIR/ssh/3/id_test.pub")
    export GIT_SSH_COMMAND="ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -i $DIR/ssh/1/id_test -i $DIR/ssh/2/id_test"
    git -C "$WORK/sub" submodule add -q "ssh://root@127.0.0.1:$p_nested$WORK/nested-sub" nested-sub
    git -C "$WORK/sub" commit -aqm "add nested submodule"
    git -C "$REPO" submodule add -q "ssh://root@127.0.0.1:$p_sub$WORK/sub" sub
    git -C "$REPO" commit -aqm "add submodule"
    unset GIT_SSH_COMMAND
    GIT_SYNC_BG --period=100ms --repo="ssh://root@127.0.0.1:$p_top$REPO" \
        --ssh-key-file="$DIR/ssh/1/id_test" --ssh-key-file="$DIR/ssh/2/id_test" --ssh-key-file="$DIR/ssh/3/id_test" \
        --ssh-known-hosts=false --root="$ROOT" --link=link
    wait_for_sync
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 1
    assert_file_eq "$ROOT/link/sub/submodule.file" submodule
    assert_file_eq "$ROOT/link/sub/nested-sub/nested-submodule.file" nested-submodule
}

case_submodule_sync_over_http_different_passwords() {
    make_repo nested-sub nested-submodule.file nested-submodule
    make_repo sub submodule.file submodule
    # One git host per repository (three ports), each with its own password.
    mkdir -p "$WORK/h1" "$WORK/h2" "$WORK/h3"
    mv "$WORK/nested-sub" "$WORK/h1/repo"
    mv "$WORK/sub" "$WORK/h2/repo"
    echo -n test1 >"$WORK/pw1"
    echo -n test2 >"$WORK/pw2"
    echo -n test3 >"$WORK/pw3"
    local p1 p2 p3
    p1=$(start_git_http "$WORK/h1/repo" test "$WORK/pw1")
    p2=$(start_git_http "$WORK/h2/repo" test "$WORK/pw2")
    printf 'url=http://127.0.0.1:%s/repo\nusername=test\npassword=test1\n\n' "$p1" | git credential approve
    printf 'url=http://127.0.0.1:%s/repo\nusername=test\npassword=test2\n\n' "$p2" | git credential approve
    git -C "$WORK/h2/repo" submodule add -q "http://127.0.0.1:$p1/repo" nested-sub
    git -C "$WORK/h2/repo" commit -aqm "add nested submodule"
    git -C "$REPO" submodule add -q "http://127.0.0.1:$p2/repo" sub
    git -C "$REPO" commit -aqm "add submodule"
    mv "$REPO" "$WORK/h3/repo"
    p3=$(start_git_http "$WORK/h3/repo" test "$WORK/pw3")
    GIT_SYNC_BG --period=100ms --repo="http://127.0.0.1:$p3/repo" \
        --credential="{ \"url\": \"http://127.0.0.1:$p1/repo\", \"username\": \"test\", \"password\": \"test1\" }" \
        --credential="{ \"url\": \"http://127.0.0.1:$p2/repo\", \"username\": \"test\", \"password\": \"test2\" }" \
        --credential="{ \"url\": \"http://127.0.0.1:$p3/repo\", \"username\": \"test\", \"password\": \"test3\" }" \
        --root="$ROOT" --link=link
    wait_for_sync
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 1
    assert_file_eq "$ROOT/link/sub/submodule.file" submodule
    assert_file_eq "$ROOT/link/sub/nested-sub/nested-submodule.file" nested-submodule
}

##### sparse checkout and partial clone

write_sparse_config() {
    printf '%s\n' '!/*' '!/*/' file2 >"$WORK/sparseconfig"
}

case_sparse_checkout() {
    write_sparse_config
    echo "$CASE" >"$REPO/file"
    echo "$CASE" >"$REPO/file2"
    mkdir "$REPO/dir"
    echo "$CASE" >"$REPO/dir/file3"
    git -C "$REPO" add file2 dir
    git -C "$REPO" commit -qam "$CASE"
    GIT_SYNC_FG --one-time --sparse-checkout-file="$WORK/sparseconfig" --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_absent "$ROOT/link/file"
    assert_file_absent "$ROOT/link/dir/file3"
    assert_file_absent "$ROOT/link/dir"
    assert_file_eq "$ROOT/link/file2" "$CASE"
}

case_filter_partial_clone_blob_none() {
    GIT_SYNC_FG --one-time --filter=blob:none --depth=0 --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
    local packs
    packs="$(git -C "$ROOT/link" rev-parse --git-common-dir)/objects/pack"
    ls "$packs"/*.promisor >/dev/null 2>&1 || fail "expected a .promisor pack (partial clone) in $packs"
}

case_filter_with_sparse_checkout() {
    write_sparse_config
    echo "$CASE" >"$REPO/file2"
    mkdir -p "$REPO/dir"
    echo "$CASE" >"$REPO/dir/file3"
    git -C "$REPO" add file2 dir
    git -C "$REPO" commit -qam "$CASE"
    GIT_SYNC_FG --one-time --filter=blob:none --depth=1 --sparse-checkout-file="$WORK/sparseconfig" \
        --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_absent "$ROOT/link/dir/file3"
    assert_file_absent "$ROOT/link/dir"
    assert_file_eq "$ROOT/link/file2" "$CASE"
}

case_filter_across_updates() {
    commit_file "$REPO" "$CASE 1"
    GIT_SYNC_BG --period=100ms --filter=blob:none --depth=0 --repo="file://$REPO" --root="$ROOT" --link=link
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 1
    assert_metric_eq "$METRIC_FETCH_COUNT" 1
    commit_file "$REPO" "$CASE 2"
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE 2"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 2
    assert_metric_eq "$METRIC_FETCH_COUNT" 2
}

##### git config, error and touch files

case_additional_git_configs() {
    GIT_SYNC_FG --one-time \
        --git-config='http.postBuffer:10485760,sect.k1:"a val",sect.k2:another val' \
        --git-config-add='sect.k3:a val' \
        --git-config-add='sect.k4:"a val with quotes"' \
        --git-config-add='"sect.k5":"quoted_all"' \
        --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
    # git-sync logs the resulting git config: every value arrived as meant.
    local v
    for v in '"sect.k1":"a val"' '"sect.k2":"another val"' '"sect.k3":"a val"' '"sect.k4":"a val with quotes"' \
        '"sect.k5":"quoted_all"' '"http.postbuffer":"10485760"'; do
        grep '"msg":"git config"' "$DIR/git-sync.log" | grep -qF "$v" || fail "git config lacks $v"
    done
}

case_export_error() {
    assert_fail GIT_SYNC_FG --ref=does-not-exit --error-file=error.json --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_absent "$ROOT/link"
    assert_file_contains "$ROOT/error.json" "couldn't find remote ref"
    GIT_SYNC_FG --one-time --error-file=error.json --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
    assert_file_absent "$ROOT/error.json"
}

case_export_error_abs_path() {
    assert_fail GIT_SYNC_FG --ref=does-not-exit --error-file="$ROOT/dir/error.json" --repo="file://$REPO" \
        --root="$ROOT" --link=link
    assert_file_absent "$ROOT/link"
    assert_file_contains "$ROOT/dir/error.json" "couldn't find remote ref"
}

# $1: the --touch-file value, $2: where it lands.
touch_case() {
    commit_file "$REPO" "$CASE 1"
    GIT_SYNC_BG --period=100ms --touch-file="$1" --repo="file://$REPO" --root="$ROOT" --link=link
    local step
    for step in first forward back; do
        case $step in
        forward) commit_file "$REPO" "$CASE 2" ;;
        back) git -C "$REPO" reset -q --hard HEAD^ ;;
        esac
        eventually "$MAXWAIT" test -f "$2" || fail "$2 not touched ($step)"
        rm -f "$2"
        if [[ $step == forward ]]; then
            assert_file_eq "$ROOT/link/file" "$CASE 2"
        else
            assert_file_eq "$ROOT/link/file" "$CASE 1"
        fi
        sleep 1 # no change, no touch
        assert_file_absent "$2"
    done
}

case_touch_file() { touch_case touch.file "$ROOT/touch.file"; }

case_touch_file_abs_path() { touch_case "$ROOT/dir/touch.file" "$ROOT/dir/touch.file"; }

case_github_https() {
    skip "needs the internet (clones https://github.com/kubernetes/git-sync)"
}

##### gc

case_gc_default() {
    local sha1 sha2 sha3 size
    sha1=$(git -C "$REPO" rev-parse HEAD)
    dd if=/dev/urandom of="$REPO/big1" bs=1024 count=4096 2>/dev/null
    git -C "$REPO" add .
    git -C "$REPO" commit -qam "$CASE 1"
    sha2=$(git -C "$REPO" rev-parse HEAD)
    dd if=/dev/urandom of="$REPO/big2" bs=1024 count=4096 2>/dev/null
    git -C "$REPO" add .
    git -C "$REPO" commit -qam "$CASE 2"
    sha3=$(git -C "$REPO" rev-parse HEAD)
    # size in KiB must lie in [lo, hi]: old objects are really pruned.
    check_size() {
        size=$(du -s "$ROOT" | cut -f1)
        ((size >= $1)) || fail "repo is impossibly small: $size"
        ((size <= $2)) || fail "repo is too big: $size"
    }
    GIT_SYNC_FG --one-time --ref="$sha3" --depth=0 --repo="file://$REPO" --root="$ROOT" --link=link
    check_size 14000 18000
    GIT_SYNC_FG --one-time --ref="$sha3" --depth=1 --repo="file://$REPO" --root="$ROOT" --link=link
    check_size 14000 18000
    GIT_SYNC_FG --one-time --ref="$sha2" --depth=1 --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_absent "$ROOT/link/big2"
    check_size 7000 9000
    GIT_SYNC_FG --one-time --ref="$sha1" --depth=1 --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_absent "$ROOT/link/big1"
    assert_file_absent "$ROOT/link/big2"
    check_size 100 1000
}

gc_case() {
    GIT_SYNC_FG --one-time --git-gc="$1" --repo="file://$REPO" --root="$ROOT" --link=link
    assert_file_eq "$ROOT/link/file" "$CASE"
}

case_gc_auto() { gc_case auto; }

case_gc_always() { gc_case always; }

case_gc_aggressive() { gc_case aggressive; }

case_gc_off() { gc_case off; }

case_exechook_git_archive() {
    GIT_SYNC_FG --one-time --exechook-command="$TOOLS/exechook-git-archive.sh" --repo="file://$REPO" \
        --root="$ROOT" --link=link
    tar tzf "$ROOT/link/archive.tgz" >/dev/null || fail "not a tgz archive: $ROOT/link/archive.tgz"
}

case_init_period_faster_initial_sync() {
    commit_file "$REPO" "$CASE 1"
    GIT_SYNC_BG --period=100s --init-period=100ms --repo="file://$REPO" --root="$ROOT" --link=link
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 1
    commit_file "$REPO" "$CASE 2"
    sleep 3 # after the first success the period is 100 s
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 1
}

case_init_max_failures_exceeded() {
    assert_fail GIT_SYNC_FG --period=100ms --init-max-failures=3 --max-failures=-1 \
        --repo="file:///does/not/exist" --root="$ROOT" --link=link
    assert_file_absent "$ROOT/link/file"
    local n
    n=$(grep -c '"msg":"error syncing repo, will retry"' "$DIR/git-sync.log" || true)
    ((n == 2)) || fail "expected 2 retried failures before aborting on the 3rd, got $n"
}

# The upstream suite's order (test_e2e.sh), numbered as in
# shared/reference/git-sync-gitopper-etcdproxy.md section 2.2.
ALL_CASES=(
    init_root_doesnt_exist init_root_exists_empty init_root_flag_is_weird init_root_flag_has_symlink
    init_root_is_under_another_repo init_root_fails_sanity bad_ref_non_zero_exit sync_default_ref sync_head
    sync_head_absolute_link sync_head_subdir_link worktree_cleanup worktree_unexpected_removal
    sync_recover_wrong_worktree_hash stale_worktree_timeout stale_worktree_timeout_restart v3_v4_upgrade_in_place
    readlink sync_branch sync_branch_switch sync_tag sync_annotated_tag sync_sha sync_sha_once
    sync_sha_once_sync_different_sha_known sync_sha_once_sync_different_sha_unknown sync_crash_no_link_cleanup_retry
    sync_crash_no_worktree_cleanup_retry sync_sha_shafile_exists sync_repo_switch error_slow_git_short_timeout
    sync_slow_git_long_timeout sync_on_signal_sighup sync_on_signal_hup sync_on_signal_1 sync_depth_default_shallow
    sync_depth_across_updates sync_depth_change_on_restart auth_http_password auth_http_password_in_url
    auth_http_password_file auth_password_file_reload auth_ssh auth_ssh_url auth_askpass_url_wrong_password
    auth_askpass_url_correct_password auth_askpass_url_sometimes_wrong auth_askpass_url_flaky
    auth_askpass_url_slow_start auth_github_app_application_id auth_github_app_client_id exechook_success
    exechook_fail_retry exechook_success_once exechook_fail_once exechook_startup_after_crash
    pre_publish_exechook_success pre_publish_exechook_fail_retry pre_publish_exechook_success_once
    pre_publish_exechook_fail_once pre_publish_exechook_startup_after_crash webhook_success webhook_fail_retry
    webhook_success_once webhook_fail_retry_once webhook_fire_and_forget expose_http expose_http_after_restart
    submodule_sync_default submodule_sync_depth submodule_sync_off submodule_sync_shallow submodule_sync_relative
    submodule_sync_over_ssh_different_keys submodule_sync_over_http_different_passwords sparse_checkout
    filter_partial_clone_blob_none filter_with_sparse_checkout filter_across_updates additional_git_configs
    export_error export_error_abs_path touch_file touch_file_abs_path github_https gc_default gc_auto gc_always
    gc_aggressive gc_off exechook_git_archive init_period_faster_initial_sync init_max_failures_exceeded
)

##### beyond upstream's suite: what its container harness cannot show

# As PID 1 (of a new PID namespace), git-sync re-runs itself as a child, reaps
# the orphans its hooks leave, forwards signals, and exits with the child's
# status (128 + N for a signal N).
case_pid1_reaps_and_forwards() {
    cat >"$WORK/orphan-hook.sh" <<'HOOK'
#!/bin/sh
# Leaves an orphan that lives 1 s: it is re-parented to PID 1, which must reap it.
sh -c 'sleep 1 &'
echo "$GITSYNC_HASH" >>"$RUNLOG"
HOOK
    chmod 755 "$WORK/orphan-hook.sh"
    gs_cmd --period=100ms --exechook-command="$WORK/orphan-hook.sh" --repo="file://$REPO" --root="$ROOT" --link=link
    setsid unshare --pid --fork --mount-proc "${GS_CMD[@]}" >>"$DIR/git-sync.log" 2>&1 &
    local unshare_pid=$! rc=0 init
    echo "$unshare_pid" >>"$DIR/pgids"
    wait_for_sync
    wait_for_lines "$RUNLOG" 1
    grep -q "INFO: detected pid 1" "$DIR/git-sync.log" || fail "did not run as PID 1"
    init=$(ps -o pid= --ppid "$unshare_pid" | tr -d ' ')
    [[ -n "$init" ]] || fail "no PID 1 process"
    # The hook's orphan now belongs to PID 1...
    eventually 2 bash -c "ps -o comm= --ppid $init | grep -qx sleep" || fail "the orphan was not re-parented to PID 1"
    # ...which reaps it when it dies: only git-sync's own child is left, no zombie.
    eventually 5 bash -c "[[ \$(ps -o pid= --ppid $init | wc -l) == 1 ]]" ||
        fail "PID 1 did not reap: $(ps -o pid,stat,comm --ppid "$init")"
    commit_file "$REPO" "$CASE 2"
    wait_for_sync
    wait_for_lines "$RUNLOG" 2
    kill -TERM "$init"
    eventually "$MAXWAIT" bash -c "! kill -0 $unshare_pid" || fail "SIGTERM to PID 1 did not end it"
    wait "$unshare_pid" || rc=$?
    ((rc == 143)) || fail "expected exit 143 (SIGTERM forwarded to the child), got $rc"
}

# Exit codes and the environment twins, end to end.
case_cli_exit_codes_and_env() {
    local rc
    "$GIT_SYNC" --help >"$WORK/help" || fail "--help exit $?"
    grep -q -- "--repo" "$WORK/help" || fail "--help lacks --repo"
    grep -q GITSYNC_PASSWORD "$WORK/help" || fail "--help lacks the environment variables"
    "$GIT_SYNC" --man | grep -q SYNOPSIS || fail "--man"
    "$GIT_SYNC" --version >/dev/null || fail "--version"
    rc=0; "$GIT_SYNC" --no-such-flag 2>/dev/null || rc=$?
    ((rc == 2)) || fail "an unknown flag should exit 2 (pflag), got $rc"
    rc=0; "$GIT_SYNC" --repo="file://$REPO" 2>/dev/null || rc=$?
    ((rc == 1)) || fail "a missing --root should exit 1, got $rc"
    rc=0; "$GIT_SYNC" --repo="file://$REPO" --root="$ROOT" --depth=-1 2>/dev/null || rc=$?
    ((rc == 1)) || fail "an invalid --depth should exit 1, got $rc"
    rc=0; GITSYNC_DEPTH=notanumber "$GIT_SYNC" --repo="file://$REPO" --root="$ROOT" 2>/dev/null || rc=$?
    ((rc == 1)) || fail "a malformed env value should exit 1, got $rc"
    # Configured through the environment only, old and new names.
    HOME=$(mktemp -d "$DIR/home.XXXXXX") GITSYNC_REPO="file://$REPO" GIT_SYNC_ROOT="$ROOT" GITSYNC_LINK=link \
        GITSYNC_ONE_TIME=true GITSYNC_GIT_CONFIG='safe.directory:*' "$GIT_SYNC" 2>"$WORK/env.log" ||
        fail "env-only run failed: $(tail -3 "$WORK/env.log")"
    assert_file_eq "$ROOT/link/file" "$CASE"
    grep -q 'GIT_SYNC_ROOT has been deprecated' "$WORK/env.log" || fail "no deprecation warning for GIT_SYNC_ROOT"
}

# git-sync as an unknown UID in the volume's group (upstream's harness runs
# its container as git-sync:$(id -g)): the repositories belong to root, so
# git's "dubious ownership" check fires unless safe.directory lets it pass.
# No --add-user: this machine's /etc/passwd is not the test's to change.
case_runs_as_another_uid() {
    local home
    home=$(mktemp -d "$DIR/home.XXXXXX")
    chmod 777 "$home"
    chmod a+x "$(dirname "$DIR")" # the suite's top directory is mktemp's 0700
    chmod g+rwx "$ROOT"
    commit_file "$REPO" "$CASE 1"
    setpriv --reuid=65533 --regid="$(id -g)" --clear-groups env HOME="$home" "$GIT_SYNC" -v=2 \
        --touch-file="$INTERLOCK" --repo="file://$REPO" --root="$ROOT" --link=link --period=100ms \
        --http-bind="127.0.0.1:$HTTP_PORT" --http-metrics >>"$DIR/git-sync.log" 2>&1 &
    GS_PID=$!
    echo "$GS_PID" >>"$DIR/pids"
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE 1"
    [[ "$(stat -c %u "$ROOT/.git")" == 65533 ]] || fail "the repository was not made by UID 65533"
    commit_file "$REPO" "$CASE 2"
    wait_for_sync
    assert_file_eq "$ROOT/link/file" "$CASE 2"
    assert_metric_eq "$METRIC_GOOD_SYNC_COUNT" 2
}

EXTRA_CASES=(pid1_reaps_and_forwards cli_exit_codes_and_env runs_as_another_uid)
