//! The write-ahead journal of a branch pair: what makes a group durable with
//! one `fdatasync` of one preallocated file, instead of an fsync per pack,
//! index, ref and directory.
//!
//! A group's pack and index are written into the pack directory and its refs
//! moved, all without fsync (readers see them at once); then one record
//! holding the pack's objects and the refs' new values is appended to the
//! journal and the journal alone is synced. A tree is recorded as a delta
//! against the tree it replaced when that one is durable already (a group
//! rewrites every tree on its paths, a few entries changed in each). Only then is the group
//! acknowledged.
//!
//! The journal is two files used in turn. When the one in use is full, the
//! next group goes to the other, after a first record naming the refs'
//! values, and a background thread fsyncs the packs the full one's records
//! hold, then marks it retired (a checkpoint off the writer's path). At
//! start and at a clean stop everything written is fsynced on the spot.
//!
//! After a crash, [`Journal::open`] hands back what the page cache may have
//! lost: the packs to write again and the refs' last durable values (see
//! docs/format.md, "Journal"). Groups whose packs are too large to be worth
//! writing twice are made durable the old way and journal only their refs.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gix::ObjectId;

use super::objects::{object_id, sync_all, sync_present};
use super::pack::{PackBuilder, Stored};
use super::{Kind, RepoError, delta, io_err};

/// Bytes each journal file is preallocated to (written with zeros once, so
/// that a sync writes data blocks only).
const PREALLOCATED: u64 = 32 << 20;
/// Length of the file in use after which the next group goes to the other.
const SWITCH_AT: u64 = 24 << 20;
/// Most bytes a record carries for one pack; a pack whose objects take more
/// is fsynced where it is.
pub const MAX_JOURNALED_PACK: usize = 8 << 20;
/// Most bytes of tree contents kept as delta bases; past it they are
/// dropped (the next version of each tree is then recorded whole).
const MAX_BASES: usize = 256 << 20;

const MAGIC: u32 = 0x6a63_6467; // "gdcj"
const RECORD_HEADER: usize = 12; // magic, payload length, CRC-32 of the payload
const CHECKPOINT: u8 = 0;
/// A checkpoint's flags: nothing follows it to recover (a clean stop, or a
/// file whose packs are all durable).
const CLEAN: u8 = 1;
/// A checkpoint's flags: this file's records follow those of the other file
/// (whose epoch is one less), which may not be durable yet.
const FOLLOWS: u8 = 2;
/// A group whose packs are recorded whole, pack and index bytes (written
/// before 2026-12-02; still read).
const GROUP_WHOLE: u8 = 1;
/// A group whose packs are recorded as their objects, trees as deltas.
const GROUP: u8 = 2;
/// How a recorded object is stored (see docs/format.md, "The journal").
const OBJECT_AS_STORED: u8 = 0;
const TREE_DELTA: u8 = 1;
const TREE_WHOLE: u8 = 2;

/// Where the journal of the branch pair `metadata_ref` lives: its first
/// file (the second is named by [`second_file`]).
pub fn journal_path(git_dir: &Path, metadata_ref: &str) -> PathBuf {
    let lock = super::lock::writer_lock_path(git_dir, metadata_ref);
    lock.with_extension("journal")
}

/// The second file of the journal whose first is `path` (`<path>.1`).
pub fn second_file(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// What a journal holds after a crash: the packs of the groups written since
/// the last checkpoint, and each ref's last durable value.
#[derive(Debug)]
pub struct Recovered {
    /// The packs, oldest first.
    pub packs: Vec<JournaledPack>,
    /// Each ref's value after the last durable record (`None`: absent).
    pub refs: BTreeMap<String, Option<ObjectId>>,
    /// Every value a ref had in the journal (its checkpoint and records).
    pub seen: BTreeMap<String, Vec<ObjectId>>,
    /// When the last checkpoint was made: packs written since then may be
    /// torn.
    pub since: SystemTime,
}

/// A pack as a record holds it.
#[derive(Debug, PartialEq, Eq)]
pub enum JournaledPack {
    /// The pack's bytes and its index.
    Whole {
        checksum: [u8; 20],
        pack: Vec<u8>,
        index: Vec<u8>,
    },
    /// The pack's objects, encoded by [`Journal::encode`]: rebuilding the
    /// pack needs the bases of its trees' deltas.
    Objects { checksum: [u8; 20], objects: Vec<u8> },
}

impl JournaledPack {
    /// The pack's checksum, which names it (`pack-<hex>.pack`).
    pub fn checksum(&self) -> &[u8; 20] {
        match self {
            JournaledPack::Whole { checksum, .. } | JournaledPack::Objects { checksum, .. } => checksum,
        }
    }
}

/// A pack's checksum, bytes and index.
pub(super) type SealedPack = ([u8; 20], Vec<u8>, Vec<u8>);

/// A tree of a pack added since the last record: (the tree it replaced, its
/// id, its content).
type NewTree = (Option<ObjectId>, ObjectId, Arc<Vec<u8>>);

/// One of the journal's two files.
#[derive(Clone)]
struct Slot {
    path: PathBuf,
    file: Arc<File>,
}

impl Slot {
    /// Opens (or creates and preallocates) the file at `path`, with the
    /// records of its current epoch and whether they say it holds nothing
    /// to recover.
    fn open(path: &Path) -> Result<(Self, Vec<Record>, bool), RepoError> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err(path))?;
        let (records, clean) = if existed {
            read_records(&file).map_err(io_err(path))?
        } else {
            (Vec::new(), true)
        };
        let len = file.metadata().map_err(io_err(path))?.len();
        if len < PREALLOCATED {
            // Zeros written, not fallocated: syncing into an unwritten
            // extent would write metadata too.
            let zeros = vec![0u8; 1 << 20];
            let mut at = len;
            while at < PREALLOCATED {
                file.write_all_at(&zeros, at).map_err(io_err(path))?;
                at += zeros.len() as u64;
            }
            file.sync_all().map_err(io_err(path))?;
            if let Some(dir) = path.parent() {
                super::objects::sync_dir(dir)?;
            }
        }
        let slot = Self {
            path: path.to_owned(),
            file: Arc::new(file),
        };
        Ok((slot, records, clean))
    }

    /// Writes `bytes` at `at` and syncs them.
    fn write_synced(&self, bytes: &[u8], at: u64) -> Result<(), RepoError> {
        self.file.write_all_at(bytes, at).map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))
    }

    /// Marks the file as holding nothing to recover: a clean checkpoint of
    /// an epoch of its own (the records left beyond it are then ignored).
    fn retire(&self) -> Result<(), RepoError> {
        let record = record(CHECKPOINT, CLEAN, rand::random(), &BTreeMap::new(), 0, &[]);
        self.write_synced(&record, 0)
    }
}

