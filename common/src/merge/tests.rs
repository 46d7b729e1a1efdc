//! The merge rules on real stores: two branch pairs of one repository (a
//! participant and the other side), written through the store, merged
//! through [`plan`] and [`crate::store::Store::apply`].

use std::process::Command;

use bytes::Bytes;

use super::*;
use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest};
use crate::store::{Store, StoreConfig};

struct Pair {
    store: Store,
    config: StoreConfig,
}

fn config(repo: &std::path::Path, name: &str) -> StoreConfig {
    let mut c = StoreConfig::with_repo(repo);
    c.data_ref = format!("refs/heads/{name}");
    c.metadata_ref = format!("refs/gitcd/metadata/refs/heads/{name}");
    c
}

fn git(repo: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git").arg("--git-dir").arg(repo).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

impl Pair {
    fn open(repo: &std::path::Path, name: &str) -> anyhow::Result<Self> {
        let config = config(repo, name);
        Ok(Self {
            store: Store::open(config.clone())?,
            config,
        })
    }

    /// A second pair branched from this one's current state (as git-pre
    /// makes one from its upstream).
    fn branch(&self, name: &str) -> anyhow::Result<Pair> {
        let other = config(&self.config.repo, name);
        for (from, to) in [
            (&self.config.data_ref, &other.data_ref),
            (&self.config.metadata_ref, &other.metadata_ref),
        ] {
            let id = git(&self.config.repo, &["rev-parse", from])?;
            git(&self.config.repo, &["update-ref", to, &id])?;
        }
        Pair::open(&self.config.repo, name)
    }

    async fn put(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.store
            .put(PutRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::copy_from_slice(value.as_bytes()),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.store
            .delete_range(DeleteRangeRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    fn get(&self, key: &str) -> Option<String> {
        self.store
            .snapshot()
            .kvs
            .get(key.as_bytes())
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
    }

    /// This pair as the side merged in.
    fn incoming(&self) -> anyhow::Result<Incoming> {
        let repo = self.store.repo();
        let meta = repo
            .ref_target(&self.config.metadata_ref)?
            .ok_or_else(|| anyhow::anyhow!("no metadata ref"))?;
        Ok(Incoming {
            commit: self.store.snapshot().data_commit,
            meta_tree: Some(repo.commit(meta)?.tree),
            name: self.config.data_ref.clone(),
        })
    }

    /// Merges `other` into this pair with `policy`: what the plan said.
    async fn merge(&self, other: &Pair, policy: &Policy) -> anyhow::Result<Outcome> {
        let outcome = plan(&self.store.repo(), &self.store.snapshot(), &other.incoming()?, policy)?;
        if let Outcome::Changes(set) = &outcome {
            self.store.apply(set.clone()).await?;
        }
        Ok(outcome)
    }
}

/// Waits until the wall clock is in the next second.
async fn next_second() {
    let secs = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let start = secs();
    while secs() == start {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn newest() -> Policy {
    Policy::default()
}

fn is_changes(o: &Outcome) -> bool {
    matches!(o, Outcome::Changes(_))
}

/// A key changed on one side arrives with a new local revision and
/// version, keeping its write time; a key changed to the same value on
/// both sides is no change; merging what is already merged is up to date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sided_and_same_changes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let a = Pair::open(&dir.path().join("r.git"), "a")?;
    a.put("/x", "0").await?;
    a.put("/y", "0").await?;
    let b = a.branch("b")?;
    b.put("/x", "1").await?;
    a.put("/z", "local").await?;
    let before = a.store.snapshot();
    assert!(is_changes(&a.merge(&b, &newest()).await?));
    let after = a.store.snapshot();
    assert_eq!(a.get("/x").as_deref(), Some("1"));
    assert_eq!(a.get("/z").as_deref(), Some("local"), "local writes stay");
    let x = &after.kvs[b"/x".as_slice()].meta;
    assert_eq!((x.mod_revision, x.version), (before.revision + 1, 2));
    assert_eq!(
        x.time,
        b.store.snapshot().kvs[b"/x".as_slice()].meta.time,
        "the write time travels"
    );
    assert_eq!(a.merge(&b, &newest()).await?, Outcome::UpToDate);

    b.put("/y", "same").await?;
    a.put("/y", "same").await?;
    assert_eq!(
        a.merge(&b, &newest()).await?,
        Outcome::Unchanged,
        "same value both sides"
    );
    Ok(())
}

/// When the receiving head is the merge base and nothing is excluded, the
/// branch fast-forwards to the incoming commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_forwards() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let a = Pair::open(&dir.path().join("r.git"), "a")?;
    a.put("/x", "0").await?;
    let b = a.branch("b")?;
    b.put("/x", "1").await?;
    b.put("/n", "new").await?;
    let Outcome::Changes(set) = a.merge(&b, &newest()).await? else {
        panic!("changes expected");
    };
    assert_eq!(set.fast_forward, Some(b.store.snapshot().data_commit));
    assert_eq!(
        a.store.snapshot().data_commit,
        b.store.snapshot().data_commit,
        "same data commit"
    );
    assert_eq!(a.get("/n").as_deref(), Some("new"));
    Ok(())
}

/// A key changed differently on both sides goes by the policy; under
/// `newest` the later write wins, whichever side merges, so both sides
/// converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_follow_the_policy() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let a = Pair::open(&dir.path().join("r.git"), "a")?;
    a.put("/k", "base").await?;
    let b = a.branch("b")?;
    let c = a.branch("c")?;
    let d = a.branch("d")?;
    a.put("/k", "older").await?;
    b.put("/k", "newer").await?;
    c.put("/k", "other").await?;
    d.put("/k", "other").await?;
    // c keeps its own, d takes theirs.
    let ours = Policy {
        conflict: Conflict::Ours,
        ..Default::default()
    };
    assert_eq!(c.merge(&b, &ours).await?, Outcome::Unchanged);
    assert_eq!(c.get("/k").as_deref(), Some("other"));
    let theirs = Policy {
        conflict: Conflict::Theirs,
        ..Default::default()
    };
    d.merge(&b, &theirs).await?;
    assert_eq!(d.get("/k").as_deref(), Some("newer"));
    // Newest, both ways.
    a.merge(&b, &newest()).await?;
    assert_eq!(a.get("/k").as_deref(), Some("newer"));
    b.merge(&a, &newest()).await?;
    assert_eq!(b.get("/k").as_deref(), Some("newer"));
    Ok(())
}

/// JSON and YAML values edited in different fields on each side keep both
/// edits, identically on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_values_merge_by_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let a = Pair::open(&dir.path().join("r.git"), "a")?;
    a.put("/j", "{\"spec\":{\"n\":1},\"status\":{\"s\":\"x\"}}\n").await?;
    a.put("/y", "spec:\n  replicas: 1\nstatus:\n  phase: Pending\n").await?;
    let b = a.branch("b")?;
    a.put("/j", "{\"spec\":{\"n\":2},\"status\":{\"s\":\"x\"}}\n").await?;
    a.put("/y", "spec:\n  replicas: 2\nstatus:\n  phase: Pending\n").await?;
    b.put("/j", "{\"spec\":{\"n\":1},\"status\":{\"s\":\"y\"}}\n").await?;
    b.put("/y", "spec:\n  replicas: 1\nstatus:\n  phase: Running\n").await?;
    a.merge(&b, &newest()).await?;
    b.merge(&a, &newest()).await?;
    assert_eq!(
        a.get("/j").as_deref(),
        Some("{\"spec\":{\"n\":2},\"status\":{\"s\":\"y\"}}\n")
    );
    assert_eq!(
        a.get("/y").as_deref(),
        Some("spec:\n  replicas: 2\nstatus:\n  phase: Running\n")
    );
    assert_eq!(a.get("/j"), b.get("/j"));
    assert_eq!(a.get("/y"), b.get("/y"));
    Ok(())
}

/// Modified on one side, deleted on the other: under `newest` the later of
/// the modification and the deletion wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modify_delete_under_newest() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let a = Pair::open(&dir.path().join("r.git"), "a")?;
    a.put("/early-delete", "0").await?;
    a.put("/late-delete", "0").await?;
    let b = a.branch("b")?;
    a.delete("/early-delete").await?;
    b.put("/late-delete", "modified").await?;
    // Commit times (when a deletion happened) have a resolution of
    // seconds: let the clock reach the next one.
    next_second().await;
    b.put("/early-delete", "modified later").await?;
    a.delete("/late-delete").await?;
    a.merge(&b, &newest()).await?;
    assert_eq!(a.get("/early-delete").as_deref(), Some("modified later"));
    assert_eq!(a.get("/late-delete"), None);
    Ok(())
}

/// An excluded key never comes from the other side, and an incoming head
/// with excluded changes is merged, not fast-forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_keys_stay_home() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let a = Pair::open(&dir.path().join("r.git"), "a")?;
    a.put("/shared", "0").await?;
    let b = a.branch("b")?;
    b.put("/private/lease", "b's").await?;
    let policy = Policy {
        filter: KeyFilter {
            include: Vec::new(),
            exclude: vec![KeyPattern::parse("/private/**").map_err(anyhow::Error::msg)?],
        },
        ..Default::default()
    };
    assert_eq!(a.merge(&b, &policy).await?, Outcome::Unchanged);
    b.put("/shared", "1").await?;
    let Outcome::Changes(set) = a.merge(&b, &policy).await? else {
        panic!("changes expected");
    };
    assert_eq!(set.fast_forward, None, "excluded changes forbid a fast-forward");
    assert_eq!(a.get("/shared").as_deref(), Some("1"));
    assert_eq!(a.get("/private/lease"), None);
    Ok(())
}

