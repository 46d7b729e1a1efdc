//! Writing a group of objects as one pack file with its index (pack format
//! version 2, index version 2, as `git index-pack` makes them): one file and
//! one fsync for the whole group instead of a file per object. A group's
//! objects are stored whole; [`fold`] later folds many groups' packs into one,
//! with each tree stored as a delta against its previous version.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gix::ObjectId;

use super::objects::{PacedFile, sync_dir};
use super::{Kind, RepoError, delta, io_err};

/// The objects of one pack being built, in memory. Once written, it keeps
/// its bytes and its trees' contents for [`fold`].
pub struct PackBuilder {
    /// The pack so far: a header whose count is filled in at the end, then
    /// the entries (and the checksum once written).
    data: Vec<u8>,
    /// In pack order.
    entries: Vec<Entry>,
    ids: HashSet<ObjectId>,
    /// Set up on the first deflate (its state is a few hundred KiB to
    /// allocate and clear) and handed on by [`PackBuilder::take`].
    deflate: Option<flate2::Compress>,
    /// Bytes of tree contents kept for folding.
    tree_bytes: usize,
}

struct Entry {
    id: ObjectId,
    offset: u64,
    end: u64,
    crc: u32,
    tree: Option<Tree>,
}

/// A tree's content, and the tree it replaced (a delta base when folding).
struct Tree {
    content: Arc<Vec<u8>>,
    previous: Option<ObjectId>,
}

/// One entry of a group's pack, as [`PackBuilder::stored`] lists them.
pub enum Stored<'a> {
    /// A blob or commit: its entry's bytes in the pack (header and zlib
    /// stream) and their CRC-32.
    Object { id: ObjectId, crc: u32, bytes: &'a [u8] },
    /// A tree (stored uncompressed), and the tree it replaced.
    Tree {
        id: ObjectId,
        previous: Option<ObjectId>,
        content: &'a Arc<Vec<u8>>,
    },
}

const HEADER_LEN: usize = 12;
pub const OFS_DELTA: u8 = 6;
/// Largest blob or commit a group's pack stores without compression: a
/// metadata blob or a commit gains a few bytes from deflate, for the cost
/// of a deflate stream's set-up and reset.
const MAX_STORED_OBJECT: usize = 512;
/// Largest tree a group's pack stores without compression.
const MAX_STORED_TREE: usize = 1 << 20;
/// Longest chain of deltas [`fold`] makes: reading a tree applies at most
/// this many.
const MAX_DELTA_DEPTH: u32 = 16;

impl Default for PackBuilder {
    fn default() -> Self {
        let mut data = Vec::with_capacity(1 << 16);
        data.extend_from_slice(b"PACK\0\0\0\x02\0\0\0\0");
        Self {
            data,
            entries: Vec::new(),
            ids: HashSet::new(),
            deflate: None,
            tree_bytes: 0,
        }
    }
}

impl PackBuilder {
    /// Takes the pack built so far and leaves this builder empty, keeping
    /// its deflate state for the next pack (a writer builds one per group).
    pub fn take(&mut self) -> PackBuilder {
        let deflate = self.deflate.take();
        let pack = std::mem::take(self);
        self.deflate = deflate;
        pack
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of pack data so far.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Bytes of the trees in the pack.
    pub fn tree_bytes(&self) -> usize {
        self.tree_bytes
    }

    /// Bytes held in memory: the pack and the trees kept for folding.
    pub fn memory(&self) -> usize {
        self.data.len() + self.tree_bytes
    }

    /// Appends object `id` (`data` of `kind`) unless the pack has it.
    pub fn add(&mut self, id: ObjectId, kind: Kind, data: &[u8]) {
        if !self.ids.insert(id) {
            return;
        }
        let type_bits = match kind {
            Kind::Commit => 1,
            Kind::Tree => 2,
            Kind::Blob => 3,
        };
        let offset = self.data.len();
        push_header(&mut self.data, type_bits, data.len());
        if data.len() <= MAX_STORED_OBJECT {
            push_stored(&mut self.data, data);
        } else {
            self.deflate_in(data);
        }
        self.push_entry(id, offset, None);
    }

    /// Appends tree `id`, keeping its content and the id of the tree it
    /// replaces for [`fold`].
    ///
    /// Trees up to [`MAX_STORED_TREE`] are stored, not deflated: they are
    /// mostly object ids, which compress little, and a group rewrites every
    /// tree on its paths; [`fold`] deflates the ones it keeps whole. Larger
    /// ones (flat directories of thousands of entries, whose long names
    /// compress well) are deflated here: every later pass over the pack
    /// (its checksum, its write) is then over fewer bytes.
    pub fn add_tree(&mut self, id: ObjectId, content: Arc<Vec<u8>>, previous: Option<ObjectId>) {
        if !self.ids.insert(id) {
            return;
        }
        let offset = self.data.len();
        push_header(&mut self.data, 2, content.len());
        if content.len() <= MAX_STORED_TREE {
            push_stored(&mut self.data, &content);
        } else {
            self.deflate_in(&content);
        }
        self.push_entry(id, offset, None);
        self.tree_bytes += content.len();
        self.entries.last_mut().expect("just added").tree = Some(Tree { content, previous });
    }

    /// The entries, in pack order.
    pub fn stored(&self) -> impl Iterator<Item = Stored<'_>> {
        self.entries.iter().map(|e| match &e.tree {
            Some(t) => Stored::Tree {
                id: e.id,
                previous: t.previous,
                content: &t.content,
            },
            None => Stored::Object {
                id: e.id,
                crc: e.crc,
                bytes: &self.data[e.offset as usize..e.end as usize],
            },
        })
    }

