//! References: reading them, moving several at once with compare-and-swap
//! (durably), clearing the locks a killed writer left, and noticing when
//! someone else moves one.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gix::ObjectId;
use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};

use super::objects::sync_all;
use super::{LocalRepo, RepoError, Signature, io_err};

/// One reference move: `name` from `old` (`None`: must not exist) to `new`.
#[derive(Clone, Debug)]
pub struct RefUpdate<'a> {
    pub name: &'a str,
    pub old: Option<ObjectId>,
    pub new: ObjectId,
}

impl LocalRepo {
    /// The object a direct reference points at, if the reference exists.
    pub fn ref_target(&self, name: &str) -> Result<Option<ObjectId>, RepoError> {
        let r = self.git.try_find_reference(name).map_err(|source| RepoError::RefRead {
            name: name.into(),
            source,
        })?;
        match r {
            None => Ok(None),
            Some(r) => match r.target().try_id() {
                Some(id) => Ok(Some(id.to_owned())),
                None => Err(RepoError::Symbolic { name: name.into() }),
            },
        }
    }

    /// The ref a symbolic reference (such as `HEAD`) names, if it is one.
    pub fn symbolic_target(&self, name: &str) -> Result<Option<String>, RepoError> {
        let r = self.git.try_find_reference(name).map_err(|source| RepoError::RefRead {
            name: name.into(),
            source,
        })?;
        Ok(r.and_then(|r| r.target().try_name().map(|n| n.to_string())))
    }

    /// Removes lock files of `refs` that a killed writer left behind: a lock
    /// still present after `patience` is taken as stale. Returns the paths
    /// removed.
    pub fn clear_stale_locks(&self, refs: &[&str], patience: Duration) -> Result<Vec<PathBuf>, RepoError> {
        let locks: Vec<PathBuf> = refs
            .iter()
            .map(|r| self.git_dir.join(format!("{r}.lock")))
            .chain([self.git_dir.join("packed-refs.lock")])
            .collect();
        let deadline = std::time::Instant::now() + patience;
        while locks.iter().any(|l| l.exists()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut removed = Vec::new();
        for l in locks {
            if l.exists() {
                fs::remove_file(&l).map_err(io_err(&l))?;
                removed.push(l);
            }
        }
        Ok(removed)
    }

    /// Moves references atomically with compare-and-swap. The ref files and
    /// their directories are fsynced before returning. A value that moved,
    /// or a lock another writer holds, is [`RepoError::RefConflict`]: read
    /// again and retry; anything else is [`RepoError::RefUpdate`].
    pub fn update_refs(&self, edits: &[RefUpdate<'_>], message: &str, committer: &Signature) -> Result<(), RepoError> {
        self.update_refs_with(edits, message, committer, true)
    }

    /// [`LocalRepo::update_refs`], fsyncing nothing unless `sync`: a journal
    /// records the move instead (see [`super::journal`]).
    pub fn update_refs_with(
        &self,
        edits: &[RefUpdate<'_>],
        message: &str,
        committer: &Signature,
        sync: bool,
    ) -> Result<(), RepoError> {
        let mut ref_edits = Vec::with_capacity(edits.len());
        for e in edits {
            let name: gix::refs::FullName = e.name.try_into().map_err(|source| RepoError::RefName {
                name: e.name.into(),
                source,
            })?;
            ref_edits.push(RefEdit {
                change: Change::Update {
                    log: LogChange {
                        mode: RefLog::AndReference,
                        force_create_reflog: false,
                        message: message.into(),
                    },
                    expected: match e.old {
                        Some(old) => PreviousValue::MustExistAndMatch(gix::refs::Target::Object(old)),
                        None => PreviousValue::MustNotExist,
                    },
                    new: gix::refs::Target::Object(e.new),
                },
                name,
                deref: false,
            });
        }
        let time = gix::date::Time::now_local_or_utc();
        let mut time_buf = gix::date::parse::TimeBuf::default();
        let sig = gix::actor::SignatureRef {
            name: committer.name.as_str().into(),
            email: committer.email.as_str().into(),
            time: time.to_str(&mut time_buf),
        };
        if let Err(source) = self.git.edit_references_as(ref_edits, Some(sig)) {
            let names = edits.iter().map(|e| e.name).collect::<Vec<_>>().join(", ");
            use gix::error::Class;
            let conflict = source
                .classify()
                .any(|c| matches!(c.class(), Class::Conflict | Class::Retryable));
            return Err(if conflict {
                RepoError::RefConflict { names, source }
            } else {
                RepoError::RefUpdate { names, source }
            });
        }
        if !sync {
            return Ok(());
        }
        // The ref files, and the directories whose entries changed: the
        // parent of an updated ref; every ancestor of a created one (its
        // directories may be new).
        let mut dirs = BTreeSet::new();
        for e in edits {
            let path = self.git_dir.join(e.name);
            dirs.insert(path.clone());
            let mut dir = path.parent();
            while let Some(d) = dir {
                dirs.insert(d.to_owned());
                if d == self.git_dir || e.old.is_some() {
                    break;
                }
                dir = d.parent();
            }
        }
        sync_all(&dirs.into_iter().collect::<Vec<_>>())
    }

    /// Points `HEAD` at `target` (a full ref name).
    pub fn set_head(&self, target: &str) -> Result<(), RepoError> {
        let path = self.git_dir.join("HEAD");
        let tmp = self.git_dir.join("HEAD.gitcd-tmp");
        fs::write(&tmp, format!("ref: {target}\n")).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Ok(())
    }
}

/// Calls `on_change` soon after someone moves reference `name` of the
/// repository at `git_dir`, or rewrites `packed-refs` (which `git pack-refs`
/// and `git gc` do), through inotify. Best effort: where the file system
/// gives no events (some network file systems), nothing calls; callers keep
/// a slower poll as the fallback. Dropping the watcher stops it.
pub struct RefWatcher {
    _watcher: notify::RecommendedWatcher,
}

impl RefWatcher {
    pub fn new(git_dir: &Path, name: &str, on_change: impl Fn() + Send + 'static) -> Result<Self, notify::Error> {
        use notify::Watcher as _;
        let loose = git_dir.join(name);
        let file_name = loose.file_name().map(|n| n.to_owned());
        let packed = std::ffi::OsString::from("packed-refs");
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            let relevant = event.paths.iter().any(|p| {
                let n = p.file_name();
                n == file_name.as_deref() || n == Some(packed.as_os_str())
            });
            if relevant {
                on_change();
            }
        })?;
        watcher.watch(git_dir, notify::RecursiveMode::NonRecursive)?;
        if let Some(dir) = loose.parent().filter(|d| *d != git_dir) {
            fs::create_dir_all(dir).map_err(|e| notify::Error::io(e).add_path(dir.to_owned()))?;
            watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
        }
        Ok(Self { _watcher: watcher })
    }
}
