//! Who keeps a repository's packs few and compact, and how.
//!
//! Each write group's pack is written durably by [`Packs::write`]. The one
//! process that owns the repository's pack maintenance (the holder of
//! `gitcd/maintenance.lock` in the Git directory, see [`Maintenance`]) runs a
//! background thread that folds every [`FOLD_AFTER`] of its own group packs
//! into one pack whose trees are deltas against their previous versions
//! ([`pack::fold`]), and consolidates packs in tiers of size (eight packs of
//! one tier become one of the next) so that their number stays logarithmic
//! in the repository's size while each byte is copied only a few times. A
//! consolidation copies entries as they are stored: no inflating, no delta
//! search, no walk of history.
//!
//! What it leaves alone: packs with a `.keep` (Git's protocol for a pack whose
//! refs are not updated yet: `git receive-pack` and `git fetch` write one
//! while they work) or `.promisor` file, packs without an index (not
//! complete), every pack while a `multi-pack-index` exists, and everything
//! while `git gc` runs (its `gc.pid`). Readers (gix, git) re-read the pack
//! directory on a miss and retry when a pack they knew has gone, so packs can
//! be replaced under them. A pack is deleted only after the pack that holds
//! its objects is durable.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::fresh::Fresh;
use super::journal::{Journal, MAX_JOURNALED_PACK};
use super::lock::{OwnerLock, maintenance_lock_path};
use super::pack::{self, OFS_DELTA, PackBuilder, PackWriter};
use super::{RepoError, io_err};

/// Whether a process may maintain the packs of the repository it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Maintenance {
    /// Maintain them if no other process does (the first to take the lock).
    #[default]
    Auto,
    /// Never: someone else does (`git gc`, `git maintenance`, a person).
    Off,
}

/// A pack of groups written: its path, its contents for folding, and how
/// many groups it holds (several when written out together, see
/// [`Packs::write_out`]).
type Written = (PathBuf, PackBuilder, usize);

/// What the folder thread is told.
enum ToFolder {
    Written(Box<Written>),
    /// Fold what waits and consolidate every pack into one now (etcd's
    /// Defragment); the answer goes back on the channel.
    ConsolidateAll(std::sync::mpsc::Sender<Result<(), RepoError>>),
}

/// Asks the repository's pack maintainer (this process, when it holds the
/// maintenance lock) for work. Holding one does not keep the folder alive:
/// it ends when its [`Packs`] is dropped.
#[derive(Clone)]
pub struct MaintenanceHandle {
    to_folder: Arc<Mutex<Option<Sender<ToFolder>>>>,
}

impl MaintenanceHandle {
    /// Folds the waiting group packs and consolidates every pack the
    /// maintainer may touch into one, then answers; blocking. `Ok(false)`
    /// when this process does not maintain the packs (or has stopped).
    pub fn consolidate_all(&self) -> Result<bool, RepoError> {
        let (reply, answer) = std::sync::mpsc::channel();
        let sent = self
            .to_folder
            .lock()
            .expect("folder channel lock is never poisoned")
            .as_ref()
            .is_some_and(|tx| tx.send(ToFolder::ConsolidateAll(reply)).is_ok());
        if !sent {
            return Ok(false);
        }
        match answer.recv() {
            Ok(result) => result.map(|()| true),
            Err(_) => Ok(false),
        }
    }
}

/// How many groups' packs are folded into one.
pub const FOLD_AFTER: usize = 128;
/// Bytes of group packs (and their trees) held for folding at most: large
/// flat directories make large trees (25 MB for 57,000 keys in one), and
/// each fold keeps one whole copy of each; at 64 MiB a fold of such groups
/// held a few of them, and their whole trees were most of the repository.
const FOLD_MEMORY: usize = 256 << 20;
/// Bytes of group packs written and waiting for the folder at most; the
/// writer waits beyond (backpressure). A fold takes a fraction of a second,
/// and the groups written meanwhile must not make the writer wait.
const FOLD_QUEUE_MEMORY: usize = 64 << 20;
/// Packs of one size tier that are consolidated together, and the ratio of
/// one tier's sizes to the next: tier 0 holds packs under [`TIER_BASE`],
/// tier 1 up to 8 times that, and so on. Each byte is copied about once per
/// tier it climbs (log8 of the repository's size in folds; `git repack
/// --geometric=2` copies it about three times as often), and a tier never
/// holds more than 7 packs for long.
const TIER_PACKS: usize = 8;
const TIER_BASE: u64 = 1 << 20;
/// Consolidations run only on a core nothing else wants (`SCHED_IDLE`):
/// they are never urgent, and on a busy machine they took a core from the
/// writer in bursts (a quarter of gitcd's CPU late in a W1 run, copying
/// hundreds of MB). Past this many packs (a machine busy for long) they run
/// at normal priority again, so that readers never search many packs.
const URGENT_PACKS: usize = 4 * TIER_PACKS;
/// How often an idle maintainer looks at the pack directory (others' packs:
/// a fetch, a push, a gitcd that does not maintain).
const IDLE_LOOK: Duration = Duration::from_secs(30);
/// A `gc.pid` older than this is left by a `git gc` that died (git's rule).
const GC_PID_STALE: Duration = Duration::from_secs(12 * 3600);

