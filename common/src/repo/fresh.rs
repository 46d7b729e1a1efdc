//! Objects durable in the journal and not yet in the pack directory.
//!
//! While writes queue, the writer moves the refs on disk at most every
//! 100 ms and records each group in the journal meanwhile. A group's pack
//! need not be a file before the refs that point at its objects move: the groups' packs wait here, in memory, readable by every
//! [`LocalRepo`](super::LocalRepo) of the same [`Repo`](super::Repo), and
//! are written out as one pack just before the refs move (or when they hold
//! too much). A group's two files (its pack and its index) were most of the
//! writer's kernel time on a file system that pays for every file created.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use gix::ObjectId;

use super::Kind;
use super::pack::PackBuilder;

/// Group packs held, and where each object is.
#[derive(Default)]
pub struct Fresh {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    packs: Vec<Arc<PackBuilder>>,
    /// Each object's pack (in `packs`) and entry.
    at: HashMap<ObjectId, (usize, usize)>,
    memory: usize,
}

impl Fresh {
    /// Holds `pack` (a group's, recorded in the journal).
    pub(super) fn add(&self, pack: PackBuilder) {
        let mut inner = self.inner.write().expect("fresh packs lock is never poisoned");
        let n = inner.packs.len();
        for (entry, id) in pack.ids().enumerate() {
            inner.at.entry(id).or_insert((n, entry));
        }
        inner.memory += pack.memory();
        inner.packs.push(Arc::new(pack));
    }

    /// Object `id`'s kind and content, if a pack held here has it.
    pub(super) fn find(&self, id: &ObjectId) -> Option<Result<(Kind, Vec<u8>), String>> {
        let inner = self.inner.read().expect("fresh packs lock is never poisoned");
        if inner.at.is_empty() {
            return None;
        }
        let &(pack, entry) = inner.at.get(id)?;
        Some(inner.packs[pack].object(entry))
    }

    /// Whether a pack held here has object `id`.
    pub(super) fn has(&self, id: &ObjectId) -> bool {
        let inner = self.inner.read().expect("fresh packs lock is never poisoned");
        !inner.at.is_empty() && inner.at.contains_key(id)
    }

    /// Bytes held: the packs and their trees.
    pub(super) fn memory(&self) -> usize {
        self.inner.read().expect("fresh packs lock is never poisoned").memory
    }

    /// The packs held, oldest first (they stay readable here).
    pub(super) fn packs(&self) -> Vec<Arc<PackBuilder>> {
        self.inner
            .read()
            .expect("fresh packs lock is never poisoned")
            .packs
            .clone()
    }

    /// Forgets every pack held: they are in the pack directory now. Only
    /// the writer adds packs, on the thread that writes them out, so none
    /// came in since [`Fresh::packs`].
    pub(super) fn clear(&self) {
        *self.inner.write().expect("fresh packs lock is never poisoned") = Inner::default();
    }
}
