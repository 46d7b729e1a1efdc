//! The writer's rules, on a real store in a temp dir: grouping, change sets
//! committed alone, one writer per branch pair, moves of the data ref under
//! a write, and closing.

use std::process::Command;

use super::*;

fn git(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn open(dir: &std::path::Path, tune: impl FnOnce(&mut StoreConfig)) -> anyhow::Result<(Store, StoreConfig)> {
    let mut config = StoreConfig::with_repo(dir.join("repo"));
    tune(&mut config);
    Ok((Store::open(config.clone())?, config))
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        ..Default::default()
    }
}

/// Metadata commit messages, newest first, first line only.
fn meta_messages(config: &StoreConfig) -> anyhow::Result<Vec<String>> {
    let log = git(
        &config.repo,
        &["log", "--first-parent", "--format=%s", &config.metadata_ref],
    )?;
    Ok(log.lines().map(str::to_owned).collect())
}

/// The metadata messages once the metadata ref on disk reaches `revision`
/// (the writer moves it at most a commit interval after the answers).
fn settled_messages(config: &StoreConfig, revision: i64) -> anyhow::Result<Vec<String>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let messages = meta_messages(config)?;
        let reached = messages
            .first()
            .and_then(|m| parse_revisions(m.as_bytes()))
            .is_some_and(|(_, last, _)| last >= revision);
        if reached || std::time::Instant::now() >= deadline {
            return Ok(messages);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes that queue up while a commit is made share the next one, never
/// more than `max_commit_revisions` to a commit, and every revision stays
/// exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_writes_group_into_bounded_commits() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, config) = open(dir.path(), |c| c.max_commit_revisions = 8)?;
    let writes: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.put(put(&format!("/k{i}"), "v")).await })
        })
        .collect();
    let mut revisions = Vec::new();
    for w in writes {
        revisions.push(w.await??.header.map_or(0, |h| h.revision));
    }
    revisions.sort();
    assert_eq!(revisions, (2..66).collect::<Vec<_>>(), "one revision per write");
    let mut spans = Vec::new();
    for m in settled_messages(&config, 65)? {
        let (first, last, _) = parse_revisions(m.as_bytes()).expect("a revision message");
        spans.push(last - first + 1);
    }
    assert!(spans.iter().all(|s| *s <= 8), "{spans:?}");
    assert!(spans.iter().any(|s| *s > 1), "queued writes were grouped: {spans:?}");
    assert_eq!(spans.iter().sum::<i64>(), 65, "every revision in one commit: {spans:?}");
    store.close();
    Ok(())
}

/// A change set is one revision with a commit of its own (never grouped),
/// whose data commit has the set's extra parent; one computed on a stale
/// view of a key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_sets_commit_alone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, config) = open(dir.path(), |_| {})?;
    let first = store.put(put("/a", "1")).await?;
    let a_mod = first.header.map_or(0, |h| h.revision);
    let side = store.snapshot().data_commit;
    let writes: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.put(put(&format!("/w{i}"), "v")).await })
        })
        .collect();
    let set = ChangeSet {
        changes: vec![
            KeyChange {
                key: Bytes::from_static(b"/a"),
                expect_mod: a_mod,
                new: Some(NewValue {
                    value: Bytes::from_static(b"merged"),
                    time: 1,
                }),
            },
            KeyChange {
                key: Bytes::from_static(b"/m"),
                expect_mod: 0,
                new: Some(NewValue {
                    value: Bytes::from_static(b"m"),
                    time: 1,
                }),
            },
        ],
        parents: vec![side],
        message: "merge side".into(),
        ..Default::default()
    };
    let applied = store.apply(set.clone()).await?;
    for w in writes {
        w.await??;
    }
    let rev = applied.revision.expect("the set changed keys");
    // Writes queued with it may be committed (and the refs moved) up to
    // a commit interval after their answers.
    let messages = settled_messages(&config, rev + 20)?;
    assert!(
        messages.contains(&format!("{rev}-{rev}")),
        "revision {rev} alone in its commit (with the log of its two changes): {messages:?}"
    );
    let data = git(&config.repo, &["log", "--format=%H %P %s", &config.data_ref])?;
    let line = data
        .lines()
        .find(|l| l.ends_with(&format!(" {rev}")))
        .unwrap_or_else(|| panic!("a data commit for {rev}: {data}"));
    assert_eq!(line.split(' ').count(), 4, "two parents: {line}");
    assert!(line.contains(&side.to_string()), "the extra parent: {line}");
    assert_eq!(
        git(&config.repo, &["show", &format!("{}:a", config.data_ref)])?,
        "merged"
    );
    // The same set again: /a moved on, so it is refused.
    assert!(matches!(store.apply(set).await, Err(Error::Changed { .. })));
    store.close();
    Ok(())
}