/// What maintenance did: folds and consolidations made.
#[derive(Clone, Debug)]
pub struct Counters {
    pub folds: prometheus::IntCounter,
    pub consolidations: prometheus::IntCounter,
}

impl Default for Counters {
    fn default() -> Self {
        let counter = |name: &str, help: &str| prometheus::IntCounter::new(name, help).expect("a valid metric name");
        Self {
            folds: counter(
                "gitcd_pack_folds_total",
                "Group packs folded into one, with tree deltas.",
            ),
            consolidations: counter(
                "gitcd_pack_consolidations_total",
                "Consolidations of packs (a size tier's packs into one).",
            ),
        }
    }
}

/// The packs this process writes, and (if it owns maintenance) the thread
/// that folds and consolidates them.
pub struct Packs {
    pack_dir: PathBuf,
    /// Told of each pack written, before the write is acknowledged.
    usage: Option<Arc<super::usage::DiskUsage>>,
    bytes_written: AtomicU64,
    counters: Counters,
    /// Group packs written and not folded yet: consolidations leave them alone.
    unfolded: Arc<Mutex<HashSet<PathBuf>>>,
    /// Bytes sent to the folder and not yet taken.
    queued: Arc<AtomicUsize>,
    /// The folder's channel, shared with [`MaintenanceHandle`]s; taken on
    /// drop, so that the folder ends.
    to_folder: Arc<Mutex<Option<Sender<ToFolder>>>>,
    folder: Option<std::thread::JoinHandle<()>>,
}

