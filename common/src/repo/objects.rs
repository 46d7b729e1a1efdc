//! Reading objects, and writing them durably: a group's objects are
//! collected in memory and written as one pack, fsynced before any ref may
//! point at them.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gix::ObjectId;

use super::fresh::Fresh;
use super::journal::Journal;
use super::maintenance::{Maintenance, Packs};
use super::pack::PackBuilder;
use super::{Kind, LocalRepo, RepoError, io_err, tree};

impl LocalRepo {
    /// Reads the raw bytes of object `id`, checking its kind.
    ///
    /// A `git gc` or `git repack` beside us deletes packs it has rewritten: a
    /// read that listed such a pack and then finds it gone fails. The object
    /// is in the new pack, so a failed read is tried again (gix lists the
    /// packs anew) three times, over about a quarter of a second, before it
    /// fails; a missing object is an error of ours, rare, and may wait that long.
    pub fn read(&self, id: ObjectId, expected: Kind) -> Result<Vec<u8>, RepoError> {
        if let Some(found) = self.fresh.find(&id) {
            let (actual, data) = found.map_err(|reason| RepoError::Fresh { id, reason })?;
            if actual != expected {
                return Err(RepoError::Kind {
                    id,
                    actual: actual.name(),
                    expected: expected.name(),
                });
            }
            return Ok(data);
        }
        let mut retries = [10u64, 50, 200].into_iter();
        let obj = loop {
            match self.git.find_object(id) {
                Ok(obj) => break obj,
                Err(source) => match retries.next() {
                    Some(ms) => std::thread::sleep(std::time::Duration::from_millis(ms)),
                    None => return Err(RepoError::Read { id, source }),
                },
            }
        };
        let actual = match obj.kind {
            gix::object::Kind::Blob => Kind::Blob,
            gix::object::Kind::Tree => Kind::Tree,
            gix::object::Kind::Commit => Kind::Commit,
            gix::object::Kind::Tag => {
                return Err(RepoError::Kind {
                    id,
                    actual: "tag",
                    expected: expected.name(),
                });
            }
        };
        if actual != expected {
            return Err(RepoError::Kind {
                id,
                actual: actual.name(),
                expected: expected.name(),
            });
        }
        Ok(obj.detach().data)
    }

    /// Whether object `id` exists (in any pack or loose).
    pub fn has(&self, id: ObjectId) -> bool {
        self.fresh.has(&id) || self.git.has_object(id)
    }

    /// The objects this process's writer holds in memory until the refs
    /// move (see [`super::fresh`]).
    pub fn fresh(&self) -> std::sync::Arc<super::fresh::Fresh> {
        self.fresh.clone()
    }

    /// Reads and parses tree `id` into its entries, in Git's order.
    pub fn tree_entries(&self, id: ObjectId) -> Result<Vec<tree::RawEntry>, RepoError> {
        let data = self.read(id, Kind::Tree)?;
        tree::parse(id, &data)
    }

    /// Looks up `path` (entry names) below tree `root`.
    pub fn lookup(&self, root: ObjectId, path: &[&[u8]]) -> Result<Option<tree::RawEntry>, RepoError> {
        let mut current = root;
        let mut found = None;
        for (i, name) in path.iter().enumerate() {
            let entries = self.tree_entries(current)?;
            match entries.into_iter().find(|e| e.name == *name) {
                Some(e) if i + 1 == path.len() => found = Some(e),
                Some(e) if e.is_tree() => current = e.id,
                _ => return Ok(None),
            }
        }
        Ok(found)
    }
}

/// Collects objects into one pack in memory, a group at a time. An object is
/// readable only once its pack is written ([`ObjectWriter::sync`]), and
/// nothing may point at it before.
pub struct ObjectWriter {
    pending: PackBuilder,
    packs: Packs,
    /// Where groups are made durable, once attached (see [`Journal`]).
    journal: Option<Journal>,
    /// Where journaled groups' packs wait until the refs move (see
    /// [`super::fresh`]); attached with the journal.
    fresh: Option<Arc<Fresh>>,
    /// Bytes of trees written so far.
    tree_bytes: u64,
}

/// Pack bytes held in memory before they are written out unasked.
const MAX_PENDING_PACK: usize = 64 << 20;
/// Bytes of journaled groups' packs held in memory (see [`Fresh`]) before
/// they are written out without waiting for the refs to move.
const MAX_FRESH: usize = 32 << 20;

impl ObjectWriter {
    /// A writer into the repository at `git_dir`; `maintenance` says whether
    /// this process may fold and consolidate the repository's packs (see
    /// [`super::maintenance`]).
    pub fn new(git_dir: &Path, maintenance: Maintenance) -> Self {
        Self {
            pending: PackBuilder::default(),
            packs: Packs::new(git_dir, maintenance),
            journal: None,
            fresh: None,
            tree_bytes: 0,
        }
    }