/// One writer per branch pair: a second store on the same pair is refused
/// and told who holds it; another pair of the same repository opens.
#[tokio::test]
async fn one_writer_per_branch_pair() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, config) = open(dir.path(), |_| {})?;
    match Store::open(config.clone()) {
        Err(StorageError::Repo(RepoError::Locked { holder, .. })) => {
            assert!(holder.contains("refs/heads/main"), "{holder}")
        }
        Err(e) => panic!("locked, not {e}"),
        Ok(_) => panic!("a second writer of the pair must be refused"),
    }
    let mut other = config.clone();
    other.data_ref = "refs/heads/other".into();
    other.metadata_ref = "refs/gitcd/metadata/refs/heads/other".into();
    let second = Store::open(other)?;
    second.close();
    store.close();
    let again = Store::open(config)?;
    again.close();
    Ok(())
}

/// A commit someone pushes to the data ref just before a write becomes a
/// revision of its own, and the write lands after it: a moved ref is a
/// retry, not an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_pushed_under_a_write_is_picked_up() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, config) = open(dir.path(), |c| c.poll_interval = std::time::Duration::from_secs(3600))?;
    store.put(put("/a", "1")).await?;
    let repo = config.repo.as_path();
    let head = git(repo, &["rev-parse", &config.data_ref])?;
    let blob = {
        let mut child = Command::new("git")
            .arg("--git-dir")
            .arg(repo)
            .args(["hash-object", "-w", "--stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        use std::io::Write as _;
        child.stdin.take().expect("piped").write_all(b"pushed")?;
        String::from_utf8(child.wait_with_output()?.stdout)?.trim().to_owned()
    };
    let base_tree = git(repo, &["rev-parse", &format!("{head}^{{tree}}")])?;
    git(repo, &["read-tree", &base_tree])?;
    git(
        repo,
        &["update-index", "--add", "--cacheinfo", &format!("100644,{blob},ext")],
    )?;
    let tree = git(repo, &["write-tree"])?;
    let commit = git(repo, &["commit-tree", &tree, "-p", &head, "-m", "by hand"])?;
    git(repo, &["update-ref", &config.data_ref, &commit, &head])?;
    let resp = store.put(put("/after", "2")).await?;
    let snap = store.snapshot();
    let ext = snap.kvs.get(b"/ext".as_slice()).expect("the pushed file is a key");
    assert_eq!(ext.value.as_ref(), b"pushed");
    assert!(ext.meta.mod_revision < resp.header.map_or(0, |h| h.revision));
    store.close();
    Ok(())
}

/// Closing finishes the writes queued before it; later ones are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_finishes_queued_writes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, config) = open(dir.path(), |_| {})?;
    let writes: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.put(put(&format!("/k{i}"), "v")).await })
        })
        .collect();
    // Let every write reach the queue before the stop message.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.snapshot().revision < 2 && std::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    tokio::task::spawn_blocking({
        let store = store.clone();
        move || store.close()
    })
    .await?;
    let mut ok = 0;
    for w in writes {
        match w.await? {
            Ok(_) => ok += 1,
            Err(Error::Stopped) => {}
            Err(e) => panic!("a write either lands or is refused as stopped: {e}"),
        }
    }
    assert!(ok >= 1);
    assert!(matches!(store.put(put("/late", "x")).await, Err(Error::Stopped)));
    // What was acknowledged is in the repository.
    let reopened = Store::open(config)?;
    assert_eq!(reopened.snapshot().kvs.len(), ok);
    reopened.close();
    Ok(())
}