impl Packs {
    pub(super) fn new(git_dir: &Path, maintenance: Maintenance) -> Self {
        let pack_dir = git_dir.join("objects").join("pack");
        let unfolded = Arc::new(Mutex::new(HashSet::new()));
        let queued = Arc::new(AtomicUsize::new(0));
        let lock = match maintenance {
            Maintenance::Off => None,
            Maintenance::Auto => match OwnerLock::try_take(&maintenance_lock_path(git_dir), "maintains packs") {
                Ok(Ok(lock)) => Some(lock),
                Ok(Err(holder)) => {
                    tracing::info!(%holder, "another process maintains this repository's packs");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "cannot take the pack maintenance lock; packs are not maintained");
                    None
                }
            },
        };
        let counters = Counters::default();
        let to_folder = Arc::new(Mutex::new(None));
        let folder = lock.and_then(|lock| {
            let (tx, written) = std::sync::mpsc::channel();
            let (pack_dir, unfolded, queued) = (pack_dir.clone(), unfolded.clone(), queued.clone());
            let counters = counters.clone();
            let spawned = std::thread::Builder::new()
                .name("gitcd-fold".into())
                .spawn(move || Folder::new(pack_dir, unfolded, lock, counters).run(written, &queued));
            match spawned {
                Ok(thread) => {
                    *to_folder.lock().expect("folder channel lock is never poisoned") = Some(tx);
                    Some(thread)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the thread that folds packs; packs accumulate");
                    None
                }
            }
        });
        Self {
            pack_dir,
            usage: None,
            bytes_written: AtomicU64::new(0),
            counters,
            unfolded,
            queued,
            to_folder,
            folder,
        }
    }

    /// A handle that asks this process's folder for work.
    pub fn handle(&self) -> MaintenanceHandle {
        MaintenanceHandle {
            to_folder: self.to_folder.clone(),
        }
    }

    /// Total bytes of pack data written by [`Packs::write`].
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// What maintenance did.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Whether this process maintains the repository's packs.
    pub fn maintains(&self) -> bool {
        self.folder.is_some()
    }

    /// Counts every pack written from now on in `usage`.
    pub fn count_in(&mut self, usage: Arc<super::usage::DiskUsage>) {
        self.usage = Some(usage);
    }

    /// Writes `pack`; its objects are then visible to readers. With a
    /// journal, the pack is added to the journal's next record and held in
    /// `fresh` (readable there) until [`Packs::write_out`]; without, it is
    /// durable when this returns.
    pub fn write(&self, mut pack: PackBuilder, journal: Option<(&mut Journal, &Fresh)>) -> Result<(), RepoError> {
        if pack.is_empty() {
            return Ok(());
        }
        fs::create_dir_all(&self.pack_dir).map_err(io_err(&self.pack_dir))?;
        let path = match journal {
            Some((journal, fresh)) => {
                // A pack whose objects would make a large record is not
                // worth writing twice: it is fsynced where it is.
                let objects = journal.encode(&pack);
                journal.note_trees(&pack);
                if objects.len() <= MAX_JOURNALED_PACK {
                    // Never written under its own name: no checksum (zeros).
                    journal.add_pack(&[0; 20], &objects);
                    fresh.add(pack);
                    return Ok(());
                }
                pack.finish(&self.pack_dir)?
            }
            None => pack.finish(&self.pack_dir)?,
        };
        self.written(path, pack, 1);
        Ok(())
    }

    /// Writes the packs `fresh` holds into the pack directory as one pack,
    /// without fsync (the journal's records hold their objects; the journal
    /// fsyncs the file before it retires them).
    pub fn write_out(&self, journal: &mut Journal, fresh: &Fresh) -> Result<(), RepoError> {
        let held = fresh.packs();
        if held.is_empty() {
            return Ok(());
        }
        let mut pack = PackBuilder::default();
        for group in &held {
            pack.absorb(group);
        }
        fs::create_dir_all(&self.pack_dir).map_err(io_err(&self.pack_dir))?;
        let (path, _, _) = pack.finish_unsynced(&self.pack_dir)?;
        journal.written(&path);
        fresh.clear();
        self.written(path, pack, held.len());
        Ok(())
    }

    /// Counts pack `pack` of `groups` groups, written at `path`, and hands
    /// it to the folder.
    fn written(&self, path: PathBuf, pack: PackBuilder, groups: usize) {
        self.bytes_written.fetch_add(pack.len() as u64, Ordering::Relaxed);
        if let Some(usage) = &self.usage {
            usage.note(&[path.clone(), path.with_extension("idx")]);
        }
        if let Some(thread) = &self.folder {
            self.unfolded
                .lock()
                .expect("pack set lock is never poisoned")
                .insert(path.clone());
            self.queued.fetch_add(pack.memory(), Ordering::Relaxed);
            // A folder that died leaves the packs as they are.
            if let Some(tx) = &*self.to_folder.lock().expect("folder channel lock is never poisoned") {
                let _ = tx.send(ToFolder::Written(Box::new((path, pack, groups))));
            }
            while self.queued.load(Ordering::Relaxed) > FOLD_QUEUE_MEMORY && !thread.is_finished() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

impl Drop for Packs {
    fn drop(&mut self) {
        // Let the folder finish the fold or consolidation it is making.
        let tx = self
            .to_folder
            .lock()
            .expect("folder channel lock is never poisoned")
            .take();
        drop(tx);
        if let Some(thread) = self.folder.take() {
            let _ = thread.join();
        }
    }
}

/// The thread that folds group packs and consolidates packs; it holds the
/// maintenance lock for as long as it runs.
struct Folder {
    pack_dir: PathBuf,
    unfolded: Arc<Mutex<HashSet<PathBuf>>>,
    /// Group packs written since the last fold, oldest first.
    waiting: Vec<Written>,
    /// The consolidation running, if any: packs it takes are not picked again.
    consolidation: Option<std::thread::JoinHandle<()>>,
    counters: Counters,
    _lock: OwnerLock,
}

impl Folder {
    fn new(pack_dir: PathBuf, unfolded: Arc<Mutex<HashSet<PathBuf>>>, lock: OwnerLock, counters: Counters) -> Self {
        Self {
            pack_dir,
            unfolded,
            waiting: Vec::new(),
            consolidation: None,
            counters,
            _lock: lock,
        }
    }

    fn run(mut self, written: Receiver<ToFolder>, queued: &AtomicUsize) {
        remove_stale_temporaries(&self.pack_dir, STALE_TEMPORARY);
        loop {
            match written.recv_timeout(IDLE_LOOK) {
                Ok(ToFolder::ConsolidateAll(reply)) => {
                    let _ = reply.send(self.consolidate_all());
                }
                Ok(ToFolder::Written(group)) => {
                    let group = *group;
                    queued.fetch_sub(group.1.memory(), Ordering::Relaxed);
                    self.waiting.push(group);
                    let memory: usize = self.waiting.iter().map(|(_, p, _)| p.memory()).sum();
                    let groups: usize = self.waiting.iter().map(|(.., g)| g).sum();
                    if groups >= FOLD_AFTER || memory >= FOLD_MEMORY {
                        self.fold();
                        self.start_consolidation();
                    }
                }
                // Packs others added (fetches, pushes, another gitcd) are
                // consolidated while this one is idle too.
                Err(RecvTimeoutError::Timeout) => self.start_consolidation(),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // A clean stop folds what waits: a group pack keeps its trees whole
        // and undeflated, and a consolidation would copy them as they are.
        if !self.waiting.is_empty() {
            self.fold();
        }
        if let Some(c) = self.consolidation.take() {
            let _ = c.join();
        }
    }

    /// Writes the waiting group packs as one, then deletes them. A failure
    /// leaves them for a later consolidation.
    fn fold(&mut self) {
        let (paths, packs): (Vec<PathBuf>, Vec<PackBuilder>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .map(|(path, pack, _)| (path, pack))
            .unzip();
        let mut folded = pack::fold(&packs);
        drop(packs);
        let written = match folded.finish(&self.pack_dir) {
            Ok(path) => path,
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "cannot write a folded pack; keeping the packs it folds");
                return;
            }
        };
        // A `git gc` under way may be reading them: its repack deletes what
        // it packed, and a later consolidation copies the rest once.
        let keep = git_gc_running(&self.pack_dir);
        let mut unfolded = self.unfolded.lock().expect("pack set lock is never poisoned");
        for pack in paths {
            // A fold that changed nothing (one pack of blobs) is that pack,
            // under the same name.
            if !keep && pack != written {
                remove_pack(&pack);
            }
            unfolded.remove(&pack);
        }
        self.counters.folds.inc();
    }

    /// Folds what waits, then consolidates every pack it may touch into
    /// one, here and now (after a consolidation under way). Nothing while
    /// `git gc` runs.
    fn consolidate_all(&mut self) -> Result<(), RepoError> {
        if let Some(running) = self.consolidation.take() {
            let _ = running.join();
        }
        if !self.waiting.is_empty() {
            self.fold();
        }
        if git_gc_running(&self.pack_dir) {
            tracing::info!("git gc is running: it compacts the packs");
            return Ok(());
        }
        let unfolded = self.unfolded.lock().expect("pack set lock is never poisoned").clone();
        let packs = eligible_packs(&self.pack_dir, &unfolded)?;
        if packs.len() >= 2 {
            let paths: Vec<PathBuf> = packs.into_iter().map(|(_, p)| p).collect();
            consolidate(&self.pack_dir, &paths)?;
            self.counters.consolidations.inc();
            tracing::info!(packs = paths.len(), "consolidated every pack into one");
        }
        Ok(())
    }

    /// Starts consolidating packs on another thread, unless one is running
    /// or `git gc` is.
    fn start_consolidation(&mut self) {
        if self.consolidation.as_ref().is_some_and(|m| !m.is_finished()) {
            return;
        }
        if let Some(done) = self.consolidation.take() {
            let _ = done.join();
        }
        if git_gc_running(&self.pack_dir) {
            tracing::debug!("git gc is running: packs are its until it ends");
            return;
        }
        let unfolded = self.unfolded.lock().expect("pack set lock is never poisoned").clone();
        let (picked, eligible) = match pick_consolidation(&self.pack_dir, &unfolded) {
            Ok((picked, eligible)) if picked.len() >= 2 => (picked, eligible),
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "cannot list packs to consolidate");
                return;
            }
        };
        let pack_dir = self.pack_dir.clone();
        let done = self.counters.consolidations.clone();
        let spawned = std::thread::Builder::new()
            .name("gitcd-consolidate".into())
            .spawn(move || {
                if eligible <= URGENT_PACKS {
                    run_when_idle();
                }
                match consolidate(&pack_dir, &picked) {
                    Ok(()) => done.inc(),
                    Err(e) => {
                        tracing::warn!(error = %crate::error::chain(&e), packs = picked.len(), "cannot consolidate packs; they stay as they are");
                    }
                }
            });
        match spawned {
            Ok(thread) => self.consolidation = Some(thread),
            Err(e) => tracing::warn!(error = %e, "cannot start a pack consolidation"),
        }
    }
}

/// Whether `git gc` holds the repository (its fresh `gc.pid`).
fn git_gc_running(pack_dir: &Path) -> bool {
    let Some(git_dir) = pack_dir.parent().and_then(Path::parent) else {
        return false;
    };
    fs::metadata(git_dir.join("gc.pid"))
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < GC_PID_STALE))
}