    /// Appends an entry copied whole from another pack.
    pub(super) fn add_copy(&mut self, id: ObjectId, entry: &[u8], crc: u32) {
        self.ids.insert(id);
        let offset = self.data.len();
        self.data.extend_from_slice(entry);
        self.push_entry(id, offset, Some(crc));
    }

    /// Appends object `id` as `delta` against the object at `base_offset`.
    fn add_delta(&mut self, id: ObjectId, base_offset: u64, delta: &[u8]) {
        self.ids.insert(id);
        let offset = self.data.len();
        push_header(&mut self.data, OFS_DELTA, delta.len());
        self.data
            .extend_from_slice(&encode_distance(offset as u64 - base_offset));
        self.deflate_in(delta);
        self.push_entry(id, offset, None);
    }

    fn deflate_in(&mut self, data: &[u8]) {
        let deflate = self
            .deflate
            .get_or_insert_with(|| flate2::Compress::new(flate2::Compression::fast(), true));
        deflate.reset();
        let mut input = data;
        loop {
            self.data.reserve(input.len() + 64);
            let before_in = deflate.total_in();
            let status = deflate
                .compress_vec(input, &mut self.data, flate2::FlushCompress::Finish)
                .expect("deflating into memory does not fail");
            input = &input[(deflate.total_in() - before_in) as usize..];
            if status == flate2::Status::StreamEnd {
                break;
            }
        }
    }

    /// Records the entry from `offset` to the end, whose CRC is `crc` when
    /// known.
    fn push_entry(&mut self, id: ObjectId, offset: usize, crc: Option<u32>) {
        let crc = crc.unwrap_or_else(|| crc32fast::hash(&self.data[offset..]));
        self.entries.push(Entry {
            id,
            offset: offset as u64,
            end: self.data.len() as u64,
            crc,
            tree: None,
        });
    }

    /// Writes the pack and its index into `pack_dir` durably (both files
    /// fsynced, renamed into place, the directory fsynced) and returns the
    /// pack's path. The builder keeps its contents, for [`fold`].
    pub fn finish(&mut self, pack_dir: &Path) -> Result<PathBuf, RepoError> {
        let (checksum, index) = self.seal();
        let tmp_pack = write_synced(pack_dir, "pack", &self.data)?;
        install(pack_dir, &tmp_pack, &index, &checksum, true)
    }

    /// Writes the pack and its index into `pack_dir` without fsync (a
    /// journal makes them durable: see [`super::journal`]) and returns the
    /// pack's path, its checksum and its index.
    pub fn finish_unsynced(&mut self, pack_dir: &Path) -> Result<(PathBuf, [u8; 20], Vec<u8>), RepoError> {
        let (checksum, index) = self.seal();
        let name = format!("pack-{}", hex(&checksum));
        let pack = pack_dir.join(format!("{name}.pack"));
        place(pack_dir, &self.data, &pack)?;
        // The index last: readers find packs by their index.
        place(pack_dir, &index, &pack.with_extension("idx"))?;
        Ok((pack, checksum, index))
    }

    /// The whole pack, once finished.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Finishes the pack in memory: its checksum (its name), its bytes and
    /// its index.
    pub(super) fn sealed(mut self) -> super::journal::SealedPack {
        let (checksum, index) = self.seal();
        (checksum, self.data, index)
    }

    /// Fills in the count, appends the checksum; returns it and the index.
    fn seal(&mut self) -> ([u8; 20], Vec<u8>) {
        let checksum = self.checksum();
        let index = self.index(&checksum);
        self.data.extend_from_slice(&checksum);
        (checksum, index)
    }