    /// Makes groups durable through `journal` from now on: a group's pack
    /// waits in `fresh` (the repository's, see [`LocalRepo::fresh`]) until
    /// [`ObjectWriter::write_out`] writes it without fsync, and
    /// [`ObjectWriter::commit`] syncs the journal.
    pub fn attach_journal(&mut self, journal: Journal, fresh: Arc<Fresh>) {
        self.journal = Some(journal);
        self.fresh = Some(fresh);
    }

    /// Writes the journaled groups' packs held in memory into the pack
    /// directory, as one pack: before any ref on disk may point at them.
    pub fn write_out(&mut self) -> Result<(), RepoError> {
        match (&mut self.journal, &self.fresh) {
            (Some(journal), Some(fresh)) => self.packs.write_out(journal, fresh),
            _ => Ok(()),
        }
    }

    /// Whether a journal makes groups durable (refs may then move unsynced
    /// before [`ObjectWriter::commit`]).
    pub fn journaled(&self) -> bool {
        self.journal.is_some()
    }

    /// Makes the packs written since the last call, and the refs' moves to
    /// `refs`, durable: one journal record and one sync. Without a journal
    /// there is nothing to do (every write was durable already).
    pub fn commit(&mut self, refs: &[(&str, ObjectId)]) -> Result<(), RepoError> {
        let Some(journal) = &mut self.journal else {
            return Ok(());
        };
        // The slot that fills retires with the packs of its records
        // fsynced: they must be files by then.
        if journal.switches_next()
            && let Some(fresh) = &self.fresh
        {
            self.packs.write_out(journal, fresh)?;
        }
        journal.commit(refs)
    }

    /// Tells the journal whether the refs on disk are behind its records.
    pub fn refs_behind(&mut self, behind: bool) {
        if let Some(j) = &mut self.journal {
            j.refs_behind(behind);
        }
    }

    /// Total bytes of trees written (the part of a group that grows with
    /// the directories it changes, not with its requests).
    pub fn tree_bytes_written(&self) -> u64 {
        self.tree_bytes
    }

    /// Total bytes of pack data written.
    pub fn bytes_written(&self) -> u64 {
        self.packs.bytes_written()
    }

    /// What pack maintenance did.
    pub fn maintenance_counters(&self) -> &super::maintenance::Counters {
        self.packs.counters()
    }

    /// Asks this process's pack maintainer for work (see
    /// [`super::maintenance::MaintenanceHandle`]).
    pub fn maintenance_handle(&self) -> super::maintenance::MaintenanceHandle {
        self.packs.handle()
    }

    /// Whether this writer maintains the repository's packs.
    pub fn maintains(&self) -> bool {
        self.packs.maintains()
    }

    /// Counts every pack written from now on in `usage` (see
    /// [`super::usage::DiskUsage::note`]).
    pub fn count_in(&mut self, usage: std::sync::Arc<super::usage::DiskUsage>) {
        self.packs.count_in(usage);
    }

    /// Whether objects await [`ObjectWriter::sync`].
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Adds one object to the pending pack and returns its id.
    pub fn write(&mut self, kind: Kind, data: &[u8]) -> Result<ObjectId, RepoError> {
        let id = object_id(kind, data);
        self.pending.add(id, kind, data);
        self.spill()?;
        Ok(id)
    }

    /// Adds a tree, which replaces tree `previous` (if any), and returns its
    /// id.
    pub fn write_tree(&mut self, content: Vec<u8>, previous: Option<ObjectId>) -> Result<ObjectId, RepoError> {
        let id = object_id(Kind::Tree, &content);
        self.pending.add_tree(id, std::sync::Arc::new(content), previous);
        self.spill()?;
        Ok(id)
    }

    /// A long catch-up (gitcd-init over a big history) must not hold all of
    /// it in memory: packs written early are harmless, since nothing points
    /// at their objects before the refs move.
    fn spill(&mut self) -> Result<(), RepoError> {
        if self.pending.memory() >= MAX_PENDING_PACK {
            self.sync()?;
        }
        Ok(())
    }

    /// Makes every object written so far durable and visible, as one pack.
    pub fn sync(&mut self) -> Result<(), RepoError> {
        let pack = self.pending.take();
        self.tree_bytes += pack.tree_bytes() as u64;
        let journal = self.journal.as_mut().zip(self.fresh.as_deref());
        self.packs.write(pack, journal)?;
        if self.fresh.as_ref().is_some_and(|f| f.memory() > MAX_FRESH) {
            self.write_out()?;
        }
        Ok(())
    }

    /// Drops objects not yet synced (a failed group).
    pub fn discard(&mut self) {
        self.pending.take();
        if let Some(j) = &mut self.journal {
            j.discard();
        }
    }
}

