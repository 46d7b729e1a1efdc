//! What etcd's Maintenance service asks of a store: hashes of its state,
//! a consolidation of the object store (Defragment), and a snapshot as a Git
//! bundle, which [`restore`] turns back into a repository.
//!
//! **What the hashes cover** (documented in `docs/format.md`): HashKV at
//! revision *r* is the CRC-32 (IEEE) of every key live at *r*, in key order,
//! each as its length and bytes, its value's length and bytes, then its
//! create revision, mod revision, version and lease (little-endian 64-bit
//! lengths and numbers). Two stores with the same keys at the same revision
//! have the same hash, and any write changes it (the mod revision moves).
//! Hash adds the compact revision and the leases (id and TTL) after the keys.
//! Neither is etcd's hash (which hashes bbolt's pages and MVCC keys), so
//! hashes compare between gitcds, not with etcd.

use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use gix::ObjectId;

use super::{Error, KeyRange, Kv, StorageError, Store, StoreConfig, history};
use crate::repo::bundle::{self, BundleError};
use crate::repo::{Repo, RepoError, Signature};

/// What HashKV answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    /// The store's compact revision (-1 before the first compaction).
    pub compact_revision: i64,
    /// The store's current revision.
    pub revision: i64,
}

fn hash_kvs<'a>(h: &mut crc32fast::Hasher, kvs: impl Iterator<Item = (&'a Bytes, &'a Kv)>) {
    for (key, kv) in kvs {
        h.update(&(key.len() as u64).to_le_bytes());
        h.update(key);
        h.update(&(kv.value.len() as u64).to_le_bytes());
        h.update(&kv.value);
        for n in [
            kv.meta.create_revision,
            kv.meta.mod_revision,
            kv.meta.version,
            kv.meta.lease,
        ] {
            h.update(&n.to_le_bytes());
        }
    }
}

/// A snapshot written to a temporary file, ready to stream.
pub struct SnapshotFile {
    pub file: std::fs::File,
    /// Its length: a multiple of 512 bytes.
    pub len: u64,
    /// The revision it holds.
    pub revision: i64,
}

impl Store {
    /// etcd's HashKV: the hash of the keys live at `revision` (0: the
    /// current one), read from Git for a past revision. A revision at or
    /// below the compact revision is refused as compacted, one above the
    /// current revision as a future revision (etcd's rules).
    pub async fn hash_kv(&self, revision: i64) -> Result<KvHash, Error> {
        let snap = self.snapshot();
        if revision > 0 && revision <= snap.compact_revision {
            return Err(Error::Compacted);
        }
        if revision > snap.revision {
            return Err(Error::FutureRevision);
        }
        let mut h = crc32fast::Hasher::new();
        if revision <= 0 || revision == snap.revision {
            hash_kvs(&mut h, snap.kvs.iter());
        } else {
            let shared = self.shared.clone();
            let nul = Bytes::from_static(b"\0");
            let all = KeyRange::from_request(&nul, &nul);
            let kvs = tokio::task::spawn_blocking(move || {
                history::read_at(&shared.repo.local(), &shared.revisions, revision, &all)
            })
            .await
            .map_err(|_| Error::Stopped)??;
            hash_kvs(&mut h, kvs.iter().map(|(k, v)| (k, v)));
        }
        Ok(KvHash {
            hash: h.finalize(),
            compact_revision: snap.compact_revision,
            revision: snap.revision,
        })
    }

    /// etcd's Hash: the current keys (as HashKV), then the compact revision
    /// and each lease's id and TTL; with the revision hashed.
    pub fn hash(&self) -> (u32, i64) {
        let snap = self.snapshot();
        let mut h = crc32fast::Hasher::new();
        hash_kvs(&mut h, snap.kvs.iter());
        h.update(&snap.compact_revision.to_le_bytes());
        for l in snap.leases.values() {
            h.update(&l.id.to_le_bytes());
            h.update(&l.ttl.to_le_bytes());
        }
        (h.finalize(), snap.revision)
    }

    /// etcd's Defragment: asks this process's pack maintainer to fold and
    /// consolidate every pack into one now, and waits. `Ok(false)` when
    /// another process maintains the repository's packs (or none does).
    pub async fn defragment(&self) -> Result<bool, Error> {
        let handle = self.shared.packs.clone();
        tokio::task::spawn_blocking(move || handle.consolidate_all())
            .await
            .map_err(|_| Error::Stopped)?
            .map_err(Error::from)
    }

    /// Writes a snapshot: a Git bundle of the metadata ref as it is now and
    /// the data commit it describes (so all history of the branch pair), and
    /// the auth ref, to an anonymous temporary file in the Git directory.
    /// Blocking work runs on a blocking thread.
    pub async fn snapshot_bundle(&self) -> Result<SnapshotFile, Error> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || -> Result<SnapshotFile, Error> {
            let repo = shared.repo.local();
            let config = &shared.config;
            let meta = repo.ref_target(&config.metadata_ref)?.ok_or_else(|| RepoError::Io {
                path: repo.git_dir().join(&config.metadata_ref),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no metadata ref"),
            })?;
            let commit = repo.commit(meta)?;
            let data = data_of(&repo, meta, commit.tree)?;
            let revision = read_revision(&repo, commit.tree)?;
            let mut refs = vec![
                ("HEAD".to_owned(), data),
                (config.data_ref.clone(), data),
                (config.metadata_ref.clone(), meta),
            ];
            if let Some(auth) = repo.ref_target(&config.auth_ref())? {
                refs.push((config.auth_ref(), auth));
            }
            let dir = repo.git_dir().join("gitcd");
            std::fs::create_dir_all(&dir).map_err(|source| RepoError::Io {
                path: dir.clone(),
                source,
            })?;
            let mut file = tempfile::tempfile_in(&dir).map_err(|source| RepoError::Io {
                path: dir.clone(),
                source,
            })?;
            let len = bundle::write(&repo, &refs, &mut file, &dir)?;
            file.rewind().map_err(|source| RepoError::Io { path: dir, source })?;
            Ok(SnapshotFile { file, len, revision })
        })
        .await
        .map_err(|_| Error::Stopped)?
    }
}