/// An open journal. The writer that holds the branch pair's lock is its only
/// user.
pub struct Journal {
    git_dir: PathBuf,
    slots: [Slot; 2],
    /// The slot records go to.
    current: usize,
    epoch: u64,
    /// Where the next record goes.
    end: u64,
    /// Length of the current slot past which the next group switches.
    switch_at: u64,
    /// Pack entries for the next record, encoded.
    pending: Vec<u8>,
    pending_packs: u16,
    /// Packs and indexes written since the current slot began (holding the
    /// objects of its records), to fsync before it is retired.
    unsynced: Vec<PathBuf>,
    /// Each ref's value as of the last record.
    refs: BTreeMap<String, Option<ObjectId>>,
    /// Durable trees (recorded by a synced record, or in a synced pack), by
    /// id: the bases of the next versions' deltas. The newest version of
    /// each tree replaces the one before.
    bases: HashMap<ObjectId, Arc<Vec<u8>>>,
    bases_bytes: usize,
    /// Trees of the packs added since the last record: bases once it is
    /// synced.
    pending_trees: Vec<NewTree>,
    /// The background checkpoint retiring the other slot.
    retiring: Option<JoinHandle<Result<(), RepoError>>>,
    /// Why a background checkpoint failed: every later group fails too,
    /// and the next start recovers from both slots.
    failed: Option<String>,
    /// The writer has not moved the refs on disk to the last record's
    /// values yet: a clean stop is refused (see [`Journal::refs_behind`]).
    refs_behind: bool,
}

impl Journal {
    /// Says whether the refs on disk are behind the records (the writer
    /// moves them less often than it records groups while writes queue).
    pub fn refs_behind(&mut self, behind: bool) {
        self.refs_behind = behind;
    }

    /// Opens (or creates) the journal whose first file is `path`, returning
    /// what it holds when the last user did not end with a clean
    /// checkpoint. The journal is then ready for [`Journal::start`].
    pub fn open(git_dir: &Path, path: &Path) -> Result<(Self, Option<Recovered>), RepoError> {
        let (first, first_records, first_clean) = Slot::open(path)?;
        let (second, second_records, second_clean) = Slot::open(&second_file(path))?;
        let recovered = recover_slots([(first_records, first_clean), (second_records, second_clean)]);
        Ok((
            Self {
                git_dir: git_dir.to_owned(),
                slots: [first, second],
                current: 0,
                // Random, so that no record left in a file from before
                // passes for one of the new epochs.
                epoch: rand::random(),
                end: 0,
                switch_at: SWITCH_AT,
                pending: Vec::new(),
                pending_packs: 0,
                unsynced: Vec::new(),
                refs: BTreeMap::new(),
                bases: HashMap::new(),
                bases_bytes: 0,
                pending_trees: Vec::new(),
                retiring: None,
                failed: None,
                refs_behind: false,
            },
            recovered,
        ))
    }

    /// Starts the current slot again from a checkpoint naming `refs` (the
    /// caller made everything before durable), `clean` when nothing will
    /// follow it.
    pub fn reset(&mut self, refs: BTreeMap<String, Option<ObjectId>>, clean: bool) -> Result<(), RepoError> {
        self.refs = refs;
        self.epoch = self.epoch.wrapping_add(1);
        self.unsynced.clear();
        self.discard();
        let record = self.record(CHECKPOINT, if clean { CLEAN } else { 0 }, &[]);
        self.slots[self.current].write_synced(&record, 0)?;
        self.end = record.len() as u64;
        Ok(())
    }

    /// Starts journaling on top of `refs`, the refs' current values: fsyncs
    /// their files and directories (a crash may have left them unsynced)
    /// and writes the first checkpoint.
    pub fn start(&mut self, refs: BTreeMap<String, Option<ObjectId>>) -> Result<(), RepoError> {
        self.refs = refs;
        self.checkpoint(false)
    }
    /// The objects of `pack` as a record holds them: blobs and commits as
    /// stored in the pack, trees as a delta against the tree they replaced
    /// when that one is durable or comes before in the same record and the
    /// delta is less than half the tree, else whole (see docs/format.md,
    /// "The journal").
    pub fn encode(&self, pack: &PackBuilder) -> Vec<u8> {
        // Trees of this record are rebuilt before the ones after them.
        let mut here: HashMap<ObjectId, &Arc<Vec<u8>>> = self
            .pending_trees
            .iter()
            .map(|(_, id, content)| (*id, content))
            .collect();
        let mut out = Vec::with_capacity(4 + pack.len() / 4);
        let mut count = 0u32;
        out.extend_from_slice(&[0; 4]);
        for entry in pack.stored() {
            count += 1;
            match entry {
                Stored::Object { id, crc, bytes } => {
                    out.push(OBJECT_AS_STORED);
                    out.extend_from_slice(id.as_bytes());
                    out.extend_from_slice(&crc.to_le_bytes());
                    push_part(&mut out, bytes);
                }
                Stored::Tree { id, previous, content } => {
                    let delta = previous
                        .and_then(|p| Some((p, self.bases.get(&p).or_else(|| here.get(&p).copied())?)))
                        .map(|(p, base)| (p, delta::tree_delta(base, content)))
                        .filter(|(_, d)| d.len() < content.len() / 2);
                    match delta {
                        Some((base, delta)) => {
                            out.push(TREE_DELTA);
                            out.extend_from_slice(id.as_bytes());
                            out.extend_from_slice(base.as_bytes());
                            push_part(&mut out, &delta);
                        }
                        None => {
                            out.push(TREE_WHOLE);
                            out.extend_from_slice(id.as_bytes());
                            push_part(&mut out, content);
                        }
                    }
                    here.insert(id, content);
                }
            }
        }
        out[..4].copy_from_slice(&count.to_le_bytes());
        out
    }

