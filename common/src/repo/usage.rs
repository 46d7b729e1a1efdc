//! How much disk the repository's objects take, as a running total: the
//! object directory is walked once, then inotify says which directories
//! changed (gitcd's packs, and what `git fetch`, `git push`, `git gc` or a
//! person add or remove) and a background thread lists just those again,
//! so reading the size is an atomic load, never a walk. Without inotify, a
//! background walk every minute keeps it close.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// The objects' size on disk.
pub struct DiskUsage {
    total: Arc<AtomicI64>,
    _watcher: Option<notify::RecommendedWatcher>,
}

/// How often the size is recounted when no notifications come.
const FALLBACK_WALK: Duration = Duration::from_secs(60);
/// Changes in a directory are counted together after this quiet time (a
/// group's pack makes four events).
const SETTLE: Duration = Duration::from_millis(50);

/// Files by directory.
type Sizes = HashMap<PathBuf, HashMap<PathBuf, u64>>;

impl DiskUsage {
    /// Starts tracking the objects of the repository at `git_dir`.
    pub fn track(git_dir: &Path) -> Self {
        let objects = git_dir.join("objects");
        let mut sizes: Sizes = HashMap::new();
        for (file, len) in walk(&objects) {
            let dir = file.parent().map(Path::to_owned).unwrap_or_default();
            sizes.entry(dir).or_default().insert(file, len);
        }
        let total = Arc::new(AtomicI64::new(sum(&sizes)));
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
        let weak = Arc::downgrade(&total);
        let spawned = std::thread::Builder::new().name("gitcd-usage".into()).spawn(move || {
            let mut sizes = sizes;
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
                    sizes.clear();
                }
                let Some(total) = weak.upgrade() else { return };
                for d in dirty {
                    rescan(&mut sizes, &d);
                }
                total.store(sum(&sizes), Ordering::Relaxed);
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the thread that counts the object directory");
        }
        Self {
            total,
            _watcher: watcher.ok(),
        }
    }

    /// Bytes on disk now.
    pub fn bytes(&self) -> i64 {
        self.total.load(Ordering::Relaxed).max(0)
    }
}

/// Lists directory `dir` again (and what is below it, when it is new or
/// went): its files' sizes replace what was known of it.
fn rescan(sizes: &mut Sizes, dir: &Path) {
    sizes.retain(|d, _| !d.starts_with(dir));
    for (file, len) in walk(dir) {
        let parent = file.parent().map(Path::to_owned).unwrap_or_default();
        sizes.entry(parent).or_default().insert(file, len);
    }
}

fn sum(sizes: &Sizes) -> i64 {
    i64::try_from(sizes.values().flat_map(|f| f.values()).sum::<u64>()).unwrap_or(i64::MAX)
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
}