    /// The checksum the pack would end in (its name) if it were finished
    /// now, with the count filled in; the pack stays open.
    fn checksum(&mut self) -> [u8; 20] {
        let count = u32::try_from(self.entries.len()).expect("a pack holds fewer than 2^32 objects");
        self.data[8..HEADER_LEN].copy_from_slice(&count.to_be_bytes());
        sha1_of(&self.data)
    }

    /// The ids of the objects, in pack order.
    pub(super) fn ids(&self) -> impl Iterator<Item = ObjectId> + '_ {
        self.entries.iter().map(|e| e.id)
    }

    /// The kind and content of the `n`th object (in pack order). Group
    /// packs hold no deltas.
    pub(super) fn object(&self, n: usize) -> Result<(Kind, Vec<u8>), String> {
        let e = &self.entries[n];
        if let Some(t) = &e.tree {
            return Ok((Kind::Tree, t.content.as_ref().clone()));
        }
        let bytes = &self.data[e.offset as usize..e.end as usize];
        let (type_bits, size, header) = parse_header(bytes).ok_or("a truncated entry header")?;
        let kind = match type_bits {
            1 => Kind::Commit,
            2 => Kind::Tree,
            3 => Kind::Blob,
            other => return Err(format!("an entry of type {other} in a group's pack")),
        };
        let mut out = Vec::with_capacity(size);
        flate2::Decompress::new(true)
            .decompress_vec(&bytes[header..], &mut out, flate2::FlushDecompress::Finish)
            .map_err(|e| format!("cannot inflate the entry: {e}"))?;
        if out.len() != size {
            return Err(format!("the entry inflates to {} bytes, not {size}", out.len()));
        }
        Ok((kind, out))
    }

    /// Appends every object of `other` this pack does not hold, as stored
    /// there (trees keep what [`fold`] needs).
    pub(super) fn absorb(&mut self, other: &PackBuilder) {
        for e in &other.entries {
            if !self.ids.insert(e.id) {
                continue;
            }
            let offset = self.data.len();
            self.data
                .extend_from_slice(&other.data[e.offset as usize..e.end as usize]);
            self.push_entry(e.id, offset, Some(e.crc));
            if let Some(t) = &e.tree {
                self.tree_bytes += t.content.len();
                self.entries.last_mut().expect("just added").tree = Some(Tree {
                    content: t.content.clone(),
                    previous: t.previous,
                });
            }
        }
    }

    /// The version 2 index of the pack whose checksum is `checksum`.
    fn index(&self, checksum: &[u8]) -> Vec<u8> {
        let mut entries: Vec<IndexEntry> = self
            .entries
            .iter()
            .map(|e| IndexEntry {
                id: e.id,
                offset: e.offset,
                crc: e.crc,
            })
            .collect();
        write_index(&mut entries, checksum)
    }
}

/// One object of a pack index.
#[derive(Clone, Copy)]
pub struct IndexEntry {
    pub id: ObjectId,
    pub offset: u64,
    pub crc: u32,
}

/// A version 2 index of the pack whose checksum is `checksum` and whose
/// objects are `entries` (which it sorts).
fn write_index(entries: &mut [IndexEntry], checksum: &[u8]) -> Vec<u8> {
    entries.sort_by_key(|e| e.id);
    let n = entries.len();
    let mut out = Vec::with_capacity(8 + 256 * 4 + n * 28 + 40);
    out.extend_from_slice(b"\xfftOc\0\0\0\x02");
    let mut fanout = [0u32; 256];
    for e in entries.iter() {
        fanout[e.id.as_bytes()[0] as usize] += 1;
    }
    let mut total = 0;
    for f in fanout {
        total += f;
        out.extend_from_slice(&total.to_be_bytes());
    }
    for e in entries.iter() {
        out.extend_from_slice(e.id.as_bytes());
    }
    for e in entries.iter() {
        out.extend_from_slice(&e.crc.to_be_bytes());
    }
    let mut large = Vec::new();
    for e in entries.iter() {
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

/// Reads a version 2 pack index: every object with its offset and CRC.
pub fn read_index(path: &Path) -> Result<Vec<IndexEntry>, RepoError> {
    let data = fs::read(path).map_err(io_err(path))?;
    parse_index(path, &data)
}

/// Parses `data`, the version 2 pack index at `path`, after checking that it
/// ends in the SHA-1 of what comes before (a crash can tear an index
/// written without fsync).
pub fn parse_sound_index(path: &Path, data: &[u8]) -> Result<Vec<IndexEntry>, RepoError> {
    if data.len() < 20 || sha1_of(&data[..data.len() - 20]) != data[data.len() - 20..] {
        return Err(RepoError::Io {
            path: path.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "pack index: torn (its checksum does not match)",
            ),
        });
    }
    parse_index(path, data)
}

/// Parses `data`, the version 2 pack index at `path`.
fn parse_index(path: &Path, data: &[u8]) -> Result<Vec<IndexEntry>, RepoError> {
    let bad = |m: &str| RepoError::Io {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("pack index: {m}")),
    };
    if data.len() < 8 + 1024 + 40 || &data[..8] != b"\xfftOc\0\0\0\x02" {
        return Err(bad("not a version 2 index"));
    }
    let word = |at: usize| u32::from_be_bytes(data[at..at + 4].try_into().expect("four bytes"));
    let n = word(8 + 255 * 4) as usize;
    let (ids, crcs, offsets) = (8 + 1024, 8 + 1024 + n * 20, 8 + 1024 + n * 24);
    let large = offsets + n * 4;
    if data.len() < large + 40 {
        return Err(bad("truncated"));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let small = word(offsets + i * 4);
        let offset = if small & 0x8000_0000 == 0 {
            u64::from(small)
        } else {
            let at = large + (small & 0x7fff_ffff) as usize * 8;
            let bytes = data.get(at..at + 8).ok_or_else(|| bad("large offset out of range"))?;
            u64::from_be_bytes(bytes.try_into().expect("eight bytes"))
        };
        out.push(IndexEntry {
            id: ObjectId::from_bytes_or_panic(&data[ids + i * 20..ids + i * 20 + 20]),
            offset,
            crc: word(crcs + i * 4),
        });
    }
    Ok(out)
}

