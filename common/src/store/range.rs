//! Range semantics shared by current and historical reads: key intervals,
//! revision checks, filters, sorting, limits and counts, as etcd does them.

use std::ops::Bound;

use bytes::Bytes;

use super::{Error, Kv, Snapshot};
use crate::proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader, range_request};

/// The keys a request names: etcd's `key` + `range_end` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    /// `range_end` empty: one key.
    Single(Bytes),
    /// `[start, end)`; `end` of `None` (`range_end` = `"\0"`) is unbounded.
    Interval { start: Bytes, end: Option<Bytes> },
}

impl KeyRange {
    pub fn from_request(key: &Bytes, range_end: &Bytes) -> Self {
        if range_end.is_empty() {
            KeyRange::Single(key.clone())
        } else if range_end.as_ref() == b"\0" {
            KeyRange::Interval {
                start: key.clone(),
                end: None,
            }
        } else {
            KeyRange::Interval {
                start: key.clone(),
                end: Some(range_end.clone()),
            }
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => k.as_ref() == key,
            KeyRange::Interval { start, end } => key >= start.as_ref() && end.as_ref().is_none_or(|e| key < e.as_ref()),
        }
    }

    /// The live entries of `map` in this range, in key order.
    pub fn iter<'a>(&self, map: &'a imbl::OrdMap<Bytes, Kv>) -> Box<dyn Iterator<Item = (&'a Bytes, &'a Kv)> + 'a> {
        match self {
            KeyRange::Single(k) => Box::new(map.get_key_value(k.as_ref()).into_iter()),
            KeyRange::Interval { start, end } => {
                let lower = Bound::Included(start.as_ref());
                match end {
                    None => Box::new(map.range::<_, [u8]>((lower, Bound::Unbounded))),
                    Some(e) if e.as_ref() <= start.as_ref() => Box::new(std::iter::empty()),
                    Some(e) => Box::new(map.range::<_, [u8]>((lower, Bound::Excluded(e.as_ref())))),
                }
            }
        }
    }
}

/// Checks a Range's `revision` against the snapshot the way etcd's
/// `rangeKeys` does. `None` means "read the snapshot itself".
pub fn read_revision(snap: &Snapshot, revision: i64) -> Result<Option<i64>, Error> {
    if revision > snap.revision {
        return Err(Error::FutureRevision);
    }
    let rev = if revision <= 0 { snap.revision } else { revision };
    if rev < snap.compact_revision {
        return Err(Error::Compacted);
    }
    Ok((rev != snap.revision).then_some(rev))
}

/// A Range over the snapshot at its own revision.
pub fn range_snapshot(snap: &Snapshot, req: &RangeRequest) -> RangeResponse {
    range_map(&snap.kvs, snap.revision, req)
}

/// A Range over `map`, answering with header revision `revision`.
pub fn range_map(map: &imbl::OrdMap<Bytes, Kv>, revision: i64, req: &RangeRequest) -> RangeResponse {
    let range = KeyRange::from_request(&req.key, &req.range_end);
    let entries = range.iter(map);
    if pushes_down_limit(req) {
        // The common case: count everything, materialise only `limit + 1`.
        let mut count = 0i64;
        let mut kvs = Vec::new();
        let want = if req.limit > 0 {
            req.limit as usize + 1
        } else {
            usize::MAX
        };
        for (k, v) in entries {
            count += 1;
            if !req.count_only && kvs.len() < want {
                kvs.push((k.clone(), v.clone()));
            }
        }
        select(req, revision, count, kvs.into_iter())
    } else {
        let kvs: Vec<(Bytes, Kv)> = entries.map(|(k, v)| (k.clone(), v.clone())).collect();
        select(req, revision, kvs.len() as i64, kvs.into_iter())
    }
}

fn pushes_down_limit(req: &RangeRequest) -> bool {
    req.sort_order == range_request::SortOrder::None as i32
        && req.sort_target == range_request::SortTarget::Key as i32
        && req.min_mod_revision == 0
        && req.max_mod_revision == 0
        && req.min_create_revision == 0
        && req.max_create_revision == 0
}