/// Points the metadata ref at a copy of its commit whose `format` entry says
/// `format`.
fn set_format(config: &StoreConfig, format: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let repo = &config.repo;
    let head = git(repo, &["rev-parse", &config.metadata_ref])?;
    let file = repo.join("format-entry");
    std::fs::write(&file, format!("{format}\n"))?;
    let blob = git(repo, &["hash-object", "-w", file.to_str().expect("UTF-8 path")])?;
    let listing: String = git(repo, &["ls-tree", &head])?
        .lines()
        .map(|l| match l.split_once('\t') {
            Some((_, "format")) => format!("100644 blob {blob}\tformat\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    let mut mktree = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .arg("mktree")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    mktree.stdin.take().expect("piped").write_all(listing.as_bytes())?;
    let tree = String::from_utf8(mktree.wait_with_output()?.stdout)?.trim().to_owned();
    let parents = git(repo, &["log", "-1", "--format=%P", &head])?;
    let message = git(repo, &["log", "-1", "--format=%B", &head])?;
    let mut args = vec!["commit-tree", tree.as_str(), "-m", message.as_str()];
    for p in parents.split_whitespace() {
        args.extend(["-p", p]);
    }
    let commit = git(repo, &args)?;
    git(repo, &["update-ref", &config.metadata_ref, &commit, &head])?;
    Ok(())
}

/// A store written in format `gitcd/1` (logs with every value inline) opens
/// as it is; its next commit is of the current format. A format this gitcd does not know
/// is refused with an error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_1_is_read_and_unknown_formats_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, config) = open(dir.path(), |_| {})?;
    store.put(put("/a", "1")).await?;
    store.close();
    set_format(&config, "gitcd/1")?;
    let store = Store::open(config.clone())?;
    assert_eq!(store.snapshot().kvs.len(), 1);
    store.put(put("/b", "2")).await?;
    store.close();
    let tip = format!("{}:format", config.metadata_ref);
    assert_eq!(git(&config.repo, &["cat-file", "-p", &tip])?, crate::meta::FORMAT);

    set_format(&config, "gitcd/9")?;
    let err = Store::open(config.clone()).err().expect("an unknown format is refused");
    let text = crate::error::chain(&err).to_string();
    assert!(
        text.contains("\"gitcd/9\"") && text.contains("this gitcd reads gitcd/1, gitcd/2 and gitcd/3"),
        "{text}"
    );
    Ok(())
}

/// The metadata blobs' paths below `keys/`, from Git.
fn key_blob_paths(config: &StoreConfig) -> anyhow::Result<Vec<String>> {
    let listing = git(
        &config.repo,
        &["ls-tree", "-r", "--name-only", &format!("{}:keys", config.metadata_ref)],
    )?;
    Ok(listing.lines().map(str::to_owned).collect())
}

/// A directory of the `keys/` trie splits by the next digit when it would
/// hold more than `KEYS_MAX_LEAF` blobs, and a store written before the trie
/// (format 2: every directory one level, never split) is read as it is and
/// splits as it grows. Every key's metadata stays readable at every
/// revision, before and after the split, from memory, after a restart, and
/// from Git (a past revision's range and events older than the window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_directories_split_as_they_grow() -> anyhow::Result<()> {
    use crate::meta::{KEYS_MAX_LEAF, key_hex};
    let dir = tempfile::tempdir()?;
    let (store, config) = open(dir.path(), |c| c.history_window = 1)?;
    // Keys that share the directory `keys/00`, and two more elsewhere.
    let shared: Vec<String> = (0..)
        .map(|i| format!("/k{i}"))
        .filter(|k| key_hex(k.as_bytes()).starts_with(b"00"))
        .take(KEYS_MAX_LEAF + 8)
        .collect();
    for k in &shared[..KEYS_MAX_LEAF] {
        store.put(put(k, "old")).await?;
    }
    store.put(put("/other", "x")).await?;
    let before_split = store.snapshot().revision;
    let paths = key_blob_paths(&config)?;
    assert_eq!(paths.iter().filter(|p| p.starts_with("00/")).count(), KEYS_MAX_LEAF);
    assert!(paths.iter().all(|p| p.len() == 2 + 1 + 38), "not split yet: {paths:?}");
    // What format 2 wrote is this very layout: reopen it as format 2.
    store.close();
    set_format(&config, "gitcd/2")?;
    let store = Store::open(config.clone())?;
    for k in &shared[KEYS_MAX_LEAF..] {
        store.put(put(k, "new")).await?;
    }
    store.put(put(&shared[0], "changed")).await?;
    let paths = key_blob_paths(&config)?;
    let in_00: Vec<&String> = paths.iter().filter(|p| p.starts_with("00/")).collect();
    assert_eq!(in_00.len(), shared.len());
    for k in &shared {
        let hex = String::from_utf8(key_hex(k.as_bytes()).to_vec())?;
        let split = format!("00/{}/{}", &hex[2..3], &hex[3..]);
        assert!(paths.contains(&split), "{k} at {split}: {in_00:?}");
    }
    let tip = format!("{}:format", config.metadata_ref);
    assert_eq!(git(&config.repo, &["cat-file", "-p", &tip])?, crate::meta::FORMAT);
    // Deleting keys empties directories, which disappear.
    let gone = &shared[KEYS_MAX_LEAF];
    let gone_hex = String::from_utf8(key_hex(gone.as_bytes()).to_vec())?;
    let alone = shared
        .iter()
        .filter(|k| key_hex(k.as_bytes())[2] == gone_hex.as_bytes()[2])
        .count();
    store
        .delete_range(DeleteRangeRequest {
            key: Bytes::copy_from_slice(gone.as_bytes()),
            ..Default::default()
        })
        .await?;
    let paths = key_blob_paths(&config)?;
    assert_eq!(paths.iter().filter(|p| p.starts_with("00/")).count(), shared.len() - 1);
    if alone == 1 {
        assert!(!paths.iter().any(|p| p.starts_with(&format!("00/{}/", &gone_hex[2..3]))));
    }
    let expected = store.snapshot().kvs.clone();
    let now = store.snapshot().revision;
    store.close();

    // After a restart, every key's metadata is read from the trie.
    let store = Store::open(config.clone())?;
    assert_eq!(store.snapshot().kvs, expected);
    // A past revision, from Git: before the split, keys stood one level down.
    let past = store
        .range(RangeRequest {
            key: Bytes::from_static(b"/"),
            range_end: Bytes::from_static(b"0"),
            revision: before_split,
            ..Default::default()
        })
        .await?;
    assert_eq!(past.kvs.len(), KEYS_MAX_LEAF + 1);
    assert!(past.kvs.iter().all(|kv| kv.mod_revision <= before_split));
    // Events rebuilt from Git (the window holds one revision): each of the
    // single-key commits after the split shows its own key once, though the
    // split moved other keys' blobs.
    let events = store.events(before_split + 1, now, 100).await?;
    assert_eq!(events.len() as i64, now - before_split);
    for (e, key) in events
        .iter()
        .zip(shared[KEYS_MAX_LEAF..].iter().chain([&shared[0], gone]))
    {
        let keys: Vec<&[u8]> = e.changes.iter().map(|c| &c.key[..]).collect();
        assert_eq!(keys, [key.as_bytes()], "revision {}", e.revision);
    }
    let changed = &events[events.len() - 2].changes[0];
    assert_eq!(changed.prev.as_ref().map(|kv| &kv.value[..]), Some(&b"old"[..]));
    assert_eq!(changed.new.as_ref().map(|kv| &kv.value[..]), Some(&b"changed"[..]));
    let deleted = &events[events.len() - 1].changes[0];
    assert!(deleted.prev.is_some() && deleted.new.is_none());
    store.close();
    Ok(())
}

/// Writes that queue while others are answered are acknowledged before
/// their commit (the journal holds them): meanwhile each such revision
/// reads back exactly (a Range at it, its events), the commit follows
/// within the commit interval, and a reopened store has every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_revisions_read_back_and_get_committed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, config) = open(dir.path(), |_| {})?;
    let get_at = |key: String, revision: i64| RangeRequest {
        key: Bytes::from(key),
        revision,
        ..Default::default()
    };
    let mut keys = std::collections::BTreeMap::new();
    let mut checked = 0;
    for round in 0..200 {
        let writes: Vec<_> = (0..32)
            .map(|i| {
                let (store, key) = (store.clone(), format!("/d/{round}/{i}"));
                tokio::spawn(async move {
                    let rev = store
                        .put(put(&key, &format!("v{round}-{i}")))
                        .await?
                        .header
                        .map_or(0, |h| h.revision);
                    anyhow::Ok((rev, key))
                })
            })
            .collect();
        for w in writes {
            let (rev, key) = w.await??;
            keys.insert(rev, key);
        }
        let deferred = store.shared.revisions.deferred();
        for r in deferred.iter().map(|r| r.revision) {
            let key = keys[&r].clone();
            let all = store
                .range(RangeRequest {
                    key: Bytes::from_static(b"/d/"),
                    range_end: Bytes::from_static(b"/d0"),
                    revision: r,
                    count_only: true,
                    ..Default::default()
                })
                .await?;
            assert_eq!(all.count, r - 1, "keys at deferred revision {r}");
            let at = store.range(get_at(key.clone(), r)).await?;
            assert_eq!(at.kvs.len(), 1, "{key} at its revision {r}");
            assert_eq!(at.kvs[0].mod_revision, r);
            let before = store.range(get_at(key.clone(), r - 1)).await?;
            assert!(before.kvs.is_empty(), "{key} before its revision {r}");
            let events = events::from_git(&store.repo(), &store.shared.revisions, r)?;
            assert_eq!(events.changes.len(), 1);
            assert_eq!(events.changes[0].key, Bytes::from(key));
            checked += 1;
        }
        if checked >= 64 {
            break;
        }
    }
    assert!(checked > 0, "no write was ever deferred");
    let last = *keys.keys().last().expect("writes");
    // The commit comes without further writes.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !store.shared.revisions.deferred().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "deferred revisions never committed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spans: i64 = settled_messages(&config, last)?
        .iter()
        .map(|m| {
            let (first, last, _) = parse_revisions(m.as_bytes()).expect("a revision message");
            last - first + 1
        })
        .sum();
    assert_eq!(spans, last, "every revision in exactly one commit");
    // The trees, filled as the revisions were deferred, hold every key.
    let files = git(&config.repo, &["ls-tree", "-r", "--name-only", &config.data_ref])?;
    let mut files: Vec<&str> = files.lines().collect();
    let mut written: Vec<&str> = keys.values().map(|k| k.trim_start_matches('/')).collect();
    files.sort_unstable();
    written.sort_unstable();
    assert_eq!(files, written, "the data tree's files are the keys written");
    let (_, sample) = keys.iter().nth(keys.len() / 2).expect("writes");
    let value = git(
        &config.repo,
        &["show", &format!("{}:{}", config.data_ref, &sample[1..])],
    )?;
    assert!(value.starts_with('v'), "{sample}'s file holds its value: {value:?}");
    store.close();
    let (store, _) = open(dir.path(), |_| {})?;
    for (rev, key) in keys.iter().step_by(97) {
        let now = store.range(get_at(key.clone(), 0)).await?;
        assert_eq!(
            now.kvs.first().map(|kv| kv.mod_revision),
            Some(*rev),
            "{key} after reopening"
        );
    }
    assert_eq!(store.snapshot().revision, last);
    store.close();
    Ok(())
}