/// A pack written to disk as it is made, for merges too large to hold in
/// memory. Its object count is known at the start.
pub struct PackWriter {
    dir: PathBuf,
    tmp: PathBuf,
    file: std::io::BufWriter<PacedFile>,
    hasher: sha1::Sha1,
    offset: u64,
    entries: Vec<IndexEntry>,
}

impl PackWriter {
    pub fn create(dir: &Path, count: u32) -> Result<Self, RepoError> {
        let tmp = dir.join(format!("tmp_{}.pack", rand::random::<u64>()));
        let file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        let mut w = Self {
            dir: dir.to_owned(),
            tmp,
            file: std::io::BufWriter::with_capacity(1 << 20, PacedFile::new(file)),
            hasher: <sha1::Sha1 as sha1::Digest>::new(),
            offset: 0,
            entries: Vec::with_capacity(count as usize),
        };
        let mut header = b"PACK\0\0\0\x02".to_vec();
        header.extend_from_slice(&count.to_be_bytes());
        w.put(&header)?;
        Ok(w)
    }

    /// Where the next entry starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Appends the entry of object `id`, made of `parts`; `crc` when known.
    pub fn entry(&mut self, id: ObjectId, parts: &[&[u8]], crc: Option<u32>) -> Result<(), RepoError> {
        let offset = self.offset;
        let crc = crc.unwrap_or_else(|| {
            let mut h = crc32fast::Hasher::new();
            parts.iter().for_each(|p| h.update(p));
            h.finalize()
        });
        for p in parts {
            self.put(p)?;
        }
        self.entries.push(IndexEntry { id, offset, crc });
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), RepoError> {
        sha1::Digest::update(&mut self.hasher, bytes);
        self.file.write_all(bytes).map_err(io_err(&self.tmp))?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Ends the pack and writes its index, both durably, and returns the
    /// pack's path.
    pub fn finish(mut self) -> Result<PathBuf, RepoError> {
        let checksum: [u8; 20] = sha1::Digest::finalize(self.hasher.clone()).into();
        self.file.write_all(&checksum).map_err(io_err(&self.tmp))?;
        let file = self.file.into_inner().map_err(|e| RepoError::Io {
            path: self.tmp.clone(),
            source: e.into_error(),
        })?;
        file.into_inner().sync_all().map_err(io_err(&self.tmp))?;
        let index = write_index(&mut self.entries, &checksum);
        install(&self.dir, &self.tmp, &index, &checksum, true)
    }
}

/// Puts a pack written and fsynced at `tmp_pack` into `pack_dir` under its
/// name, with its index `index` (written and fsynced first), and fsyncs the
/// directory. The index is renamed last: readers find packs by their index.
/// Without `sync`, nothing is fsynced (a journal holds the bytes).
fn install(pack_dir: &Path, tmp_pack: &Path, index: &[u8], checksum: &[u8], sync: bool) -> Result<PathBuf, RepoError> {
    let name = format!("pack-{}", hex(checksum));
    let pack = pack_dir.join(format!("{name}.pack"));
    let idx = pack_dir.join(format!("{name}.idx"));
    fs::rename(tmp_pack, &pack).map_err(io_err(&pack))?;
    // The index is written and renamed as late as possible, and written
    // again if its temporary file vanished before the rename (a cleaner of
    // temporary files beside us): the pack is invisible until it is there.
    let mut attempts = 0;
    loop {
        let tmp_idx = write_tmp(pack_dir, "idx", index, sync)?;
        match fs::rename(&tmp_idx, &idx) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 2 => {
                attempts += 1;
                tracing::warn!(file = %tmp_idx.display(), "a temporary pack index vanished before its rename; writing it again");
            }
            Err(e) => {
                return Err(RepoError::Io {
                    path: tmp_idx.clone(),
                    source: std::io::Error::new(e.kind(), format!("renaming it to {}: {e}", idx.display())),
                });
            }
        }
    }
    if sync {
        sync_dir(pack_dir)?;
    }
    Ok(pack)
}