/// Applies etcd's post-processing to the entries of a range: revision
/// filters, sorting, `limit`/`more`, `keys_only`, `count_only`. `count` is
/// the number of keys in the range, unaffected by limit and filters.
pub fn select(
    req: &RangeRequest,
    revision: i64,
    count: i64,
    entries: impl Iterator<Item = (Bytes, Kv)>,
) -> RangeResponse {
    let header = Some(ResponseHeader {
        revision,
        ..Default::default()
    });
    if req.count_only {
        return RangeResponse {
            header,
            kvs: Vec::new(),
            more: false,
            count,
        };
    }
    let mut kvs: Vec<(Bytes, Kv)> = entries
        .filter(|(_, kv)| {
            let m = &kv.meta;
            (req.max_mod_revision == 0 || m.mod_revision <= req.max_mod_revision)
                && (req.min_mod_revision == 0 || m.mod_revision >= req.min_mod_revision)
                && (req.max_create_revision == 0 || m.create_revision <= req.max_create_revision)
                && (req.min_create_revision == 0 || m.create_revision >= req.min_create_revision)
        })
        .collect();
    let mut order = req.sort_order;
    if req.sort_target != range_request::SortTarget::Key as i32 && order == range_request::SortOrder::None as i32 {
        order = range_request::SortOrder::Ascend as i32;
    }
    if order != range_request::SortOrder::None as i32 {
        use range_request::SortTarget as T;
        match T::try_from(req.sort_target).unwrap_or(T::Key) {
            T::Key => kvs.sort_by(|a, b| a.0.cmp(&b.0)),
            T::Version => kvs.sort_by_key(|e| e.1.meta.version),
            T::Create => kvs.sort_by_key(|e| e.1.meta.create_revision),
            T::Mod => kvs.sort_by_key(|e| e.1.meta.mod_revision),
            T::Value => kvs.sort_by(|a, b| a.1.value.cmp(&b.1.value)),
        }
        if order == range_request::SortOrder::Descend as i32 {
            kvs.reverse();
        }
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    RangeResponse {
        header,
        kvs: kvs
            .into_iter()
            .map(|(k, kv)| {
                let mut p = kv.to_proto(&k);
                if req.keys_only {
                    p.value = Bytes::new();
                }
                p
            })
            .collect(),
        more,
        count,
    }
}

#[cfg(test)]
mod tests {
    //! etcd's Range post-processing, on entries in memory.

    use super::*;
    use crate::meta::KeyMeta;
    use range_request::{SortOrder, SortTarget};

    fn entries() -> Vec<(Bytes, Kv)> {
        // key, create, mod, version, value
        [("/a", 2, 9, 3, "z"), ("/b", 3, 3, 1, "y"), ("/c", 4, 5, 2, "x")]
            .into_iter()
            .map(|(k, c, m, v, value)| {
                (
                    Bytes::from_static(k.as_bytes()),
                    Kv {
                        meta: KeyMeta {
                            create_revision: c,
                            mod_revision: m,
                            version: v,
                            lease: 0,
                            time: 0,
                        },
                        value: Bytes::from_static(value.as_bytes()),
                    },
                )
            })
            .collect()
    }

    fn keys(r: &RangeResponse) -> Vec<&[u8]> {
        r.kvs.iter().map(|kv| kv.key.as_ref()).collect()
    }

    #[test]
    fn count_ignores_limit_and_filters() {
        let req = RangeRequest {
            limit: 1,
            min_mod_revision: 5,
            ..Default::default()
        };
        let r = select(&req, 10, 3, entries().into_iter());
        assert_eq!(r.count, 3, "count is the whole range");
        assert_eq!(keys(&r), [b"/a"]);
        assert!(r.more, "one more passes the filter");
        let count_only = RangeRequest {
            count_only: true,
            ..Default::default()
        };
        let r = select(&count_only, 10, 3, entries().into_iter());
        assert!(r.kvs.is_empty() && r.count == 3 && !r.more);
    }

    #[test]
    fn sorting_and_keys_only() {
        let by = |target: SortTarget, order: SortOrder| RangeRequest {
            sort_target: target as i32,
            sort_order: order as i32,
            keys_only: true,
            ..Default::default()
        };
        let r = select(&by(SortTarget::Mod, SortOrder::Descend), 10, 3, entries().into_iter());
        assert_eq!(keys(&r), [b"/a", b"/c", b"/b"]);
        assert!(r.kvs.iter().all(|kv| kv.value.is_empty()), "keys only");
        assert!(r.kvs.iter().all(|kv| kv.mod_revision != 0), "with their revisions");
        // A target other than the key with no order sorts ascending (etcd).
        let r = select(&by(SortTarget::Value, SortOrder::None), 10, 3, entries().into_iter());
        assert_eq!(keys(&r), [b"/c", b"/b", b"/a"]);
        let r = select(&by(SortTarget::Key, SortOrder::Descend), 10, 3, entries().into_iter());
        assert_eq!(keys(&r), [b"/c", b"/b", b"/a"]);
    }

    #[test]
    fn revision_checks() {
        let snap = Snapshot {
            compact_revision: 4,
            ..Snapshot::empty(10)
        };
        assert!(matches!(read_revision(&snap, 11), Err(Error::FutureRevision)));
        assert!(matches!(read_revision(&snap, 3), Err(Error::Compacted)));
        assert!(
            matches!(read_revision(&snap, 4), Ok(Some(4))),
            "the compact revision itself is readable"
        );
        assert!(matches!(read_revision(&snap, 0), Ok(None)));
        assert!(matches!(read_revision(&snap, 10), Ok(None)));
    }
}