    /// Adds a group's pack named `checksum`, whose objects are `objects`
    /// ([`Journal::encode`]), to the next record. The pack need not be
    /// written yet; once it is (alone or with others), [`Journal::written`].
    pub fn add_pack(&mut self, checksum: &[u8; 20], objects: &[u8]) {
        self.pending.extend_from_slice(checksum);
        self.pending.extend_from_slice(&(objects.len() as u64).to_le_bytes());
        self.pending.extend_from_slice(objects);
        self.pending_packs += 1;
    }

    /// The pack at `pack` (and its index), written without fsync, holds
    /// objects of this slot's records (or of the next): it is fsynced
    /// before the slot is retired. Every pack a record names must be
    /// written before the record that switches slots (see
    /// [`Journal::switches_next`]).
    pub fn written(&mut self, pack: &Path) {
        self.unsynced.push(pack.to_owned());
        self.unsynced.push(pack.with_extension("idx"));
    }

    /// Whether the next record goes to the other slot (the current one is
    /// retired then).
    pub fn switches_next(&self) -> bool {
        self.end + self.pending.len() as u64 + 4096 > self.switch_at
    }

    /// Notes the trees of `pack` (journaled, or fsynced where it is): once
    /// the next record is synced they are durable, and bases.
    pub fn note_trees(&mut self, pack: &PackBuilder) {
        for entry in pack.stored() {
            if let Stored::Tree { id, previous, content } = entry {
                self.pending_trees.push((previous, id, content.clone()));
            }
        }
    }

    /// Forgets the packs added since the last record (a failed group: no
    /// ref points at them).
    pub fn discard(&mut self) {
        self.pending.clear();
        self.pending_packs = 0;
        self.pending_trees.clear();
    }

    /// The trees noted since the last record are durable: each becomes the
    /// base for its next version, in place of the tree it replaced.
    fn keep_bases(&mut self) {
        for (previous, id, content) in std::mem::take(&mut self.pending_trees) {
            if let Some(old) = previous.and_then(|p| self.bases.remove(&p)) {
                self.bases_bytes -= old.len();
            }
            self.bases_bytes += content.len();
            if let Some(old) = self.bases.insert(id, content) {
                self.bases_bytes -= old.len();
            }
        }
        if self.bases_bytes > MAX_BASES {
            self.bases.clear();
            self.bases_bytes = 0;
        }
    }

    /// Records that `refs` moved (after their transaction, unsynced), with
    /// the packs added since the last record, and syncs the journal: the
    /// group is durable when this returns. When the current slot is full,
    /// the record goes to the other one, after a checkpoint naming the
    /// refs' values before it, and the full slot is retired in the
    /// background.
    pub fn commit(&mut self, refs: &[(&str, ObjectId)]) -> Result<(), RepoError> {
        self.finish_retiring(false)?;
        // A record's refs and header take a few hundred bytes.
        let switch = self.switches_next();
        let packs = std::mem::take(&mut self.pending);
        let mut bytes = Vec::new();
        if switch {
            // Into the other slot once it is retired: nothing in it is
            // needed then.
            self.finish_retiring(true)?;
            self.current = 1 - self.current;
            self.epoch = self.epoch.wrapping_add(1);
            self.end = 0;
            bytes = self.record(CHECKPOINT, FOLLOWS, &[]);
        }
        for (name, id) in refs {
            self.refs.insert((*name).to_owned(), Some(*id));
        }
        bytes.extend(self.record(GROUP, 0, &packs));
        self.pending_packs = 0;
        let written = self.slots[self.current].write_synced(&bytes, self.end);
        if switch && let Err(e) = &written {
            // Neither slot can be trusted to follow the other now.
            self.failed = Some(crate::error::chain(e).to_string());
        }
        written?;
        self.end += bytes.len() as u64;
        self.keep_bases();
        if switch {
            let full = std::mem::take(&mut self.unsynced);
            self.retire_in_background(1 - self.current, full)?;
        }
        Ok(())
    }

    /// fsyncs the packs the records of slot `slot` hold, then retires it,
    /// on a thread of its own. The refs need no sync: the current slot's
    /// checkpoint names them.
    fn retire_in_background(&mut self, slot: usize, files: Vec<PathBuf>) -> Result<(), RepoError> {
        let git_dir = self.git_dir.clone();
        let full = self.slots[slot].clone();
        let spawned = std::thread::Builder::new()
            .name("journal-checkpoint".into())
            .spawn(move || {
                sync_with_dirs(&git_dir, files)?;
                full.retire()
            });
        match spawned {
            Ok(thread) => {
                self.retiring = Some(thread);
                Ok(())
            }
            Err(e) => {
                // The full slot is never retired: switching back into it
                // would lose what it holds.
                let e = io_err(&self.slots[slot].path)(e);
                self.failed = Some(crate::error::chain(&e).to_string());
                Err(e)
            }
        }
    }

    /// Collects the background checkpoint when it is over (or, with
    /// `wait`, once it is), and fails when one failed.
    fn finish_retiring(&mut self, wait: bool) -> Result<(), RepoError> {
        if let Some(thread) = self.retiring.take_if(|t| wait || t.is_finished()) {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.failed = Some(crate::error::chain(&e).to_string()),
                Err(_) => self.failed = Some("the checkpoint thread panicked".to_owned()),
            }
        }
        match &self.failed {
            None => Ok(()),
            Some(why) => Err(RepoError::Io {
                path: self.slots[1 - self.current].path.clone(),
                source: io::Error::other(format!(
                    "a checkpoint of the journal failed ({why}); writes stop until gitcd restarts and recovers from the journal"
                )),
            }),
        }
    }

    /// fsyncs every file the journal's records hold (packs, indexes, refs)
    /// and the directories that name them, then starts the current slot
    /// again and retires the other.
    pub fn checkpoint(&mut self, clean: bool) -> Result<(), RepoError> {
        self.finish_retiring(true)?;
        if clean && self.refs_behind {
            // The next start moves them from the records.
            return Err(RepoError::Io {
                path: self.slots[self.current].path.clone(),
                source: io::Error::other("the refs on disk are behind the journal"),
            });
        }
        let mut files = std::mem::take(&mut self.unsynced);
        for (name, id) in &self.refs {
            if id.is_some() {
                files.push(self.git_dir.join(name));
            }
        }
        sync_with_dirs(&self.git_dir, files)?;
        let refs = std::mem::take(&mut self.refs);
        self.reset(refs, clean)?;
        self.slots[1 - self.current].retire()
    }

    /// One record of this journal's epoch and refs.
    fn record(&self, kind: u8, flags: u8, packs: &[u8]) -> Vec<u8> {
        let count = if kind == CHECKPOINT { 0 } else { self.pending_packs };
        record(kind, flags, self.epoch, &self.refs, count, packs)
    }
}

