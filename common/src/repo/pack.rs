//! Writing a group of objects as one pack file with its index (pack format
//! version 2, index version 2, as `git index-pack` makes them): one file and
//! one fsync for the whole group instead of a file per object. Objects are
//! stored whole (no deltas); `git repack` can compress them later.

use std::collections::HashSet;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use gix::ObjectId;

use super::{Kind, RepoError, io_err, sync_dir};

/// The objects of one pack being built, in memory.
pub struct PackBuilder {
    /// The pack so far: a header whose count is filled in at the end, then
    /// the entries.
    data: Vec<u8>,
    entries: Vec<Entry>,
    ids: HashSet<ObjectId>,
    deflate: flate2::Compress,
}

struct Entry {
    id: ObjectId,
    offset: u64,
    crc: u32,
}

const HEADER_LEN: usize = 12;

impl Default for PackBuilder {
    fn default() -> Self {
        let mut data = Vec::with_capacity(1 << 16);
        data.extend_from_slice(b"PACK\0\0\0\x02\0\0\0\0");
        Self {
            data,
            entries: Vec::new(),
            ids: HashSet::new(),
            deflate: flate2::Compress::new(flate2::Compression::fast(), true),
        }
    }
}

impl PackBuilder {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of pack data so far.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Appends object `id` (`data` of `kind`) unless the pack has it.
    pub fn add(&mut self, id: ObjectId, kind: Kind, data: &[u8]) {
        if !self.ids.insert(id) {
            return;
        }
        let offset = self.data.len();
        let type_bits: u8 = match kind {
            Kind::Commit => 1,
            Kind::Tree => 2,
            Kind::Blob => 3,
        };
        // Type and size: 4 bits of size in the first byte, then 7 per byte.
        let mut size = data.len();
        let mut byte = (type_bits << 4) | (size & 0x0f) as u8;
        size >>= 4;
        while size > 0 {
            self.data.push(byte | 0x80);
            byte = (size & 0x7f) as u8;
            size >>= 7;
        }
        self.data.push(byte);
        self.deflate.reset();
        let mut input = data;
        loop {
            self.data.reserve(input.len() + 64);
            let before_in = self.deflate.total_in();
            let status = self
                .deflate
                .compress_vec(input, &mut self.data, flate2::FlushCompress::Finish)
                .expect("deflating into memory does not fail");
            input = &input[(self.deflate.total_in() - before_in) as usize..];
            if status == flate2::Status::StreamEnd {
                break;
            }
        }
        let crc = crc32fast::hash(&self.data[offset..]);
        self.entries.push(Entry {
            id,
            offset: offset as u64,
            crc,
        });
    }

    /// Writes the pack and its index into `pack_dir` durably (both files
    /// fsynced, renamed into place, the directory fsynced) and returns the
    /// pack's path.
    pub fn finish(mut self, pack_dir: &Path) -> Result<PathBuf, RepoError> {
        let count = u32::try_from(self.entries.len()).expect("a group holds fewer than 2^32 objects");
        self.data[8..HEADER_LEN].copy_from_slice(&count.to_be_bytes());
        let checksum = sha1_of(&self.data);
        self.data.extend_from_slice(&checksum);
        let index = self.index(&checksum);

        let name = format!("pack-{}", hex(&checksum));
        let pack = pack_dir.join(format!("{name}.pack"));
        let idx = pack_dir.join(format!("{name}.idx"));
        let tmp_pack = write_synced(pack_dir, "pack", &self.data)?;
        let tmp_idx = write_synced(pack_dir, "idx", &index)?;
        // The index last: readers find packs by their index.
        fs::rename(&tmp_pack, &pack).map_err(io_err(&pack))?;
        fs::rename(&tmp_idx, &idx).map_err(io_err(&idx))?;
        sync_dir(pack_dir)?;
        Ok(pack)
    }

    /// The version 2 index of the pack whose checksum is `checksum`.
    fn index(&mut self, checksum: &[u8]) -> Vec<u8> {
        self.entries.sort_by_key(|e| e.id);
        let n = self.entries.len();
        let mut out = Vec::with_capacity(8 + 256 * 4 + n * 28 + 40);
        out.extend_from_slice(b"\xfftOc\0\0\0\x02");
        let mut fanout = [0u32; 256];
        for e in &self.entries {
            fanout[e.id.as_bytes()[0] as usize] += 1;
        }
        let mut total = 0;
        for f in fanout {
            total += f;
            out.extend_from_slice(&total.to_be_bytes());
        }
        for e in &self.entries {
            out.extend_from_slice(e.id.as_bytes());
        }
        for e in &self.entries {
            out.extend_from_slice(&e.crc.to_be_bytes());
        }
        let mut large = Vec::new();
        for e in &self.entries {
            let small = match u32::try_from(e.offset) {
                Ok(o) if o < 0x8000_0000 => o,
                _ => {
                    large.push(e.offset);
                    0x8000_0000 | (large.len() as u32 - 1)
                }
            };
            out.extend_from_slice(&small.to_be_bytes());
        }
        for o in large {
            out.extend_from_slice(&o.to_be_bytes());
        }
        out.extend_from_slice(checksum);
        let own = sha1_of(&out);
        out.extend_from_slice(&own);
        out
    }
}

fn sha1_of(data: &[u8]) -> [u8; 20] {
    <sha1::Sha1 as sha1::Digest>::digest(data).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `data` to a new temporary file in `dir` and fsyncs it.
fn write_synced(dir: &Path, suffix: &str, data: &[u8]) -> Result<PathBuf, RepoError> {
    let tmp = dir.join(format!("tmp_{}.{suffix}", rand::random::<u64>()));
    let result = fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(data)?;
        f.sync_all()
    });
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(RepoError::Io { path: tmp, source: e });
    }
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::super::{Kind, ObjectWriter, Repo};

    fn git(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("git").arg("--git-dir").arg(dir).args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Packs that git itself verifies and reads, including objects larger
    /// than a deflate buffer and empty ones; a discarded group leaves nothing.
    #[test]
    fn git_reads_our_packs() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let repo = Repo::open_or_init(&dir.path().join("r"))?;
        let mut w = ObjectWriter::new(repo.git_dir());
        let big: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let blobs: Vec<Vec<u8>> = vec![Vec::new(), b"hello\n".to_vec(), big, vec![b'a'; 100_000]];
        let mut ids = Vec::new();
        for b in &blobs {
            ids.push(w.write(Kind::Blob, b)?);
        }
        ids.push(w.write(Kind::Blob, b"hello\n")?);
        w.sync()?;
        w.write(Kind::Blob, b"never synced")?;
        w.discard();
        w.sync()?;

        let packs: Vec<_> = std::fs::read_dir(repo.git_dir().join("objects/pack"))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        assert_eq!(packs.len(), 2, "one pack and its index: {packs:?}");
        let idx = packs
            .iter()
            .find(|p| p.extension().is_some_and(|e| e == "idx"))
            .expect("an index");
        let verified = git(repo.git_dir(), &["verify-pack", "-v", &idx.display().to_string()])?;
        assert!(verified.contains("non delta: 4 objects"), "{verified}");
        for (id, blob) in ids.iter().zip(&blobs) {
            let out = Command::new("git")
                .arg("--git-dir")
                .arg(repo.git_dir())
                .args(["cat-file", "blob", &id.to_string()])
                .output()?;
            assert!(out.status.success());
            assert_eq!(&out.stdout, blob);
            assert_eq!(&repo.local().read(*id, Kind::Blob)?, blob);
        }
        git(repo.git_dir(), &["fsck", "--strict", "--no-dangling"])?;
        Ok(())
    }
}