/// With `commit_interval` zero nothing is deferred: every batch of queued
/// writes is committed before its answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_commit_interval_commits_every_batch() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, config) = open(dir.path(), |c| c.commit_interval = Duration::ZERO)?;
    let mut last = 0;
    for round in 0..20 {
        let writes: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.put(put(&format!("/z/{round}/{i}"), "v")).await })
            })
            .collect();
        for w in writes {
            last = last.max(w.await??.header.map_or(0, |h| h.revision));
        }
        assert!(
            store.shared.revisions.deferred().is_empty(),
            "round {round} deferred revisions"
        );
    }
    let spans: i64 = settled_messages(&config, last)?
        .iter()
        .map(|m| parse_revisions(m.as_bytes()).map_or(0, |(first, last, _)| last - first + 1))
        .sum();
    assert_eq!(spans, last, "every revision in exactly one commit");
    store.close();
    Ok(())
}

/// While writes queue, the refs and packs trail the journal: the latest
/// snapshot's data commit may exist only in the writer's memory. The state
/// in Git always names a commit on disk whose tree holds exactly its keys
/// (what a merge's plan reads from).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_in_git_is_on_disk_while_writes_queue() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, config) = open(dir.path(), |_| {})?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..48)
        .map(|c| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    store.put(put(&format!("/d/{c}/{}", n % 40), &format!("v{n}"))).await?;
                    n += 1;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let (mut checked, mut trailing) = (0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while (checked < 20 || trailing == 0) && std::time::Instant::now() < deadline {
        let (in_git, live) = (store.snapshot_in_git(), store.snapshot());
        assert!(in_git.revision <= live.revision);
        if in_git.revision < live.revision {
            trailing += 1;
        }
        let commit = in_git.data_commit.to_string();
        let files = git(&config.repo, &["ls-tree", "-r", "--name-only", &commit])?;
        assert_eq!(
            files.lines().count(),
            in_git.kvs.len(),
            "the tree of {commit} holds the keys of revision {}",
            in_git.revision
        );
        checked += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    assert!(trailing > 0, "the state in Git never trailed the latest one");
    store.close();
    Ok(())
}