impl Drop for Journal {
    /// A clean stop leaves a journal with nothing to recover.
    fn drop(&mut self) {
        if let Err(e) = self.checkpoint(true) {
            tracing::warn!(error = %crate::error::chain(&e), journal = %self.slots[self.current].path.display(), "cannot checkpoint the journal at stop; the next start recovers from it");
        }
    }
}

/// fsyncs `files` (skipping those gone: a group pack folded into another
/// meanwhile, whose objects are durable in the fold) and the directories
/// naming them, up to `git_dir`.
fn sync_with_dirs(git_dir: &Path, mut files: Vec<PathBuf>) -> Result<(), RepoError> {
    let mut dirs = std::collections::BTreeSet::new();
    for p in &files {
        let mut dir = p.parent();
        while let Some(d) = dir {
            if !d.starts_with(git_dir) {
                break;
            }
            dirs.insert(d.to_owned());
            if d == git_dir {
                break;
            }
            dir = d.parent();
        }
    }
    files.sort();
    files.dedup();
    sync_present(&files)?;
    sync_all(&dirs.into_iter().collect::<Vec<_>>())
}

/// One record: header, then kind, flags, epoch, time, refs, packs.
fn record(
    kind: u8,
    flags: u8,
    epoch: u64,
    refs: &BTreeMap<String, Option<ObjectId>>,
    pack_count: u16,
    packs: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER + 64 + packs.len());
    out.extend_from_slice(&[0; RECORD_HEADER]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&epoch.to_le_bytes());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    out.extend_from_slice(&nanos.to_le_bytes());
    out.extend_from_slice(&(refs.len() as u16).to_le_bytes());
    for (name, id) in refs {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(id.as_ref().map_or(&[0u8; 20][..], |id| id.as_bytes()));
    }
    out.extend_from_slice(&pack_count.to_le_bytes());
    out.extend_from_slice(packs);
    let payload = &out[RECORD_HEADER..];
    let (len, crc) = (payload.len() as u32, crc32fast::hash(payload));
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&len.to_le_bytes());
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    out
}