/// Two loops merging each other make criss-cross history (several merge
/// bases); merges stay exact and both sides converge on every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn criss_cross_histories_converge() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let a = Pair::open(&dir.path().join("r.git"), "a")?;
    for i in 0..6 {
        a.put(&format!("/k{i}"), "0").await?;
    }
    let b = a.branch("b")?;
    let mut rng_state = 7u64;
    let mut next = || {
        rng_state = rng_state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng_state >> 33) as usize
    };
    for round in 0..8 {
        for _ in 0..3 {
            let (side, key) = (next() % 2, next() % 6);
            let p = if side == 0 { &a } else { &b };
            if next() % 5 == 0 {
                p.delete(&format!("/k{key}")).await?;
            } else {
                p.put(&format!("/k{key}"), &format!("r{round}-{side}")).await?;
            }
        }
        // Both merge the other's head as it was before either merged:
        // criss-cross.
        let (ia, ib) = (a.incoming()?, b.incoming()?);
        for (p, incoming) in [(&a, ib), (&b, ia)] {
            if let Outcome::Changes(set) = plan(&p.store.repo(), &p.store.snapshot(), &incoming, &newest())? {
                p.store.apply(set).await?;
            }
        }
    }
    // Settle: merge each way until nothing changes.
    for _ in 0..4 {
        a.merge(&b, &newest()).await?;
        b.merge(&a, &newest()).await?;
    }
    for i in 0..6 {
        let k = format!("/k{i}");
        assert_eq!(a.get(&k), b.get(&k), "{k} converged");
    }
    assert!(matches!(
        a.merge(&b, &newest()).await?,
        Outcome::UpToDate | Outcome::Unchanged
    ));
    Ok(())
}
