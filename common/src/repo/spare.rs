//! Empty files made ahead of need. Creating a file is the costly part of
//! writing a group's pack and index on some file systems (ext4 without a
//! journal scans past every recently freed inode of the block group at each
//! creation), so a background thread keeps a few temporary files ready in the
//! pack directory and the writer only fills and renames them.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Files kept ready.
const READY: usize = 4;

pub struct Spares {
    ready: Option<Receiver<(PathBuf, File)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spares {
    /// Starts keeping files ready in `dir` (named like the temporary files
    /// of a pack being written, `tmp_<number>.pack`, so that a start's
    /// clean-up removes any left behind).
    pub fn start(dir: &Path) -> Self {
        let (tx, rx) = sync_channel(READY);
        let dir = dir.to_owned();
        let thread = std::thread::Builder::new()
            .name("gitcd-spares".into())
            .spawn(move || make(&dir, &tx))
            .ok();
        Self {
            ready: thread.as_ref().map(|_| rx),
            thread,
        }
    }

    /// A ready file, empty and open for writing, if there is one.
    pub fn take(&self) -> Option<(PathBuf, File)> {
        self.ready.as_ref()?.try_recv().ok()
    }
}

fn make(dir: &Path, tx: &SyncSender<(PathBuf, File)>) {
    loop {
        let path = dir.join(format!("tmp_{}.pack", rand::random::<u64>()));
        let file = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(error = %e, dir = %dir.display(), "cannot make a spare file; the writer creates its own");
                return;
            }
        };
        if let Err(back) = tx.send((path, file)) {
            let _ = fs::remove_file(&back.0.0);
            return;
        }
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        if let Some(rx) = self.ready.take() {
            while let Ok((path, _)) = rx.try_recv() {
                let _ = fs::remove_file(path);
            }
            drop(rx);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