/// Writes `data` (unsynced) as `path`, through a temporary file in `dir`,
/// written again if it vanished before its rename (a cleaner of temporary
/// files beside us).
fn place(dir: &Path, data: &[u8], path: &Path) -> Result<(), RepoError> {
    let mut attempts = 0;
    loop {
        let tmp = write_tmp(dir, "pack", data, false)?;
        match fs::rename(&tmp, path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 2 => {
                attempts += 1;
                tracing::warn!(file = %tmp.display(), "a temporary pack file vanished before its rename; writing it again");
            }
            Err(e) => {
                return Err(RepoError::Io {
                    path: tmp,
                    source: std::io::Error::new(e.kind(), format!("renaming it to {}: {e}", path.display())),
                });
            }
        }
    }
}

/// Puts a whole pack (`pack`, ending in its checksum) and its index into
/// `pack_dir` durably: a pack a journal kept, written again after a crash.
pub(super) fn install_bytes(pack_dir: &Path, pack: &[u8], index: &[u8], checksum: &[u8]) -> Result<PathBuf, RepoError> {
    let tmp_pack = write_synced(pack_dir, "pack", pack)?;
    install(pack_dir, &tmp_pack, index, checksum, true)
}

/// `data` as a zlib stream of stored (uncompressed) blocks: no compression
/// work, only a checksum.
fn push_stored(out: &mut Vec<u8>, data: &[u8]) {
    out.reserve(data.len() + data.len() / 65_535 * 5 + 11);
    out.extend_from_slice(&[0x78, 0x01]);
    let mut blocks = data.chunks(0xffff).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&adler32(data).to_be_bytes());
}