/// The packs to consolidate: every pack of the lowest size tier that holds
/// [`TIER_PACKS`] or more (their sum lands in a higher tier). Group packs
/// not folded yet are the folder's; packs marked `.keep` or `.promisor`,
/// and every pack while a multi-pack index exists, are left to Git's own
/// maintenance.
fn pick_consolidation(pack_dir: &Path, unfolded: &HashSet<PathBuf>) -> Result<(Vec<PathBuf>, usize), RepoError> {
    let mut tiers: std::collections::BTreeMap<u32, Vec<PathBuf>> = std::collections::BTreeMap::new();
    let eligible = eligible_packs(pack_dir, unfolded)?;
    let count = eligible.len();
    for (size, pack) in eligible {
        tiers.entry(size_tier(size)).or_default().push(pack);
    }
    let picked = tiers
        .into_values()
        .find(|packs| packs.len() >= TIER_PACKS)
        .unwrap_or_default();
    Ok((picked, count))
}

/// A pack's size tier: 0 below [`TIER_BASE`], then one more for each
/// [`TIER_PACKS`]-fold.
fn size_tier(size: u64) -> u32 {
    let (mut tier, mut bound) = (0, Some(TIER_BASE));
    while let Some(b) = bound
        && size >= b
    {
        tier += 1;
        bound = b.checked_mul(TIER_PACKS as u64);
    }
    tier
}