/// What the journal whose first file is `path` holds to recover (nothing
/// after a clean stop), without changing it.
pub fn read(path: &Path) -> Result<Option<Recovered>, RepoError> {
    let slot = |path: &Path| match File::open(path) {
        Ok(file) => read_records(&file).map_err(io_err(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((Vec::new(), true)),
        Err(e) => Err(io_err(path)(e)),
    };
    Ok(recover_slots([slot(path)?, slot(&second_file(path))?]))
}

/// What two slots' records (and whether each is clean) hold to recover:
/// the records of the slot not retired; of both, in order, when one
/// follows the other.
fn recover_slots(slots: [(Vec<Record>, bool); 2]) -> Option<Recovered> {
    let mut open: Vec<Vec<Record>> = slots
        .into_iter()
        .filter(|(records, clean)| !clean && !records.is_empty())
        .map(|(records, _)| records)
        .collect();
    let follows = |later: &[Record], earlier: &[Record]| {
        later[0].2.flags & FOLLOWS != 0 && later[0].0 == earlier[0].0.wrapping_add(1)
    };
    let records = match open.len() {
        0 => return None,
        1 => open.remove(0),
        _ => {
            let (mut a, mut b) = (open.remove(0), open.remove(0));
            if follows(&a, &b) {
                std::mem::swap(&mut a, &mut b);
            }
            if follows(&b, &a) {
                a.extend(b);
                a
            } else {
                // Unrelated (a start's checkpoint interrupted before it
                // retired the other): the newer says where the refs are.
                tracing::warn!("both journal files hold records, neither following the other; recovering the newer");
                if a[0].1 >= b[0].1 { a } else { b }
            }
        }
    };
    Some(recover(records))
}

/// A parsed record: epoch, time, and the rest of its payload.
type Record = (u64, SystemTime, Parsed);

struct Parsed {
    flags: u8,
    refs: Vec<(String, Option<ObjectId>)>,
    packs: Vec<JournaledPack>,
}

/// The records of the current epoch, in order, and whether the first (the
/// checkpoint) says the last user stopped cleanly with nothing after it.
fn read_records(file: &File) -> io::Result<(Vec<Record>, bool)> {
    let len = file.metadata()?.len();
    let mut records: Vec<Record> = Vec::new();
    let mut at = 0u64;
    let mut header = [0u8; RECORD_HEADER];
    while at + RECORD_HEADER as u64 <= len {
        file.read_exact_at(&mut header, at)?;
        let magic = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let size = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as u64;
        let crc = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        if magic != MAGIC || at + RECORD_HEADER as u64 + size > len {
            break;
        }
        let mut payload = vec![0u8; size as usize];
        file.read_exact_at(&mut payload, at + RECORD_HEADER as u64)?;
        if crc32fast::hash(&payload) != crc {
            break;
        }
        let Some((kind, epoch, time, parsed)) = parse(&payload) else {
            break;
        };
        // A record of an older epoch is what the last checkpoint left
        // beyond the records written since: the end.
        let first = records.first().map(|(e, _, _)| *e);
        if (records.is_empty() && kind != CHECKPOINT) || first.is_some_and(|e| e != epoch) {
            break;
        }
        records.push((epoch, time, parsed));
        at += RECORD_HEADER as u64 + size;
    }
    let clean = records.len() == 1 && records[0].2.flags & CLEAN != 0;
    Ok((records, clean))
}

fn parse(p: &[u8]) -> Option<(u8, u64, SystemTime, Parsed)> {
    let mut r = Reader(p);
    let kind = r.u8()?;
    let flags = r.u8()?;
    let epoch = r.u64()?;
    let time = UNIX_EPOCH + Duration::from_nanos(r.u64()?);
    let mut refs = Vec::new();
    for _ in 0..r.u16()? {
        let n = r.u16()? as usize;
        let name = String::from_utf8(r.take(n)?.to_vec()).ok()?;
        let id = r.take(20)?;
        let id = (id != [0u8; 20]).then(|| ObjectId::from_bytes_or_panic(id));
        refs.push((name, id));
    }
    let mut packs = Vec::new();
    for _ in 0..r.u16()? {
        let checksum: [u8; 20] = r.take(20)?.try_into().ok()?;
        let n = r.u64()? as usize;
        let bytes = r.take(n)?.to_vec();
        packs.push(match kind {
            GROUP_WHOLE => {
                let n = r.u64()? as usize;
                let index = r.take(n)?.to_vec();
                JournaledPack::Whole {
                    checksum,
                    pack: bytes,
                    index,
                }
            }
            _ => JournaledPack::Objects {
                checksum,
                objects: bytes,
            },
        });
    }
    Some((kind, epoch, time, Parsed { flags, refs, packs }))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes(b.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn id(&mut self) -> Option<ObjectId> {
        self.take(20).map(ObjectId::from_bytes_or_panic)
    }
    /// A part written by [`push_part`].
    fn part(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
}

fn recover(records: Vec<Record>) -> Recovered {
    let mut out = Recovered {
        packs: Vec::new(),
        refs: BTreeMap::new(),
        seen: BTreeMap::new(),
        since: records.first().map_or(UNIX_EPOCH, |(_, t, _)| *t),
    };
    for (_, _, parsed) in records {
        for (name, id) in parsed.refs {
            if let Some(id) = id {
                out.seen.entry(name.clone()).or_default().push(id);
            }
            out.refs.insert(name, id);
        }
        out.packs.extend(parsed.packs);
    }
    out
}

/// Puts the packs a crash may have lost back, and removes packs written
/// since the last checkpoint that are torn (their content is not what their
/// name says: written by a group that was never acknowledged). A recorded
/// tree delta's base comes from an earlier record or, when it was durable
/// before the checkpoint, from `read_tree` (the repository). Returns how
/// many packs it wrote and removed.
pub fn restore_packs(
    pack_dir: &Path,
    recovered: &Recovered,
    read_tree: &mut dyn FnMut(ObjectId) -> Option<Vec<u8>>,
) -> Result<(usize, usize), RepoError> {
    fs::create_dir_all(pack_dir).map_err(io_err(pack_dir))?;
    let unreadable = |checksum: &[u8; 20], reason: String| RepoError::Io {
        path: pack_dir.join(format!("pack-{}.pack", super::pack::hex(checksum))),
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot rebuild it from the journal: {reason}"),
        ),
    };
    let mut parsed = Vec::with_capacity(recovered.packs.len());
    for journaled in &recovered.packs {
        parsed.push(match journaled {
            JournaledPack::Whole { .. } => None,
            JournaledPack::Objects { checksum, objects } => {
                Some(parse_objects(objects).map_err(|reason| unreadable(checksum, reason))?)
            }
        });
    }
    // How many deltas each tree is the base of: a tree is kept, once
    // rebuilt or read, until the last of them (two directories that held
    // the same tree and changed apart have one base).
    let mut uses: HashMap<ObjectId, usize> = HashMap::new();
    for record in parsed.iter().flatten() {
        for object in record {
            if let Recorded::Delta { base, .. } = object {
                *uses.entry(*base).or_default() += 1;
            }
        }
    }
    let mut bases = Bases {
        trees: HashMap::new(),
        uses,
    };
    let mut groups: Vec<SealedPack> = Vec::new();
    for (journaled, record) in recovered.packs.iter().zip(&parsed) {
        match (journaled, record) {
            (JournaledPack::Objects { checksum, .. }, Some(record)) => {
                let built = rebuild(record, &mut bases, read_tree).map_err(|reason| unreadable(checksum, reason))?;
                // Zeros: a group's pack written out with others' (the
                // rebuilt one is named by its own checksum).
                if &built.0 != checksum && checksum != &[0; 20] {
                    // Deflate made other bytes (another version of it since
                    // the crash): the same objects, in a pack of another name.
                    tracing::warn!(recorded = %super::pack::hex(checksum), rebuilt = %super::pack::hex(&built.0), "a journaled pack rebuilds to other bytes; writing it under its new name");
                }
                groups.push(built);
            }
            (JournaledPack::Whole { checksum, pack, index }, _) => {
                groups.push((*checksum, pack.clone(), index.clone()))
            }
            (JournaledPack::Objects { .. }, None) => unreachable!("every record of objects is parsed"),
        }
    }
    let ours: std::collections::HashSet<String> = groups.iter().map(|(c, ..)| super::pack::hex(c)).collect();
    // Packs written since the checkpoint under other names: the torn ones
    // (a group never acknowledged) go; the objects of the sound ones are
    // written (groups' packs are written out several as one).
    let mut removed = 0;
    let mut present = std::collections::HashSet::new();
    let since = recovered.since - Duration::from_secs(2);
    for entry in fs::read_dir(pack_dir).map_err(io_err(pack_dir))?.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_prefix("pack-").and_then(|n| n.strip_suffix(".pack")) else {
            continue;
        };
        if ours.contains(stem) {
            continue;
        }
        let recent = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= since);
        if !recent {
            continue;
        }
        let idx = path.with_extension("idx");
        if !pack_is_sound(&path, stem).map_err(io_err(&path))? {
            tracing::warn!(pack = %path.display(), "removing a pack torn by a crash (a group never acknowledged)");
            let _ = fs::remove_file(&idx);
            fs::remove_file(&path).map_err(io_err(&path))?;
            removed += 1;
            continue;
        }
        let index = fs::read(&idx).map_err(io_err(&idx));
        if let Ok(entries) = index.and_then(|data| super::pack::parse_sound_index(&idx, &data)) {
            present.extend(entries.into_iter().map(|e| e.id));
        }
    }
    let mut written = 0;
    for (checksum, pack, index) in &groups {
        let name = format!("pack-{}", super::pack::hex(checksum));
        let pack_path = pack_dir.join(format!("{name}.pack"));
        let idx_path = pack_dir.join(format!("{name}.idx"));
        let intact = |path: &Path, want: &[u8]| fs::read(path).is_ok_and(|have| have == want);
        if intact(&pack_path, pack) && intact(&idx_path, index) {
            continue;
        }
        let ids = super::pack::parse_sound_index(&idx_path, index)?;
        if !ids.is_empty() && ids.iter().all(|e| present.contains(&e.id)) {
            continue;
        }
        super::pack::install_bytes(pack_dir, pack, index, checksum)?;
        written += 1;
    }
    if written + removed > 0 {
        super::objects::sync_dir(pack_dir)?;
    }
    Ok((written, removed))
}

/// One object of a record (see [`Journal::encode`]).
enum Recorded<'a> {
    /// As stored in the pack, with its CRC.
    AsStored { id: ObjectId, crc: u32, bytes: &'a [u8] },
    /// A tree's whole content.
    Whole { id: ObjectId, content: &'a [u8] },
    /// A tree as a delta against tree `base`.
    Delta {
        id: ObjectId,
        base: ObjectId,
        delta: &'a [u8],
    },
}

/// The objects of a record's pack, in pack order.
fn parse_objects(objects: &[u8]) -> Result<Vec<Recorded<'_>>, String> {
    let truncated = || "a truncated object".to_owned();
    let mut r = Reader(objects);
    let count = r.u32().ok_or_else(truncated)?;
    let mut out = Vec::with_capacity(count.min(1 << 20) as usize);
    for _ in 0..count {
        let tag = r.u8().ok_or_else(truncated)?;
        let id = r.id().ok_or_else(truncated)?;
        out.push(match tag {
            OBJECT_AS_STORED => Recorded::AsStored {
                id,
                crc: r.u32().ok_or_else(truncated)?,
                bytes: r.part().ok_or_else(truncated)?,
            },
            TREE_WHOLE => Recorded::Whole {
                id,
                content: r.part().ok_or_else(truncated)?,
            },
            TREE_DELTA => Recorded::Delta {
                id,
                base: r.id().ok_or_else(truncated)?,
                delta: r.part().ok_or_else(truncated)?,
            },
            other => return Err(format!("unknown object tag {other}")),
        });
    }
    Ok(out)
}

/// The trees recovery keeps as bases of the deltas still to apply.
struct Bases {
    trees: HashMap<ObjectId, Arc<Vec<u8>>>,
    /// Deltas not applied yet, by base.
    uses: HashMap<ObjectId, usize>,
}

impl Bases {
    /// Keeps `content` of tree `id` if a delta still to apply needs it.
    fn keep(&mut self, id: ObjectId, content: &Arc<Vec<u8>>) {
        if self.uses.get(&id).is_some_and(|&n| n > 0) {
            self.trees.insert(id, content.clone());
        }
    }

    /// Tree `id` for one delta: kept, else from `read_tree`; dropped after
    /// its last delta.
    fn take(&mut self, id: ObjectId, read_tree: &mut dyn FnMut(ObjectId) -> Option<Vec<u8>>) -> Option<Arc<Vec<u8>>> {
        let content = match self.trees.get(&id) {
            Some(content) => content.clone(),
            None => Arc::new(read_tree(id)?),
        };
        let left = self.uses.entry(id).or_default();
        *left = left.saturating_sub(1);
        if *left == 0 {
            self.trees.remove(&id);
        } else {
            self.trees.insert(id, content.clone());
        }
        Some(content)
    }
}

/// The pack whose objects a record holds (`record`, see
/// [`parse_objects`]): its checksum, bytes and index, the same bytes as the
/// pack written then. A delta's base comes from `bases` or `read_tree`.
fn rebuild(
    record: &[Recorded<'_>],
    bases: &mut Bases,
    read_tree: &mut dyn FnMut(ObjectId) -> Option<Vec<u8>>,
) -> Result<SealedPack, String> {
    let mut pack = PackBuilder::default();
    for object in record {
        let (id, content) = match *object {
            Recorded::AsStored { id, crc, bytes } => {
                pack.add_copy(id, bytes, crc);
                continue;
            }
            Recorded::Whole { id, content } => (id, content.to_vec()),
            Recorded::Delta { id, base, delta } => {
                let base = bases
                    .take(base, read_tree)
                    .ok_or_else(|| format!("the base {base} of tree {id} is missing"))?;
                (
                    id,
                    delta::apply(&base, delta).ok_or_else(|| format!("the delta of tree {id} does not apply"))?,
                )
            }
        };
        if object_id(Kind::Tree, &content) != id {
            return Err(format!("tree {id} rebuilds to other content"));
        }
        let content = Arc::new(content);
        bases.keep(id, &content);
        pack.add_tree(id, content, None);
    }
    Ok(pack.sealed())
}

/// Appends `bytes` with its length (u32) before it.
fn push_part(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("a journaled object is smaller than 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Whether the pack at `path` ends in the SHA-1 of what comes before, and is
/// named by it (`stem`): read in pieces, since a consolidated pack can be
/// large.
fn pack_is_sound(path: &Path, stem: &str) -> io::Result<bool> {
    use std::io::Read as _;
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len < 32 {
        return Ok(false);
    }
    let mut hasher = <sha1::Sha1 as sha1::Digest>::new();
    let mut left = len - 20;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (left as usize).min(buf.len());
        file.read_exact(&mut buf[..n])?;
        sha1::Digest::update(&mut hasher, &buf[..n]);
        left -= n as u64;
    }
    let mut trailer = [0u8; 20];
    file.read_exact(&mut trailer)?;
    let sum: [u8; 20] = sha1::Digest::finalize(hasher).into();
    Ok(sum == trailer && super::pack::hex(&sum) == stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[n; 20])
    }

    #[test]
    fn records_survive_a_crash_and_a_clean_stop_leaves_nothing() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = journal_path(dir.path(), "refs/gitcd/metadata/refs/heads/main");
        let (mut j, rec) = Journal::open(dir.path(), &path)?;
        assert!(rec.is_none());
        j.reset(BTreeMap::from([("refs/heads/main".to_owned(), Some(id(1)))]), false)?;
        j.add_pack(&[7; 20], b"objects");
        j.written(&dir.path().join("p.pack"));
        j.commit(&[("refs/heads/main", id(2)), ("refs/gitcd/m", id(3))])?;
        j.commit(&[("refs/heads/main", id(4))])?;
        // A crash: the journal is not checkpointed.
        std::mem::forget(j);
        let (j, rec) = Journal::open(dir.path(), &path)?;
        let rec = rec.ok_or("records to recover")?;
        assert_eq!(rec.refs["refs/heads/main"], Some(id(4)));
        assert_eq!(rec.refs["refs/gitcd/m"], Some(id(3)));
        assert_eq!(rec.seen["refs/heads/main"], vec![id(1), id(2), id(4)]);
        assert_eq!(rec.packs.len(), 1);
        assert_eq!(
            rec.packs[0],
            JournaledPack::Objects {
                checksum: [7; 20],
                objects: b"objects".to_vec()
            }
        );
        drop(j);
        let (_j, rec) = Journal::open(dir.path(), &path)?;
        assert!(rec.is_none(), "a clean stop leaves nothing to recover");
        Ok(())
    }

    #[test]
    fn a_torn_record_ends_the_journal_and_older_epochs_are_ignored() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = journal_path(dir.path(), "refs/gitcd/metadata/refs/heads/main");
        let (mut j, _) = Journal::open(dir.path(), &path)?;
        j.reset(BTreeMap::new(), false)?;
        for n in 1..=3 {
            j.commit(&[("refs/heads/main", id(n))])?;
        }
        // A new epoch with one record: the old epoch's records lie beyond.
        j.reset(BTreeMap::from([("refs/heads/main".to_owned(), Some(id(3)))]), false)?;
        j.commit(&[("refs/heads/main", id(9))])?;
        let end = j.end;
        j.commit(&[("refs/heads/main", id(10))])?;
        std::mem::forget(j);
        // Tear the last record.
        let f = OpenOptions::new().write(true).open(&path)?;
        f.write_all_at(&[0xff; 4], end + 20)?;
        let (_j, rec) = Journal::open(dir.path(), &path)?;
        let rec = rec.ok_or("records to recover")?;
        assert_eq!(rec.refs["refs/heads/main"], Some(id(9)));
        assert_eq!(rec.seen["refs/heads/main"], vec![id(3), id(9)]);
        Ok(())
    }

    /// A tree of `n` entries named `e<i>`, entry `changed` pointing at `id`.
    fn tree(n: usize, changed: usize, id: u8) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            out.extend_from_slice(format!("100644 e{i:05}\0").as_bytes());
            out.extend_from_slice(&[if i == changed { id } else { 1 }; 20]);
        }
        out
    }

    /// Groups whose trees (deflated in their packs: over 1 MiB) replace
    /// trees durable before: the record holds
    /// deltas, far smaller than the packs, and a recovery into an empty
    /// pack directory writes the very packs again (bases from earlier
    /// records, and from the repository for a tree no record holds); an old
    /// record holding whole packs is still read.
    #[test]
    fn trees_are_recorded_as_deltas_and_rebuild_the_same_packs() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = journal_path(dir.path(), "refs/gitcd/metadata/refs/heads/main");
        let pack_dir = dir.path().join("pack");
        fs::create_dir_all(&pack_dir)?;
        let (mut j, _) = Journal::open(dir.path(), &path)?;
        j.reset(BTreeMap::new(), false)?;
        // The first version, in a pack fsynced where it is (too large for a
        // record): only `read_tree` below, the repository, knows it.
        let first = Arc::new(tree(40_000, 0, 1));
        let first_id = object_id(Kind::Tree, &first);
        let mut before = PackBuilder::default();
        before.add_tree(first_id, first.clone(), None);
        j.note_trees(&before);
        j.commit(&[])?;
        let mut packs = Vec::new();
        let mut previous = first_id;
        for g in 2..6u8 {
            let mut pack = PackBuilder::default();
            let blob = format!("value {g}").repeat(100);
            let blob_id = object_id(Kind::Blob, blob.as_bytes());
            pack.add(blob_id, Kind::Blob, blob.as_bytes());
            let content = Arc::new(tree(40_000, usize::from(g) * 300, g));
            let tree_id = object_id(Kind::Tree, &content);
            pack.add_tree(tree_id, content, Some(previous));
            previous = tree_id;
            let objects = j.encode(&pack);
            assert!(
                objects.len() * 10 < pack.len(),
                "{} bytes recorded for a {} byte pack",
                objects.len(),
                pack.len()
            );
            j.note_trees(&pack);
            let (checksum, bytes, index) = pack.sealed();
            j.add_pack(&checksum, &objects);
            j.commit(&[("refs/heads/main", id(g))])?;
            packs.push((checksum, bytes, index));
        }
        // And a record as gitcd wrote them before: the whole pack.
        let (old_checksum, old_pack, old_index) = {
            let mut p = PackBuilder::default();
            p.add(id(9), Kind::Blob, b"an old record's blob");
            p.sealed()
        };
        j.pending.extend_from_slice(&old_checksum);
        for part in [&old_pack, &old_index] {
            j.pending.extend_from_slice(&(part.len() as u64).to_le_bytes());
            j.pending.extend_from_slice(part);
        }
        j.pending_packs = 1;
        let whole = std::mem::take(&mut j.pending);
        let record = j.record(GROUP_WHOLE, 0, &whole);
        j.slots[j.current].file.write_all_at(&record, j.end)?;
        std::mem::forget(j);

        let rec = read(&path)?.ok_or("records to recover")?;
        assert_eq!(rec.packs.len(), 5);
        let mut asked = Vec::new();
        let mut read_tree = |want: ObjectId| {
            asked.push(want);
            (want == first_id).then(|| first.to_vec())
        };
        let (written, removed) = restore_packs(&pack_dir, &rec, &mut read_tree)?;
        assert_eq!((written, removed), (5, 0));
        assert_eq!(asked, vec![first_id], "only the tree of before the checkpoint is read");
        packs.push((old_checksum, old_pack, old_index));
        for (checksum, bytes, index) in &packs {
            let name = format!("pack-{}", super::super::pack::hex(checksum));
            assert_eq!(&fs::read(pack_dir.join(format!("{name}.pack")))?, bytes);
            assert_eq!(&fs::read(pack_dir.join(format!("{name}.idx")))?, index);
        }
        Ok(())
    }

    /// Two directories that held the same tree (the same keys and values)
    /// change apart in one group: both new trees are deltas against that
    /// one tree, which no pack on disk holds yet (its pack waits in memory
    /// for the refs to move). Recovery rebuilds both from the one base.
    #[test]
    fn a_tree_that_is_the_base_of_two_deltas_rebuilds_both() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = journal_path(dir.path(), "refs/gitcd/metadata/refs/heads/main");
        let pack_dir = dir.path().join("pack");
        let (mut j, _) = Journal::open(dir.path(), &path)?;
        j.reset(BTreeMap::new(), false)?;
        let record = |j: &mut Journal, trees: Vec<(Vec<u8>, Option<ObjectId>)>, n: u8| {
            let mut pack = PackBuilder::default();
            let ids: Vec<ObjectId> = trees
                .into_iter()
                .map(|(content, previous)| {
                    let id = object_id(Kind::Tree, &content);
                    pack.add_tree(id, Arc::new(content), previous);
                    id
                })
                .collect();
            let objects = j.encode(&pack);
            j.note_trees(&pack);
            let sealed = pack.sealed();
            j.add_pack(&sealed.0, &objects);
            j.commit(&[("refs/heads/main", id(n))]).map(|()| (ids, objects, sealed))
        };
        let (shared, ..) = record(&mut j, vec![(tree(2_000, 0, 1), None)], 1)?;
        let (_, objects, second) = record(
            &mut j,
            vec![
                (tree(2_000, 5, 2), Some(shared[0])),
                (tree(2_000, 9, 3), Some(shared[0])),
            ],
            2,
        )?;
        let deltas = parse_objects(&objects)?
            .iter()
            .filter(|o| matches!(o, Recorded::Delta { base, .. } if *base == shared[0]))
            .count();
        assert_eq!(deltas, 2, "both trees are recorded as deltas against the one tree");
        std::mem::forget(j);

        let rec = read(&path)?.ok_or("records to recover")?;
        let (written, removed) = restore_packs(&pack_dir, &rec, &mut |_| None)?;
        assert_eq!((written, removed), (2, 0));
        let name = format!("pack-{}", super::super::pack::hex(&second.0));
        assert_eq!(fs::read(pack_dir.join(format!("{name}.pack")))?, second.1);
        Ok(())
    }

    /// Commits groups of one pack of `size` bytes each, main moving to
    /// `id(n)` for n in `ids`; returns the group that switched slots, if one
    /// did, and the full slot's bytes before it.
    fn groups(j: &mut Journal, ids: std::ops::RangeInclusive<u8>, size: usize) -> io::Result<Option<(u8, Vec<u8>)>> {
        let mut before_switch = None;
        for n in ids {
            let slot = j.current;
            let bytes = fs::read(&j.slots[slot].path)?;
            let pack = j.git_dir.join(format!("objects/pack/pack-{n}.pack"));
            j.add_pack(&[n; 20], &vec![n; size]);
            j.written(&pack);
            j.commit(&[("refs/heads/main", id(n))]).map_err(io::Error::other)?;
            if j.current != slot {
                before_switch = Some((n, bytes));
            }
        }
        Ok(before_switch)
    }

    /// A full file hands over to the other: the next group goes there after
    /// a checkpoint naming the refs, and the full one is retired in the
    /// background once its packs are fsynced. A crash before that recovers
    /// both in order; after it, the new one alone; a clean stop, nothing.
    #[test]
    fn a_full_file_hands_over_to_the_other_and_is_retired_behind() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        fs::create_dir_all(dir.path().join("objects/pack"))?;
        fs::write(dir.path().join("objects/pack/pack-2.pack"), b"a pack written unsynced")?;
        let path = journal_path(dir.path(), "refs/gitcd/metadata/refs/heads/main");
        let (mut j, _) = Journal::open(dir.path(), &path)?;
        j.switch_at = 20 << 10;
        j.reset(BTreeMap::from([("refs/heads/main".to_owned(), Some(id(1)))]), false)?;
        let (switched, full) = groups(&mut j, 2..=6, 5000)?.ok_or("a switch after 20 KiB")?;
        assert_eq!(
            (j.current, switched),
            (1, 5),
            "three records and a fourth's 5000 bytes fill 20 KiB"
        );
        j.finish_retiring(true)?;
        let ids = |rec: &Recovered| rec.packs.iter().map(|p| p.checksum()[0]).collect::<Vec<_>>();

        let rec = read(&path)?.ok_or("the new file's records")?;
        assert_eq!(ids(&rec), vec![5, 6], "the retired file's packs are durable");
        assert_eq!(rec.refs["refs/heads/main"], Some(id(6)));
        // The new file's checkpoint names main's value before it.
        assert_eq!(rec.seen["refs/heads/main"], [4, 5, 6].map(id));

        // A crash before the background checkpoint was over.
        fs::write(&path, &full)?;
        std::mem::forget(j);
        let rec = read(&path)?.ok_or("both files' records")?;
        assert_eq!(ids(&rec), vec![2, 3, 4, 5, 6]);
        assert_eq!(rec.seen["refs/heads/main"], [1, 2, 3, 4, 4, 5, 6].map(id));
        assert_eq!(rec.refs["refs/heads/main"], Some(id(6)));

        let (j, again) = Journal::open(dir.path(), &path)?;
        assert_eq!(
            again.map(|r| ids(&r)),
            Some(vec![2, 3, 4, 5, 6]),
            "opening changes nothing"
        );
        drop(j);
        assert!(read(&path)?.is_none(), "a clean stop leaves nothing to recover");
        Ok(())
    }

    /// A background checkpoint that cannot fsync a pack stops every later
    /// group, and leaves both files for the next start to recover.
    #[test]
    fn a_failed_background_checkpoint_stops_writes() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        // `objects` is a file: opening a pack below it fails.
        fs::write(dir.path().join("objects"), b"")?;
        let path = journal_path(dir.path(), "refs/gitcd/metadata/refs/heads/main");
        let (mut j, _) = Journal::open(dir.path(), &path)?;
        j.switch_at = 16 << 10;
        j.reset(BTreeMap::new(), false)?;
        let (switched, _) = groups(&mut j, 1..=3, 5000)?.ok_or("a switch")?;
        assert_eq!(switched, 3);
        let e = j.finish_retiring(true).err().ok_or("the checkpoint fails")?;
        let text = crate::error::chain(&e).to_string();
        assert!(
            text.contains("writes stop until gitcd restarts and recovers from the journal"),
            "{text}"
        );
        assert!(text.contains("objects/pack/pack-1."), "{text}");
        assert!(j.commit(&[("refs/heads/main", id(9))]).is_err());
        drop(j);
        let rec = read(&path)?.ok_or("records to recover")?;
        assert_eq!(rec.packs.len(), 3);
        assert_eq!(rec.refs["refs/heads/main"], Some(id(3)));
        Ok(())
    }
}
