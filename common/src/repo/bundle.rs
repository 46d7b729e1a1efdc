//! Git bundles (`git bundle` format v2): a header naming refs, then one
//! pack with every object reachable from them. What etcd's Snapshot streams
//! for gitcd, and what `gitcd restore` turns back into a repository; `git
//! bundle verify`, `git clone` and `git fetch` read them too.
//!
//! Written here, with gix reading the objects, so that serving needs no
//! `git` binary. The pack holds whole objects (no deltas: nothing is
//! searched, and the objects are streamed one at a time) and ends with one
//! unreferenced padding blob that makes the bundle a multiple of 512 bytes
//! long: etcdctl's `snapshot save` accepts a stream only when its length,
//! with the SHA-256 that follows, is 32 more than a multiple of 512 (the
//! sector size etcd's own files are made of).

use std::collections::HashSet;
use std::io::{BufRead, Read, Write};
use std::path::Path;

use gix::ObjectId;

use super::{Kind, LocalRepo, RepoError, io_err};

/// What a bundle's length is a multiple of.
pub const BUNDLE_ALIGN: u64 = 512;

const V2_SIGNATURE: &str = "# v2 git bundle\n";
const V3_SIGNATURE: &str = "# v3 git bundle\n";

/// Why a file is not a bundle this code can read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a Git bundle (no `# v2 git bundle` or `# v3 git bundle` line)")]
    NotABundle,
    #[error("bundle header line {0:?}")]
    Header(String),
    #[error("the bundle needs objects it does not hold (it was made incrementally, with prerequisite {0})")]
    Prerequisite(String),
    #[error("the bundle's pack")]
    Pack(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the bundle names {name} at {id}, which its pack does not hold")]
    Missing { name: String, id: ObjectId },
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// Every object reachable from `roots` (commits, their trees and blobs),
/// each once: commits first, then trees and blobs. Submodule entries are not
/// followed.
fn reachable(repo: &LocalRepo, roots: &[ObjectId]) -> Result<Vec<(ObjectId, Kind)>, RepoError> {
    let mut seen: HashSet<ObjectId> = HashSet::new();
    let mut commits = Vec::new();
    let mut queue: Vec<ObjectId> = roots.to_vec();
    let mut trees = Vec::new();
    while let Some(id) = queue.pop() {
        if !seen.insert(id) {
            continue;
        }
        let c = repo.commit(id)?;
        commits.push((id, Kind::Commit));
        trees.push(c.tree);
        queue.extend(c.parents.iter().copied().filter(|p| !seen.contains(p)));
    }
    let mut rest = Vec::new();
    while let Some(id) = trees.pop() {
        if !seen.insert(id) {
            continue;
        }
        rest.push((id, Kind::Tree));
        for e in repo.tree_entries(id)? {
            if e.is_tree() {
                trees.push(e.id);
            } else if e.is_file() && seen.insert(e.id) {
                rest.push((e.id, Kind::Blob));
            }
        }
    }
    commits.extend(rest);
    Ok(commits)
}

/// Type and size of a pack entry.
fn entry_header(type_bits: u8, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(4);
    let mut size = size;
    let mut byte = (type_bits << 4) | (size & 0x0f) as u8;
    size >>= 4;
    while size > 0 {
        out.push(byte | 0x80);
        byte = (size & 0x7f) as u8;
        size >>= 7;
    }
    out.push(byte);
    out
}

/// A blob entry of `len` bytes in zlib's stored form: exactly how long it is
/// on disk is known in advance.
fn stored_blob(len: usize) -> (ObjectId, Vec<u8>) {
    let content = vec![b'\n'; len];
    let id = super::objects::object_id(Kind::Blob, &content);
    let mut entry = entry_header(3, len);
    entry.extend_from_slice(&[0x78, 0x01, 0x01]);
    let l = len as u16;
    entry.extend_from_slice(&l.to_le_bytes());
    entry.extend_from_slice(&(!l).to_le_bytes());
    entry.extend_from_slice(&content);
    // zlib's Adler-32 of `len` newlines.
    let (mut a, mut b) = (1u32, 0u32);
    for _ in 0..len {
        a = (a + u32::from(b'\n')) % 65_521;
        b = (b + a) % 65_521;
    }
    entry.extend_from_slice(&((b << 16) | a).to_be_bytes());
    (id, entry)
}

/// The padding blob whose entry takes the bundle from `written` bytes (the
/// pack's checksum still to come) to a multiple of [`BUNDLE_ALIGN`].
fn padding(written: u64) -> (ObjectId, Vec<u8>) {
    let want = (BUNDLE_ALIGN - (written + 20) % BUNDLE_ALIGN) % BUNDLE_ALIGN;
    // Entry lengths grow by one per content byte (and by one more where the
    // size header grows), so every residue is reached below 2,048 bytes.
    (0..2048)
        .map(stored_blob)
        .find(|(_, e)| e.len() as u64 % BUNDLE_ALIGN == want)
        .expect("some padding length below 2048 fits any residue")
}

/// Counts and hashes what passes into `inner`.
struct Hashing<W> {
    inner: W,
    sha1: sha1::Sha1,
    hashing: bool,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        if self.hashing {
            sha1::Digest::update(&mut self.sha1, &buf[..n]);
        }
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a bundle of `refs` (name, commit) and everything reachable from
/// them to `out`; answers its length, a multiple of [`BUNDLE_ALIGN`].
/// Blocking; reads each object once (trees and commits twice).
pub fn write(repo: &LocalRepo, refs: &[(String, ObjectId)], out: impl Write, path: &Path) -> Result<u64, RepoError> {
    let roots: Vec<ObjectId> = refs.iter().map(|(_, id)| *id).collect();
    let objects = reachable(repo, &roots)?;
    let io = io_err(path);
    let mut out = Hashing {
        inner: std::io::BufWriter::with_capacity(1 << 20, out),
        sha1: <sha1::Sha1 as sha1::Digest>::new(),
        hashing: false,
        written: 0,
    };
    let mut header = V2_SIGNATURE.to_owned();
    for (name, id) in refs {
        header.push_str(&format!("{id} {name}\n"));
    }
    header.push('\n');
    let count = u32::try_from(objects.len() + 1).expect("a bundle holds fewer than 2^32 objects");
    let mut pack_header = b"PACK\0\0\0\x02".to_vec();
    pack_header.extend_from_slice(&count.to_be_bytes());
    let write_all = |out: &mut Hashing<_>, bytes: &[u8]| out.write_all(bytes);
    write_all(&mut out, header.as_bytes()).map_err(io_err(path))?;
    out.hashing = true;
    write_all(&mut out, &pack_header).map_err(io_err(path))?;
    let mut deflate = flate2::Compress::new(flate2::Compression::fast(), true);
    let mut entry = Vec::new();
    for (id, kind) in objects {
        let data = repo.read(id, kind)?;
        let type_bits = match kind {
            Kind::Commit => 1,
            Kind::Tree => 2,
            Kind::Blob => 3,
        };
        entry.clear();
        entry.extend_from_slice(&entry_header(type_bits, data.len()));
        deflate.reset();
        let mut input = &data[..];
        loop {
            entry.reserve(input.len() + 64);
            let before = deflate.total_in();
            let status = deflate
                .compress_vec(input, &mut entry, flate2::FlushCompress::Finish)
                .expect("deflating into memory does not fail");
            input = &input[(deflate.total_in() - before) as usize..];
            if status == flate2::Status::StreamEnd {
                break;
            }
        }
        write_all(&mut out, &entry).map_err(io_err(path))?;
    }
    let (_, pad) = padding(out.written);
    write_all(&mut out, &pad).map_err(io_err(path))?;
    out.hashing = false;
    let checksum: [u8; 20] = sha1::Digest::finalize(out.sha1.clone()).into();
    write_all(&mut out, &checksum).map_err(io)?;
    out.flush().map_err(io_err(path))?;
    debug_assert_eq!(out.written % BUNDLE_ALIGN, 0);
    Ok(out.written)
}

/// A bundle's refs, read from its header; `input` is left at its pack.
pub fn read_header(input: &mut impl BufRead) -> Result<(Vec<(String, ObjectId)>, u64), BundleError> {
    let mut consumed = 0u64;
    let mut line = String::new();
    let read_line = |input: &mut dyn BufRead, line: &mut String, consumed: &mut u64| -> Result<(), BundleError> {
        line.clear();
        let n = input.read_line(line).map_err(|source| BundleError::Io {
            path: "bundle".into(),
            source,
        })?;
        *consumed += n as u64;
        Ok(())
    };
    read_line(input, &mut line, &mut consumed)?;
    if line != V2_SIGNATURE && line != V3_SIGNATURE {
        return Err(BundleError::NotABundle);
    }
    let mut refs = Vec::new();
    loop {
        read_line(input, &mut line, &mut consumed)?;
        let text = line.trim_end_matches('\n');
        if text.is_empty() {
            break;
        }
        if let Some(cap) = text.strip_prefix('@') {
            if cap != "object-format=sha1" {
                return Err(BundleError::Header(text.into()));
            }
            continue;
        }
        if let Some(pre) = text.strip_prefix('-') {
            return Err(BundleError::Prerequisite(pre.into()));
        }
        let (hex, name) = text.split_once(' ').ok_or_else(|| BundleError::Header(text.into()))?;
        let id = ObjectId::from_hex(hex.as_bytes()).map_err(|_| BundleError::Header(text.into()))?;
        refs.push((name.to_owned(), id));
    }
    Ok((refs, consumed))
}

/// Reads the bundle at `path` (its first `len` bytes) into the repository
/// whose Git directory is `git_dir`: indexes its pack (with gix, resolving
/// any deltas, as bundles `git bundle create` makes have) and answers the
/// refs it names, whose objects are then present. Moves no ref.
pub fn unbundle(repo: &LocalRepo, path: &Path, len: u64) -> Result<Vec<(String, ObjectId)>, BundleError> {
    let file = std::fs::File::open(path).map_err(|source| BundleError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut input = std::io::BufReader::with_capacity(1 << 20, file.take(len));
    let (refs, _) = read_header(&mut input)?;
    let pack_dir = repo.git_dir().join("objects").join("pack");
    std::fs::create_dir_all(&pack_dir).map_err(|source| BundleError::Io {
        path: pack_dir.clone(),
        source,
    })?;
    let interrupt = std::sync::atomic::AtomicBool::new(false);
    let outcome = gix::odb::pack::Bundle::write_to_directory(
        &mut input,
        Some(&pack_dir),
        &mut gix::progress::Discard,
        &interrupt,
        None::<gix::objs::find::Never>,
        gix::hash::Kind::Sha1,
        Default::default(),
    )
    .map_err(|e| BundleError::Pack(Box::new(e)))?;
    // gix keeps the pack with a `.keep` until refs point into it; the refs
    // follow at once.
    if let Some(keep) = outcome.keep_path {
        let _ = std::fs::remove_file(keep);
    }
    super::objects::sync_dir(&pack_dir)?;
    for (name, id) in &refs {
        if !repo.has(*id) {
            return Err(BundleError::Missing {
                name: name.clone(),
                id: *id,
            });
        }
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_fits_every_residue() {
        for written in [0u64, 1, 12, 31, 492, 511, 512, 100_003] {
            let (_, pad) = padding(written);
            assert_eq!((written + pad.len() as u64 + 20) % BUNDLE_ALIGN, 0, "{written}");
        }
    }
}
