//! Every key etcd accepts is storable: odd keys round-trip through the
//! server, Git stays valid (`git fsck`), and `/a` coexists with `/a/b`.

use anyhow::Result;
use bytes::Bytes;
use common::proto::etcdserverpb::{DeleteRangeRequest, PutRequest};

use crate::support::{Client, Gitcd, all_kvs, fsck, git};

const ODD_KEYS: &[&[u8]] = &[
    b"compact_rev_key",
    b"no/leading/slash",
    b"/",
    b"//",
    b"/a//b",
    b"/trailing/",
    b"/.",
    b"/..",
    b"/./x",
    b"/../y",
    b"/.git",
    b"/.GIT/config",
    b"/git~1",
    b"/nul\0byte",
    b"/\xff\xfe\xfd",
    b"/new\nline",
    b"/100%",
    b"/%self",
    b"/%rel",
    b"/sp ace",
    b"/caf\xc3\xa9",
    b"\0",
    b"\xff",
];

async fn put(c: &mut Client, key: &[u8], value: &[u8]) -> Result<i64> {
    let r =
        c.kv.put(PutRequest {
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.header.map_or(0, |h| h.revision))
}

async fn delete(c: &mut Client, key: &[u8]) -> Result<i64> {
    let r =
        c.kv.delete_range(DeleteRangeRequest {
            key: Bytes::copy_from_slice(key),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(r.deleted, 1, "deleting {:?}", String::from_utf8_lossy(key));
    Ok(r.header.map_or(0, |h| h.revision))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn odd_keys_round_trip_and_git_stays_valid() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    let gitcd = Gitcd::start(&repo).await?;
    let mut c = gitcd.client().await?;
    let mut expected: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (i, key) in ODD_KEYS.iter().enumerate() {
        let value = format!("value {i}").into_bytes();
        put(&mut c, key, &value).await?;
        expected.push((key.to_vec(), value));
    }
    expected.sort();
    assert_eq!(all_kvs(&mut c, 0).await?, expected);
    // Historical reads decode the same paths.
    let rev = 1 + ODD_KEYS.len() as i64;
    assert_eq!(all_kvs(&mut c, rev).await?, expected);
    assert_eq!(all_kvs(&mut c, rev - 1).await?.len(), expected.len() - 1);
    let checked = fsck(&repo, &["--strict"]).await?;
    assert!(!checked.contains("error"), "{checked}");
    let files = git(&repo, &["ls-tree", "-r", "--name-only", "refs/heads/main"])?;
    for path in [
        "%rel/compact_rev_key",
        "%rel/no/leading/slash",
        "%2Egit",
        "nul%00byte",
        "%2E/x",
        "caf\\303\\251",
    ] {
        assert!(files.contains(path), "{path} missing in\n{files}");
    }
    gitcd.stop().await?;

    // A restart loads the same keys from Git.
    let gitcd = Gitcd::start(&repo).await?;
    let mut c = gitcd.client().await?;
    assert_eq!(all_kvs(&mut c, 0).await?, expected);
    for key in ODD_KEYS {
        delete(&mut c, key).await?;
    }
    assert!(all_kvs(&mut c, 0).await?.is_empty());
    assert_eq!(git(&repo, &["ls-tree", "-r", "refs/heads/main"])?, "");
    gitcd.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_and_keys_below_it_coexist() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    let gitcd = Gitcd::start(&repo).await?;
    let mut c = gitcd.client().await?;
    let ls = |repo: &std::path::Path| git(repo, &["ls-tree", "-r", "--name-only", "refs/heads/main"]);

    let r1 = put(&mut c, b"/a", b"A").await?;
    assert_eq!(ls(&repo)?, "a\n");
    let r2 = put(&mut c, b"/a/b", b"B").await?;
    assert_eq!(ls(&repo)?, "a/%self\na/b\n");
    put(&mut c, b"/a/b/c", b"C").await?;
    assert_eq!(ls(&repo)?, "a/%self\na/b/%self\na/b/c\n");
    assert_eq!(
        all_kvs(&mut c, 0).await?,
        vec![
            (b"/a".to_vec(), b"A".to_vec()),
            (b"/a/b".to_vec(), b"B".to_vec()),
            (b"/a/b/c".to_vec(), b"C".to_vec())
        ]
    );
    delete(&mut c, b"/a/b/c").await?;
    assert_eq!(ls(&repo)?, "a/%self\na/b\n");
    delete(&mut c, b"/a/b").await?;
    assert_eq!(ls(&repo)?, "a\n");
    put(&mut c, b"/x/y", b"Y").await?;
    put(&mut c, b"/x", b"X").await?;
    assert_eq!(ls(&repo)?, "a\nx/%self\nx/y\n");
    delete(&mut c, b"/x").await?;
    assert_eq!(ls(&repo)?, "a\nx/y\n");
    // Old revisions still read right.
    assert_eq!(all_kvs(&mut c, r1).await?, vec![(b"/a".to_vec(), b"A".to_vec())]);
    assert_eq!(
        all_kvs(&mut c, r2).await?,
        vec![(b"/a".to_vec(), b"A".to_vec()), (b"/a/b".to_vec(), b"B".to_vec())]
    );
    gitcd.stop().await?;
    Ok(())
}