impl Drop for ObjectWriter {
    /// The packs held in memory go to the pack directory before the journal
    /// checkpoints at its drop; when they cannot, the journal is told the
    /// refs are behind, so that it leaves its records for the next start.
    fn drop(&mut self) {
        if let Err(e) = self.write_out() {
            tracing::warn!(error = %crate::error::chain(&e), "cannot write the packs held in memory at stop; the next start recovers them from the journal");
            self.refs_behind(true);
        }
    }
}

/// The id blob `data` has (or would have) in a repository.
pub fn blob_id(data: &[u8]) -> ObjectId {
    object_id(Kind::Blob, data)
}

/// The id of object `data` of `kind`.
pub(super) fn object_id(kind: Kind, data: &[u8]) -> ObjectId {
    let header = format!("{} {}\0", kind.name(), data.len());
    let mut hasher = <sha1::Sha1 as sha1::Digest>::new();
    sha1::Digest::update(&mut hasher, header.as_bytes());
    sha1::Digest::update(&mut hasher, data);
    ObjectId::from_bytes_or_panic(&sha1::Digest::finalize(hasher))
}

/// fsyncs a file or directory someone else wrote (a fetched pack).
pub fn sync_path(path: &Path) -> Result<(), RepoError> {
    sync_file(path)
}

pub(super) fn sync_file(path: &Path) -> Result<(), RepoError> {
    fs::File::open(path).and_then(|f| f.sync_all()).map_err(io_err(path))
}

pub(super) fn sync_dir(path: &Path) -> Result<(), RepoError> {
    sync_file(path)
}

/// Bytes of a file written to be fsynced that are handed to the disk at a
/// time.
const PACE: u64 = 1 << 20;

/// A file written to be fsynced, handed to the disk a piece at a time as it
/// is written, the piece before waited for: a large pack (a fold, a
/// consolidation) then reaches the disk as it is made instead of all at once
/// at its fsync, where the journal's small syncs would wait behind it (what
/// RocksDB's `bytes_per_sync` does).
pub(super) struct PacedFile {
    file: fs::File,
    written: u64,
    /// Bytes handed to the disk, and those of them waited for.
    handed: u64,
    waited: u64,
}

impl PacedFile {
    pub(super) fn new(file: fs::File) -> Self {
        Self {
            file,
            written: 0,
            handed: 0,
            waited: 0,
        }
    }

    pub(super) fn into_inner(self) -> fs::File {
        self.file
    }
}

impl Write for PacedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = (PACE - (self.written - self.handed)) as usize;
        let n = self.file.write(&buf[..buf.len().min(room)])?;
        self.written += n as u64;
        if self.written - self.handed == PACE {
            sync_range(&self.file, self.handed, self.written, libc::SYNC_FILE_RANGE_WRITE);
            if self.waited < self.handed {
                let wait =
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
                sync_range(&self.file, self.waited, self.handed, wait);
            }
            self.waited = self.handed;
            self.handed = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// `sync_file_range(2)` on bytes `from..to` of `file`. Its result is not
/// needed: the fsync that follows reports what went wrong.
#[allow(unsafe_code)]
fn sync_range(file: &fs::File, from: u64, to: u64, flags: libc::c_uint) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: the call touches no memory of ours, and the descriptor stays
    // open while `file` is borrowed.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), from as i64, (to - from) as i64, flags) };
}

/// Threads that fsync a ref transaction's files and directories.
const SYNC_THREADS: usize = 8;

/// fsyncs files or directories on up to [`SYNC_THREADS`] threads.
pub(super) fn sync_all(paths: &[PathBuf]) -> Result<(), RepoError> {
    sync_each(paths, sync_file)
}

/// [`sync_all`], skipping files that are gone (a group pack a fold replaced
/// is deleted once the fold is durable).
pub(super) fn sync_present(paths: &[PathBuf]) -> Result<(), RepoError> {
    sync_each(paths, |p| match fs::File::open(p) {
        Ok(f) => f.sync_all().map_err(io_err(p)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(p)(e)),
    })
}

fn sync_each(paths: &[PathBuf], sync: impl Fn(&Path) -> Result<(), RepoError> + Sync) -> Result<(), RepoError> {
    if paths.len() <= 1 {
        return paths.iter().try_for_each(|p| sync(p));
    }
    let chunk = paths.len().div_ceil(SYNC_THREADS);
    let sync = &sync;
    std::thread::scope(|scope| {
        let workers: Vec<_> = paths
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().try_for_each(|p| sync(p))))
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join().unwrap_or_else(|_| {
                Err(RepoError::Io {
                    path: PathBuf::from("fsync worker"),
                    source: io::Error::other("an fsync thread panicked"),
                })
            })
        })
    })
}

/// Total size of the files below `dir` (the repository's object store).
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our object ids are Git's.
    #[test]
    fn object_ids_match_git() {
        assert_eq!(
            object_id(Kind::Blob, b"").to_string(),
            "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
        );
        assert_eq!(
            object_id(Kind::Blob, b"hello\n").to_string(),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        assert_eq!(
            object_id(Kind::Tree, b"").to_string(),
            "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
        );
    }
}