/// The data commit a metadata tree names.
fn data_of(repo: &crate::repo::LocalRepo, commit: ObjectId, tree: ObjectId) -> Result<ObjectId, Error> {
    let entry = repo
        .lookup(tree, &[crate::meta::DATA_ENTRY.as_bytes()])?
        .ok_or(super::CorruptError::MissingEntry {
            commit,
            entry: crate::meta::DATA_ENTRY,
        })?;
    let hex = repo.read(entry.id, crate::repo::Kind::Blob)?;
    ObjectId::from_hex(hex.trim_ascii()).map_err(|_| {
        Error::from(super::CorruptError::MissingEntry {
            commit,
            entry: crate::meta::DATA_ENTRY,
        })
    })
}

fn read_revision(repo: &crate::repo::LocalRepo, tree: ObjectId) -> Result<i64, Error> {
    let Some(entry) = repo.lookup(tree, &[crate::meta::REVISION_ENTRY.as_bytes()])? else {
        return Ok(0);
    };
    let blob = repo.read(entry.id, crate::repo::Kind::Blob)?;
    Ok(crate::meta::decode_int(crate::meta::REVISION_ENTRY, &blob).unwrap_or(0))
}

/// Why a snapshot cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{path} exists and is not empty: restore makes a new repository")]
    NotEmpty { path: PathBuf },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}")]
    Bundle {
        path: PathBuf,
        #[source]
        source: BundleError,
    },
    #[error("the bundle names no gitcd branch pair (a refs/gitcd/metadata/<data ref> and its data ref)")]
    NoBranchPair,
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("the restored store does not open")]
    Store(#[from] StorageError),
}

/// What a restore made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub data_ref: String,
    pub metadata_ref: String,
    /// The revision the restored store is at.
    pub revision: i64,
}

/// Makes a new bare repository at `repo` from the snapshot `file`: a Git
/// bundle as gitcd's Snapshot streams it, either as it is or as `etcdctl
/// snapshot save` stores it (with the stream's SHA-256 appended, which is
/// then checked). Refs are created as the bundle names them, `HEAD` names
/// the data ref, and the store is opened once to check it loads. Blocking.
pub fn restore(file: &Path, repo: &Path, committer: Signature) -> Result<Restored, RestoreError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| RestoreError::Io { path, source }
    };
    if std::fs::read_dir(repo).is_ok_and(|mut d| d.next().is_some()) {
        return Err(RestoreError::NotEmpty { path: repo.to_owned() });
    }
    let len = std::fs::metadata(file).map_err(io(file))?.len();
    let bundle_len = bundle_length(file, len).map_err(io(file))?;
    let target = Repo::open_or_init(repo)?;
    let local = target.local();
    let refs = bundle::unbundle(&local, file, bundle_len).map_err(|source| RestoreError::Bundle {
        path: file.to_owned(),
        source,
    })?;
    let (data_ref, metadata_ref) = refs
        .iter()
        .find_map(|(name, _)| {
            let data = name.strip_prefix("refs/gitcd/metadata/")?;
            refs.iter()
                .any(|(n, _)| n == data)
                .then(|| (data.to_owned(), name.clone()))
        })
        .ok_or(RestoreError::NoBranchPair)?;
    let edits: Vec<crate::repo::refs::RefUpdate<'_>> = refs
        .iter()
        .filter(|(name, _)| name.starts_with("refs/"))
        .map(|(name, id)| crate::repo::refs::RefUpdate {
            name,
            old: None,
            new: *id,
        })
        .collect();
    local.update_refs(&edits, "gitcd: restore", &committer)?;
    local.set_head(&data_ref)?;
    let mut config = StoreConfig::with_repo(repo);
    config.data_ref = data_ref.clone();
    config.metadata_ref = metadata_ref.clone();
    config.committer = committer;
    config.maintenance = crate::repo::Maintenance::Off;
    let revision = Store::init(&config)?;
    Ok(Restored {
        data_ref,
        metadata_ref,
        revision,
    })
}

/// How much of a snapshot file is the bundle: all of it, or all but the
/// last 32 bytes when they are the SHA-256 of the rest (etcdctl's format).
fn bundle_length(path: &Path, len: u64) -> std::io::Result<u64> {
    if len < 32 || len % bundle::BUNDLE_ALIGN != 32 {
        return Ok(len);
    }
    let mut f = std::fs::File::open(path)?;
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut left = len - 32;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        let n = f.read(&mut buf[..left.min(1 << 16) as usize])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        sha2::Digest::update(&mut hasher, &buf[..n]);
        left -= n as u64;
    }
    let mut tail = [0u8; 32];
    f.read_exact(&mut tail)?;
    let sum: [u8; 32] = sha2::Digest::finalize(hasher).into();
    Ok(if sum == tail { len - 32 } else { len })
}