/// The packs the maintainer may consolidate, smallest first, with their
/// sizes (see [`pick_consolidation`] for what it leaves alone).
fn eligible_packs(pack_dir: &Path, unfolded: &HashSet<PathBuf>) -> Result<Vec<(u64, PathBuf)>, RepoError> {
    if pack_dir.join("multi-pack-index").exists() {
        return Ok(Vec::new());
    }
    let mut packs = Vec::new();
    let entries = match fs::read_dir(pack_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        entries => entries.map_err(io_err(pack_dir))?,
    };
    for entry in entries {
        let path = entry.map_err(io_err(pack_dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !(name.starts_with("pack-") && name.ends_with(".pack"))
            || unfolded.contains(&path)
            || path.with_extension("keep").exists()
            || path.with_extension("promisor").exists()
            || !path.with_extension("idx").exists()
        {
            continue;
        }
        // A pack deleted meanwhile is simply not picked.
        if let Ok(meta) = fs::metadata(&path) {
            packs.push((meta.len(), path));
        }
    }
    packs.sort();
    Ok(packs)
}

/// Consolidates `packs` into one pack, then deletes them. Entries are copied as
/// stored; a delta's offset to its base is rewritten for its new place, and
/// an object found in an earlier pack is copied once.
fn consolidate(pack_dir: &Path, packs: &[PathBuf]) -> Result<(), RepoError> {
    let indexes = packs
        .iter()
        .map(|p| pack::read_index(&p.with_extension("idx")))
        .collect::<Result<Vec<_>, _>>()?;
    let unique: HashSet<gix::ObjectId> = indexes.iter().flatten().map(|e| e.id).collect();
    let count = u32::try_from(unique.len()).expect("a pack holds fewer than 2^32 objects");
    let mut out = PackWriter::create(pack_dir, count)?;
    // Where each object went in the consolidated pack.
    let mut placed: HashMap<gix::ObjectId, u64> = HashMap::with_capacity(unique.len());
    for (path, mut index) in packs.iter().zip(indexes) {
        let corrupt = |m: String| RepoError::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, m),
        };
        let file = fs::File::open(path).map_err(io_err(path))?;
        let size = file.metadata().map_err(io_err(path))?.len();
        if size < 32 {
            return Err(corrupt("too short to be a pack".into()));
        }
        // Entries are read in order, one after the other: they lie between
        // the 12-byte header and the 20-byte checksum.
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        reader.seek_relative(12).map_err(io_err(path))?;
        index.sort_by_key(|e| e.offset);
        let end_of_entries = size - 20;
        // This pack's offsets: where each entry's object went.
        let mut moved: HashMap<u64, u64> = HashMap::with_capacity(index.len());
        let mut bytes = Vec::new();
        let mut read_to = 12;
        for (i, e) in index.iter().enumerate() {
            let end = index.get(i + 1).map_or(end_of_entries, |n| n.offset);
            if e.offset != read_to || end < e.offset {
                return Err(corrupt(format!("entry at {} is not where the index says", e.offset)));
            }
            bytes.resize((end - e.offset) as usize, 0);
            reader.read_exact(&mut bytes).map_err(io_err(path))?;
            read_to = end;
            if let Some(&at) = placed.get(&e.id) {
                moved.insert(e.offset, at);
                continue;
            }
            let at = out.offset();
            let header = bytes.iter().position(|b| b & 0x80 == 0).map(|p| p + 1);
            let header = header
                .filter(|h| *h < bytes.len())
                .ok_or_else(|| corrupt(format!("bad entry header at {}", e.offset)))?;
            if (bytes[0] >> 4) & 7 == OFS_DELTA {
                let (distance, len) = read_distance(&bytes[header..])
                    .ok_or_else(|| corrupt(format!("bad delta base offset at {}", e.offset)))?;
                let base = e
                    .offset
                    .checked_sub(distance)
                    .and_then(|b| moved.get(&b))
                    .ok_or_else(|| corrupt(format!("delta at {} has no base before it", e.offset)))?;
                let distance = pack::encode_distance(at - base);
                out.entry(e.id, &[&bytes[..header], &distance, &bytes[header + len..]], None)?;
            } else {
                out.entry(e.id, &[&bytes], Some(e.crc))?;
            }
            moved.insert(e.offset, at);
            placed.insert(e.id, at);
        }
    }
    out.finish()?;
    // A `git gc` that started meanwhile may be reading them (as below).
    if git_gc_running(pack_dir) {
        return Ok(());
    }
    for pack in packs {
        // Someone may have marked it to keep meanwhile: its objects are in
        // both packs then, which is harmless.
        if !pack.with_extension("keep").exists() {
            remove_pack(pack);
        }
    }
    Ok(())
}

