//! How much disk the repository's objects take, as a running total: the
//! object directory is walked once, then inotify says which directories
//! changed (what `git fetch`, `git push`, `git gc`, pack maintenance or a
//! person add or remove) and a background thread lists just those again,
//! so reading the size never walks. The packs gitcd writes are counted by
//! the writer itself ([`DiskUsage::note`]) before the write is
//! acknowledged, so a Status after a Put always includes it. Without
//! inotify, a background walk every minute keeps the rest close.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The objects' size on disk.
pub struct DiskUsage {
    tally: Arc<Mutex<Tally>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

/// How often the size is recounted when no notifications come.
const FALLBACK_WALK: Duration = Duration::from_secs(60);
/// Changes in a directory are counted together after this quiet time (a
/// group's pack makes four events).
const SETTLE: Duration = Duration::from_millis(50);

/// The size of every file, by directory, and their sum.
#[derive(Default)]
struct Tally {
    sizes: HashMap<PathBuf, HashMap<PathBuf, u64>>,
    total: u64,
}

impl Tally {
    fn insert(&mut self, file: PathBuf, len: u64) {
        let dir = file.parent().map(Path::to_owned).unwrap_or_default();
        let old = self.sizes.entry(dir).or_default().insert(file, len);
        self.total = self.total - old.unwrap_or(0) + len;
    }

    /// Lists directory `dir` again (and what is below it, when it is new
    /// or went): its files' sizes replace what was known of it.
    fn rescan(&mut self, dir: &Path) {
        let mut gone = 0;
        self.sizes.retain(|d, files| {
            let keep = !d.starts_with(dir);
            if !keep {
                gone += files.values().sum::<u64>();
            }
            keep
        });
        self.total -= gone;
        for (file, len) in walk(dir) {
            self.insert(file, len);
        }
    }
}

impl DiskUsage {
    /// Starts tracking the objects of the repository at `git_dir`.
    pub fn track(git_dir: &Path) -> Self {
        let objects = git_dir.join("objects");
        let mut tally = Tally::default();
        tally.rescan(&objects);
        let tally = Arc::new(Mutex::new(tally));
        let (dirty_tx, dirty_rx) = std::sync::mpsc::channel::<PathBuf>();
        let watcher = watch(&objects, move |paths| {
            for p in paths {
                // The directory whose listing changed (a directory that
                // appeared or went changes its parent's, and its own).
                if let Some(parent) = p.parent() {
                    let _ = dirty_tx.send(parent.to_owned());
                }
                let _ = dirty_tx.send(p);
            }
        });
        let watching = watcher.is_ok();
        if let Err(e) = &watcher {
            tracing::info!(error = %e, "cannot watch the object directory; its size is recounted every minute");
        }
        let weak = Arc::downgrade(&tally);
        let spawned = std::thread::Builder::new().name("gitcd-usage".into()).spawn(move || {
            loop {
                let mut dirty = std::collections::HashSet::new();
                if watching {
                    match dirty_rx.recv() {
                        Ok(d) => {
                            dirty.insert(d);
                        }
                        Err(_) => return,
                    }
                    std::thread::sleep(SETTLE);
                    dirty.extend(dirty_rx.try_iter());
                } else {
                    std::thread::sleep(FALLBACK_WALK);
                    dirty.insert(objects.clone());
                }
                let Some(tally) = weak.upgrade() else { return };
                let mut tally = tally.lock().expect("usage lock is never poisoned");
                for d in dirty {
                    tally.rescan(&d);
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the thread that counts the object directory");
        }
        Self {
            tally,
            _watcher: watcher.ok(),
        }
    }

    /// Counts `files`, just written, now (their notifications may come
    /// later; counting a file twice changes nothing).
    pub fn note(&self, files: &[PathBuf]) {
        let mut tally = self.tally.lock().expect("usage lock is never poisoned");
        for f in files {
            if let Ok(m) = std::fs::metadata(f) {
                tally.insert(f.clone(), m.len());
            }
        }
    }

    /// Bytes on disk now.
    pub fn bytes(&self) -> i64 {
        let total = self.tally.lock().expect("usage lock is never poisoned").total;
        i64::try_from(total).unwrap_or(i64::MAX)
    }
}

/// Every file below `dir`, with its size.
fn walk(dir: &Path) -> HashMap<PathBuf, u64> {
    let mut out = HashMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => {
                    out.insert(e.path(), m.len());
                }
                Err(_) => {}
            }
        }
    }
    out
}

fn watch(dir: &Path, on_change: impl Fn(Vec<PathBuf>) + Send + 'static) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        on_change(event.paths);
    })?;
    std::fs::create_dir_all(dir).map_err(|e| notify::Error::io(e).add_path(dir.to_owned()))?;
    watcher.watch(dir, notify::RecursiveMode::Recursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files others add and remove change the total, without a walk.
    #[test]
    fn follows_what_others_write() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("objects/pack"))?;
        std::fs::write(dir.path().join("objects/pack/a.pack"), vec![0; 1000])?;
        let usage = DiskUsage::track(dir.path());
        assert_eq!(usage.bytes(), 1000);
        std::fs::create_dir_all(dir.path().join("objects/ab"))?;
        std::fs::write(dir.path().join("objects/ab/cdef"), vec![0; 300])?;
        std::fs::write(dir.path().join("objects/pack/b.pack"), vec![0; 500])?;
        std::fs::remove_file(dir.path().join("objects/pack/a.pack"))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while usage.bytes() != 800 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(usage.bytes(), 800);
        Ok(())
    }

    /// What the writer notes counts at once, and once.
    #[test]
    fn noted_files_count_at_once() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let usage = DiskUsage::track(dir.path());
        let pack = dir.path().join("objects/pack/c.pack");
        std::fs::create_dir_all(pack.parent().expect("a parent"))?;
        std::fs::write(&pack, vec![0; 700])?;
        usage.note(std::slice::from_ref(&pack));
        assert_eq!(usage.bytes(), 700);
        usage.note(&[pack]);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(usage.bytes(), 700);
        Ok(())
    }
}