/// zlib's checksum.
fn adler32(data: &[u8]) -> u32 {
    const MOD: u32 = 65_521;
    let (mut a, mut b) = (1u32, 0u32);
    // 5,552 bytes is the most that can be summed before `b` could overflow.
    for chunk in data.chunks(5_552) {
        for &byte in chunk {
            a += u32::from(byte);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

/// A delta's distance back to its base, as stored: 7 bits a byte, most
/// significant first, each continuation byte standing for one more than it
/// says.
pub fn encode_distance(mut distance: u64) -> Vec<u8> {
    let mut bytes = vec![(distance & 0x7f) as u8];
    distance >>= 7;
    while distance > 0 {
        distance -= 1;
        bytes.push(0x80 | (distance & 0x7f) as u8);
        distance >>= 7;
    }
    bytes.reverse();
    bytes
}

/// Type and size of an entry: 4 bits of size in the first byte after the
/// type, then 7 bits a byte.
/// An entry's type bits, size and header length (what [`push_header`]
/// writes).
fn parse_header(bytes: &[u8]) -> Option<(u8, usize, usize)> {
    let first = *bytes.first()?;
    let (type_bits, mut size) = ((first >> 4) & 7, usize::from(first & 0x0f));
    let (mut byte, mut at, mut shift) = (first, 1, 4);
    while byte & 0x80 != 0 {
        byte = *bytes.get(at)?;
        size |= usize::from(byte & 0x7f).checked_shl(shift)?;
        at += 1;
        shift += 7;
    }
    Some((type_bits, size, at))
}

fn push_header(out: &mut Vec<u8>, type_bits: u8, size: usize) {
    let mut size = size;
    let mut byte = (type_bits << 4) | (size & 0x0f) as u8;
    size >>= 4;
    while size > 0 {
        out.push(byte | 0x80);
        byte = (size & 0x7f) as u8;
        size >>= 7;
    }
    out.push(byte);
}

/// Folds packs written by [`PackBuilder::finish`] (oldest first) into one:
/// objects are copied as they are stored, except trees: a tree whose
/// previous version is in the fold becomes a delta, and the stored ones are
/// deflated. Groups rewrite the trees along every path they change, so most
/// of their bytes are trees that differ in a few entries from a tree of the
/// group before.
///
/// The versions of a tree in a fold are numbered from its first one (kept
/// whole); version `i` is a delta against version `i` with its lowest set
/// bit cleared (1, 2, 4 against 0; 3 against 2; 6 against 4; 7 against 6).
/// A version is then at most log2(i) deltas from a whole tree, so a fold
/// keeps one whole copy of each tree where a chain of deltas one after the
/// other kept one every [`MAX_DELTA_DEPTH`] (a flat directory of 57,000
/// keys is 25 MB of tree), for deltas that span a few versions each.
pub fn fold(packs: &[PackBuilder]) -> PackBuilder {
    /// A tree placed in the fold.
    struct Placed<'a> {
        offset: u64,
        content: &'a [u8],
        depth: u32,
        /// Its versions in the fold, and which one it is.
        line: usize,
        version: usize,
    }
    let mut out = PackBuilder::default();
    let mut trees: HashMap<ObjectId, Placed<'_>> = HashMap::new();
    let mut lines: Vec<Vec<ObjectId>> = Vec::new();
    for pack in packs {
        for e in &pack.entries {
            if out.ids.contains(&e.id) {
                continue;
            }
            let offset = out.data.len() as u64;
            let Some(t) = &e.tree else {
                out.add_copy(e.id, &pack.data[e.offset as usize..e.end as usize], e.crc);
                continue;
            };
            // The version before, and the one to delta against.
            let base = t.previous.and_then(|p| trees.get(&p)).and_then(|prev| {
                let version = prev.version + 1;
                let line = &lines[prev.line];
                // Another tree came from the same previous version: its
                // successors number from it.
                let base = match line.len() == version {
                    true => trees.get(&line[version & (version - 1)])?,
                    false => prev,
                };
                (base.depth < MAX_DELTA_DEPTH).then_some((base, prev.line, version, line.len() == version))
            });
            let delta = base.and_then(|(b, line, version, extends)| {
                let delta = delta::tree_delta(b.content, &t.content);
                (delta.len() < t.content.len() / 2).then_some((b.offset, b.depth, delta, line, version, extends))
            });
            let placed = match delta {
                Some((at, depth, delta, line, version, true)) => {
                    out.add_delta(e.id, at, &delta);
                    lines[line].push(e.id);
                    Placed {
                        offset,
                        content: &t.content,
                        depth: depth + 1,
                        line,
                        version,
                    }
                }
                Some((at, depth, delta, _, _, false)) => {
                    out.add_delta(e.id, at, &delta);
                    lines.push(vec![e.id]);
                    Placed {
                        offset,
                        content: &t.content,
                        depth: depth + 1,
                        line: lines.len() - 1,
                        version: 0,
                    }
                }
                None => {
                    if t.content.len() <= MAX_STORED_TREE {
                        out.add(e.id, Kind::Tree, &t.content);
                    } else {
                        out.add_copy(e.id, &pack.data[e.offset as usize..e.end as usize], e.crc);
                    }
                    lines.push(vec![e.id]);
                    Placed {
                        offset,
                        content: &t.content,
                        depth: 0,
                        line: lines.len() - 1,
                        version: 0,
                    }
                }
            };
            trees.insert(e.id, placed);
        }
    }
    out
}

fn sha1_of(data: &[u8]) -> [u8; 20] {
    <sha1::Sha1 as sha1::Digest>::digest(data).into()
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `data` to a new temporary file in `dir` and fsyncs it.
fn write_synced(dir: &Path, suffix: &str, data: &[u8]) -> Result<PathBuf, RepoError> {
    write_tmp(dir, suffix, data, true)
}

/// Writes `data` to a new temporary file in `dir`, fsynced if `sync`.
fn write_tmp(dir: &Path, suffix: &str, data: &[u8], sync: bool) -> Result<PathBuf, RepoError> {
    let tmp = dir.join(format!("tmp_{}.{suffix}", rand::random::<u64>()));
    let result = fs::File::create(&tmp).and_then(|f| {
        if sync {
            let mut f = PacedFile::new(f);
            f.write_all(data)?;
            f.into_inner().sync_all()
        } else {
            (&f).write_all(data)
        }
    });
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(RepoError::Io { path: tmp, source: e });
    }
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use gix::ObjectId;

    use super::super::git_cli::{cat_file, run};
    use super::super::{Kind, ObjectWriter, Repo};

    fn git(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
        let dir = dir.to_str().expect("test paths are UTF-8");
        Ok(String::from_utf8(run(&[&["--git-dir", dir], args].concat())?)?)
    }

    /// Packs that git itself verifies and reads, including objects larger
    /// than a deflate buffer and empty ones; a discarded group leaves nothing.
    #[test]
    fn git_reads_our_packs() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let repo = Repo::open_or_init(&dir.path().join("r"))?;
        let mut w = ObjectWriter::new(repo.git_dir(), super::super::Maintenance::Auto);
        let big: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let blobs: Vec<Vec<u8>> = vec![Vec::new(), b"hello\n".to_vec(), big, vec![b'a'; 100_000]];
        let mut ids = Vec::new();
        for b in &blobs {
            ids.push(w.write(Kind::Blob, b)?);
        }
        ids.push(w.write(Kind::Blob, b"hello\n")?);
        // Trees are stored without compression: an empty one, and one
        // larger than a stored block (64 KiB).
        let mut trees = vec![Vec::new(), Vec::new()];
        for i in 0..3_000 {
            trees[1].extend_from_slice(format!("100644 f{i:05}\0").as_bytes());
            trees[1].extend_from_slice(ids[1].as_bytes());
        }
        let tree_ids = trees
            .iter()
            .map(|t| w.write_tree(t.clone(), None))
            .collect::<Result<Vec<_>, _>>()?;
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
        assert!(verified.contains("non delta: 6 objects"), "{verified}");
        let objects = ids.iter().zip(&blobs).map(|(id, b)| (id, "blob", Kind::Blob, b));
        let objects = objects.chain(tree_ids.iter().zip(&trees).map(|(id, t)| (id, "tree", Kind::Tree, t)));
        for (id, name, kind, content) in objects {
            assert_eq!(&cat_file(repo.git_dir(), name, *id)?, content);
            assert_eq!(&repo.local().read(*id, kind)?, content);
        }
        git(repo.git_dir(), &["fsck", "--strict", "--no-dangling"])?;
        Ok(())
    }

    /// Journaled groups' packs wait in memory, readable through every handle
    /// of the repository and absent from the pack directory, until they are
    /// written out as one pack (each object once) that git verifies and
    /// reads. A crash before that recovers them from the journal; after it,
    /// recovery writes nothing again, unless that pack was torn.
    #[test]
    fn journaled_groups_wait_in_memory_and_are_written_out_as_one_pack() -> anyhow::Result<()> {
        use super::super::journal::{self, Journal};
        let dir = tempfile::tempdir()?;
        let repo = Repo::open_or_init(&dir.path().join("r"))?;
        let pack_dir = repo.git_dir().join("objects/pack");
        let path = journal::journal_path(repo.git_dir(), "refs/gitcd/metadata/refs/heads/main");
        let (mut j, _) = Journal::open(repo.git_dir(), &path)?;
        j.start(std::collections::BTreeMap::new())?;
        let mut w = ObjectWriter::new(repo.git_dir(), super::super::Maintenance::Off);
        w.attach_journal(j, repo.local().fresh());
        let mut objects = Vec::new();
        for g in 0..3u32 {
            // The same blob in every group; a small one stored, a large one
            // deflated, an empty one; a commit; a tree.
            let blobs = [
                b"in every group".to_vec(),
                format!("value {g}").repeat(g as usize * 300).into_bytes(),
                Vec::new(),
            ];
            for b in blobs {
                objects.push((w.write(Kind::Blob, &b)?, Kind::Blob, b));
            }
            let commit = format!("tree {}\n\ngroup {g}\n", ObjectId::empty_tree(gix::hash::Kind::Sha1)).into_bytes();
            objects.push((w.write(Kind::Commit, &commit)?, Kind::Commit, commit));
            let mut tree = format!("100644 f{g}\0").into_bytes();
            tree.extend_from_slice(objects[0].0.as_bytes());
            let tree_id = w.write_tree(tree.clone(), None)?;
            objects.push((tree_id, Kind::Tree, tree));
            w.sync()?;
            w.commit(&[("refs/heads/main", tree_id)])?;
        }
        let files = |d: &std::path::Path| -> std::io::Result<Vec<std::path::PathBuf>> {
            let mut v: Vec<_> = std::fs::read_dir(d)?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            v.sort();
            Ok(v)
        };
        assert!(
            !pack_dir.exists() || files(&pack_dir)?.is_empty(),
            "{:?}",
            files(&pack_dir)
        );
        let reader = repo.local();
        for (id, kind, content) in &objects {
            assert!(reader.has(*id));
            assert_eq!(&reader.read(*id, *kind)?, content, "{id} from memory");
        }
        let wrong = reader
            .read(objects[3].0, Kind::Blob)
            .expect_err("a commit is not a blob");
        assert!(wrong.to_string().contains("is a commit, expected a blob"), "{wrong}");

        let (_, recovered) = Journal::open(repo.git_dir(), &path)?;
        let recovered = recovered.ok_or_else(|| anyhow::anyhow!("records to recover"))?;
        assert_eq!(recovered.packs.len(), 3);
        let elsewhere = dir.path().join("elsewhere");
        let (written, _) = journal::restore_packs(&elsewhere, &recovered, &mut |_| None)?;
        assert_eq!(written, 3, "a crash now recovers the groups from the journal");

        w.write_out()?;
        let packs = files(&pack_dir)?;
        assert_eq!(packs.len(), 2, "one pack and its index: {packs:?}");
        let verified = git(repo.git_dir(), &["verify-pack", "-v", &packs[0].display().to_string()])?;
        let unique: std::collections::HashSet<_> = objects.iter().map(|o| o.0).collect();
        assert!(
            verified.contains(&format!("non delta: {} objects", unique.len())),
            "{verified}"
        );
        for (id, kind, content) in &objects {
            assert_eq!(&cat_file(repo.git_dir(), kind.name(), *id)?, content);
            assert_eq!(&reader.read(*id, *kind)?, content, "{id} from the pack");
        }
        drop(w);
        let (written, removed) = journal::restore_packs(&pack_dir, &recovered, &mut |_| None)?;
        assert_eq!(
            (written, removed),
            (0, 0),
            "the pack written out holds every group's objects"
        );
        let pack = packs
            .iter()
            .find(|p| p.extension().is_some_and(|e| e == "pack"))
            .expect("a pack");
        let bytes = std::fs::read(pack)?;
        std::fs::write(pack, &bytes[..bytes.len() - 1])?;
        let (written, removed) = journal::restore_packs(&pack_dir, &recovered, &mut |_| None)?;
        assert_eq!((written, removed), (3, 1), "a torn pack goes, and the groups come back");
        for (id, kind, content) in &objects {
            assert_eq!(&cat_file(repo.git_dir(), kind.name(), *id)?, content);
        }
        Ok(())
    }

    /// Group packs folded into one: each version of a growing tree but the
    /// first becomes a delta, at most log2 of its number deep, blobs are
    /// copied, and git reads every object back.
    #[test]
    fn folded_packs_store_trees_as_deltas() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let repo = Repo::open_or_init(&dir.path().join("r"))?;
        let pack_dir = repo.git_dir().join("objects/pack");
        std::fs::create_dir_all(&pack_dir)?;
        let mut groups = Vec::new();
        let mut objects = Vec::new();
        // A directory of 20 entries to begin with.
        let mut entries: Vec<u8> = Vec::new();
        for i in 0..20 {
            entries.extend_from_slice(format!("100644 a{i:02}\0").as_bytes());
            entries.extend_from_slice(&[i; 20]);
        }
        let mut previous = None;
        for g in 0..40u32 {
            let mut pack = super::PackBuilder::default();
            let blob = format!("value {g}\n").into_bytes();
            let blob_id = super::super::objects::object_id(Kind::Blob, &blob);
            pack.add(blob_id, Kind::Blob, &blob);
            objects.push((blob_id, "blob", blob));
            // One more entry per group, names in order.
            entries.extend_from_slice(format!("100644 k{g:04}\0").as_bytes());
            entries.extend_from_slice(blob_id.as_bytes());
            let tree_id = super::super::objects::object_id(Kind::Tree, &entries);
            pack.add_tree(tree_id, std::sync::Arc::new(entries.clone()), previous);
            objects.push((tree_id, "tree", entries.clone()));
            previous = Some(tree_id);
            let path = pack.finish(&pack_dir)?;
            groups.push((path, pack));
        }
        let (paths, packs): (Vec<_>, Vec<_>) = groups.into_iter().unzip();
        let mut folded = super::fold(&packs);
        let folded_path = folded.finish(&pack_dir)?;
        for p in paths {
            std::fs::remove_file(p.with_extension("idx"))?;
            std::fs::remove_file(p)?;
        }
        let verified = git(
            repo.git_dir(),
            &[
                "verify-pack",
                "-v",
                &folded_path.with_extension("idx").display().to_string(),
            ],
        )?;
        // 40 blobs and two whole trees: the first, and the 17th, whose delta
        // against the first (16 of its 36 entries new) is not worth it and
        // which starts the numbering again. Version i of a tree is as many
        // deltas from a whole one as i has bits set (at most 5 below 40).
        assert!(verified.contains("non delta: 42 objects"), "{verified}");
        assert!(verified.contains("chain length = 5: 1 object"), "{verified}");
        assert!(!verified.contains("chain length = 6"), "{verified}");
        for (id, kind, content) in &objects {
            assert_eq!(&cat_file(repo.git_dir(), kind, *id)?, content);
        }
        Ok(())
    }
}