/// A delta's distance back to its base, as stored: 7 bits a byte, most
/// significant first, each continuation adding one. With the bytes it took.
fn read_distance(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = u64::from(*bytes.first()? & 0x7f);
    let mut len = 1;
    while bytes[len - 1] & 0x80 != 0 {
        let b = *bytes.get(len)?;
        value = ((value + 1) << 7) | u64::from(b & 0x7f);
        len += 1;
    }
    Some((value, len))
}

/// How old a temporary pack file of ours must be to count as left by a
/// crash: packs are written in well under this.
const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(60);

/// Deletes the temporary files (`tmp_<number>.pack` and `.idx`, our naming;
/// git names its own `tmp_pack_*`) that a crash while writing a pack left,
/// once older than `age`.
fn remove_stale_temporaries(pack_dir: &Path, age: std::time::Duration) {
    let Ok(entries) = fs::read_dir(pack_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("tmp_"))
            .and_then(|n| n.strip_suffix(".pack").or_else(|| n.strip_suffix(".idx")))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e >= age));
        if ours && old {
            tracing::info!(file = %path.display(), "removing a temporary pack file left by an interrupted write");
            let _ = fs::remove_file(&path);
        }
    }
}

/// Deletes a pack: its index first (readers find objects through it), then
/// the pack and what Git keeps beside it.
fn remove_pack(pack: &Path) {
    let _ = fs::remove_file(pack.with_extension("idx"));
    let _ = fs::remove_file(pack);
    for extra in ["rev", "bitmap"] {
        let _ = fs::remove_file(pack.with_extension(extra));
    }
}

/// Lowers the calling thread to Linux's `SCHED_IDLE` policy: it runs only
/// on a core nothing else wants. Where that is refused, the thread keeps
/// its priority.
#[allow(unsafe_code)]
fn run_when_idle() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a system call on the calling thread (pid 0) that only reads
    // `param`.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the consolidation's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::super::git_cli::{cat_file, run};
    use super::super::objects::object_id;
    use super::super::{Kind, Repo};
    use super::*;
    use gix::ObjectId;

    fn git(args: &[&str]) -> anyhow::Result<String> {
        Ok(String::from_utf8(run(args)?)?)
    }

    fn packs_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let mut packs: Vec<PathBuf> = fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "pack"))
            .collect();
        packs.sort();
        Ok(packs)
    }

    /// Group `g`'s pack: `blob`, and the next version of a tree (replacing
    /// `previous`) to which `names` entries naming the blob are added;
    /// `entries` is the tree so far. Returns the pack, the blob's id and
    /// the tree's.
    fn group_pack(
        g: u8,
        blob: &[u8],
        names: u8,
        entries: &mut Vec<u8>,
        previous: Option<ObjectId>,
    ) -> (PackBuilder, ObjectId, ObjectId) {
        let mut pack = PackBuilder::default();
        let blob_id = object_id(Kind::Blob, blob);
        pack.add(blob_id, Kind::Blob, blob);
        for i in 0..names {
            entries.extend_from_slice(format!("100644 g{g}-{i:02}\0").as_bytes());
            entries.extend_from_slice(blob_id.as_bytes());
        }
        let tree = object_id(Kind::Tree, entries);
        pack.add_tree(tree, std::sync::Arc::new(entries.clone()), previous);
        (pack, blob_id, tree)
    }

    /// A pack made by git (with its own deltas), a folded pack and a group
    /// pack, sharing objects, consolidate into one pack that git checks and reads.
    #[test]
    fn consolidated_packs_keep_every_object() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let work = dir.path().join("work");
        let w = work.to_str().expect("a UTF-8 temp path");
        git(&["init", "-q", w])?;
        for i in 0..30 {
            let lines: String = (0..200).map(|l| format!("line {l} {}\n", l * i % 7)).collect();
            fs::write(work.join("file"), lines)?;
            git(&["-C", w, "add", "file"])?;
            git(&[
                "-C",
                w,
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-qm",
                &format!("c{i}"),
            ])?;
        }
        git(&["-C", w, "repack", "-adfq"])?;
        let git_dir = work.join(".git");
        let pack_dir = git_dir.join("objects/pack");
        let repo = Repo::open(&work)?;

        // Our objects: a blob git already has, and a tree in versions.
        let mut objects = Vec::new();
        let file = git(&["-C", w, "cat-file", "blob", "HEAD:file"])?.into_bytes();
        let mut groups = Vec::new();
        let mut entries = Vec::new();
        let mut previous = None;
        for g in 0..5u8 {
            let blob = if g == 0 { file.clone() } else { vec![g; 100] };
            let (mut pack, blob_id, tree) = group_pack(g, &blob, 30, &mut entries, previous);
            previous = Some(tree);
            objects.push((blob_id, "blob", blob));
            objects.push((tree, "tree", entries.clone()));
            pack.finish(&pack_dir)?;
            groups.push(pack);
        }
        let mut folded = pack::fold(&groups[..4]);
        folded.finish(&pack_dir)?;
        let packs = packs_in(&pack_dir)?;
        assert_eq!(packs.len(), 7, "git's, five groups and the fold: {packs:?}");
        let total: usize = packs
            .iter()
            .map(|p| pack::read_index(&p.with_extension("idx")).map(|i| i.len()))
            .sum::<Result<_, _>>()?;

        consolidate(&pack_dir, &packs)?;
        let consolidated = packs_in(&pack_dir)?;
        assert_eq!(consolidated.len(), 1, "{consolidated:?}");
        let index = pack::read_index(&consolidated[0].with_extension("idx"))?;
        assert!(
            index.len() < total,
            "duplicates are kept once: {} of {total}",
            index.len()
        );
        let verified = git(&[
            "--git-dir",
            git_dir.to_str().expect("UTF-8"),
            "verify-pack",
            "-v",
            &consolidated[0].with_extension("idx").display().to_string(),
        ])?;
        assert!(verified.contains("chain length = 1:"), "deltas survive: {verified}");
        git(&["-C", w, "fsck", "--strict", "--no-dangling"])?;
        for (id, kind, content) in &objects {
            assert_eq!(&cat_file(&git_dir, kind, *id)?, content, "{kind} {id}");
            assert_eq!(
                &repo
                    .local()
                    .read(*id, Kind::Blob)
                    .or_else(|_| repo.local().read(*id, Kind::Tree))?,
                content
            );
        }
        Ok(())
    }

    /// A bare repository made by git, and its packs with this process as
    /// their maintainer.
    fn maintained_bare_repo() -> anyhow::Result<(tempfile::TempDir, Packs)> {
        let dir = tempfile::tempdir()?;
        git(&["init", "-q", "--bare", dir.path().to_str().expect("a UTF-8 temp path")])?;
        let packs = Packs::new(dir.path(), Maintenance::Auto);
        assert!(packs.maintains());
        Ok((dir, packs))
    }

    /// The group packs written before the writer stops are folded into
    /// one, trees as deltas, before the folder ends.
    #[test]
    fn a_clean_stop_folds_the_waiting_group_packs() -> anyhow::Result<()> {
        let (dir, packs) = maintained_bare_repo()?;
        let w = dir.path().to_str().expect("a UTF-8 temp path");
        let pack_dir = dir.path().join("objects/pack");
        let (mut entries, mut previous, mut trees) = (Vec::new(), None, Vec::new());
        for g in 0..3u8 {
            let (pack, _, tree) = group_pack(g, &[g; 100], 40, &mut entries, previous);
            previous = Some(tree);
            trees.push((tree, entries.clone()));
            packs.write(pack, None)?;
        }
        assert_eq!(packs_in(&pack_dir)?.len(), 3, "fewer than FOLD_AFTER groups wait");
        drop(packs);
        let left = packs_in(&pack_dir)?;
        assert_eq!(left.len(), 1, "folded at the stop: {left:?}");
        let verified = git(&[
            "--git-dir",
            w,
            "verify-pack",
            "-v",
            &left[0].with_extension("idx").display().to_string(),
        ])?;
        assert!(
            verified.contains("chain length = 1:"),
            "trees became deltas: {verified}"
        );
        for (id, content) in &trees {
            assert_eq!(&cat_file(dir.path(), "tree", *id)?, content);
        }
        Ok(())
    }

    /// A fold of one pack of blobs is that same pack, under its name: it
    /// stays.
    #[test]
    fn a_fold_that_changes_nothing_keeps_its_pack() -> anyhow::Result<()> {
        let (dir, packs) = maintained_bare_repo()?;
        let mut pack = PackBuilder::default();
        let blob = vec![7u8; 100];
        let id = object_id(Kind::Blob, &blob);
        pack.add(id, Kind::Blob, &blob);
        packs.write(pack, None)?;
        drop(packs);
        assert_eq!(packs_in(&dir.path().join("objects/pack"))?.len(), 1);
        assert_eq!(cat_file(dir.path(), "blob", id)?, blob);
        Ok(())
    }

    /// Temporary files of ours left by a crash go; git's, and fresh ones, stay.
    #[test]
    fn stale_temporaries_are_removed() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let names = [
            "tmp_123.pack",
            "tmp_123.idx",
            "tmp_pack_abc",
            "tmp_.pack",
            "pack-1.pack",
        ];
        for n in names {
            fs::write(dir.path().join(n), b"x")?;
        }
        remove_stale_temporaries(dir.path(), std::time::Duration::from_secs(3600));
        assert_eq!(fs::read_dir(dir.path())?.count(), 5, "nothing is an hour old yet");
        remove_stale_temporaries(dir.path(), std::time::Duration::ZERO);
        let mut left: Vec<String> = fs::read_dir(dir.path())?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        left.sort();
        assert_eq!(left, ["pack-1.pack", "tmp_.pack", "tmp_pack_abc"]);
        Ok(())
    }

    /// Packs of the lowest tier that holds eight or more are consolidated;
    /// unfolded packs stay.
    #[test]
    fn tiered_pick() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let pick = |sizes: &[u64], unfolded: &[usize]| -> anyhow::Result<Vec<usize>> {
            for e in fs::read_dir(dir.path())? {
                fs::remove_file(e?.path())?;
            }
            let mut skip = HashSet::new();
            let mut names = HashMap::new();
            for (i, size) in sizes.iter().enumerate() {
                let pack = dir.path().join(format!("pack-{i:040}.pack"));
                fs::File::create(&pack)?.set_len(*size)?;
                fs::write(pack.with_extension("idx"), b"")?;
                if unfolded.contains(&i) {
                    skip.insert(pack.clone());
                }
                names.insert(pack, i);
            }
            let mut picked: Vec<usize> = pick_consolidation(dir.path(), &skip)?
                .0
                .iter()
                .map(|p| names[p])
                .collect();
            picked.sort();
            Ok(picked)
        };
        const M: u64 = 1 << 20;
        assert_eq!(size_tier(0), 0);
        assert_eq!(size_tier(M - 1), 0);
        assert_eq!(size_tier(M), 1);
        assert_eq!(size_tier(8 * M - 1), 1);
        assert_eq!(size_tier(8 * M), 2);
        assert_eq!(size_tier(u64::MAX), 15);
        let none = Vec::<usize>::new();
        // Seven of a tier wait; the eighth makes them one.
        assert_eq!(pick(&[2 * M; 7], &[])?, none);
        assert_eq!(pick(&[2 * M; 8], &[])?, (0..8).collect::<Vec<_>>());
        // The lowest full tier goes first, whole; other tiers stay.
        let mut sizes = vec![100 * M];
        sizes.extend([3 * M; 9]);
        sizes.extend([10; 8]);
        assert_eq!(pick(&sizes, &[])?, (10..18).collect::<Vec<_>>());
        sizes.truncate(13);
        assert_eq!(pick(&sizes, &[])?, (1..10).collect::<Vec<_>>());
        // Unfolded group packs are not counted.
        assert_eq!(pick(&[2 * M; 8], &[3])?, none);
        Ok(())
    }
}
