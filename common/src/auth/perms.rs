//! Permission intervals and how a request's key range is checked against
//! them, as etcd's interval tree does (`server/auth/range_perm_cache.go`):
//! a permission is the point `key` (`range_end` empty), the interval
//! `[key, range_end)`, or `[key, ∞)` (`range_end` = `"\0"`); a request for one
//! key needs a permission containing it, a request for a range needs the
//! permissions overlapping it to cover it without a gap.

use std::cmp::Ordering;

use super::Permission;

/// An interval end: `None` is past every key (etcd's empty
/// `BytesAffineComparable`).
type End = Option<Vec<u8>>;

fn cmp_end(a: &End, b: &End) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(a), Some(b)) => a.cmp(b),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Interval {
    begin: Vec<u8>,
    end: End,
}

impl Interval {
    /// A permission's interval: a point is `[key, key\0)`.
    fn of(key: &[u8], range_end: &[u8]) -> Self {
        let end = if range_end.is_empty() {
            let mut e = key.to_vec();
            e.push(0);
            Some(e)
        } else if range_end == b"\0" {
            None
        } else {
            Some(range_end.to_vec())
        };
        Self {
            begin: key.to_vec(),
            end,
        }
    }

    fn overlaps(&self, other: &Interval) -> bool {
        let begin_before_end = |begin: &[u8], end: &End| end.as_ref().is_none_or(|e| begin < e.as_slice());
        begin_before_end(&self.begin, &other.end) && begin_before_end(&other.begin, &self.end)
    }
}

/// One user's permissions, merged over their roles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    read: Vec<Interval>,
    write: Vec<Interval>,
}

impl Access {
    pub fn new<'a>(perms: impl Iterator<Item = &'a Permission>) -> Self {
        let mut a = Access::default();
        for p in perms {
            let i = Interval::of(&p.key, &p.range_end);
            if p.kind.reads() {
                a.read.push(i.clone());
            }
            if p.kind.writes() {
                a.write.push(i);
            }
        }
        a.read.sort_by(|x, y| x.begin.cmp(&y.begin));
        a.write.sort_by(|x, y| x.begin.cmp(&y.begin));
        a
    }

    /// Whether the request range `[key, range_end)` (`range_end` empty: the
    /// key alone; `"\0"`: everything from `key`) is allowed for reading or
    /// writing.
    pub fn allows(&self, key: &[u8], range_end: &[u8], write: bool) -> bool {
        let perms = if write { &self.write } else { &self.read };
        if range_end.is_empty() {
            let point = Interval::of(key, b"");
            return perms.iter().any(|p| p.overlaps(&point));
        }
        let wanted = Interval {
            begin: key.to_vec(),
            end: if range_end == b"\0" {
                None
            } else {
                Some(range_end.to_vec())
            },
        };
        // etcd's `Contains`: the overlapping permissions, in order of their
        // starts, must leave no gap and reach past both ends.
        let mut covered: Option<(Vec<u8>, End)> = None;
        for p in perms.iter().filter(|p| p.overlaps(&wanted)) {
            match &mut covered {
                None => covered = Some((p.begin.clone(), p.end.clone())),
                Some((_, max_end)) => {
                    if cmp_end(max_end, &Some(p.begin.clone())) == Ordering::Less {
                        return false;
                    }
                    if cmp_end(&p.end, max_end) == Ordering::Greater {
                        *max_end = p.end.clone();
                    }
                }
            }
        }
        covered.is_some_and(|(min_begin, max_end)| {
            min_begin <= wanted.begin && cmp_end(&max_end, &wanted.end) != Ordering::Less
        })
    }
}

/// etcd's `isValidPermissionRange`: a non-empty key, and an end that is
/// empty (one key), `"\0"` (from the key on), or after the key.
pub fn is_valid_range(key: &[u8], range_end: &[u8]) -> bool {
    if key.is_empty() {
        return false;
    }
    range_end.is_empty() || range_end == b"\0" || key < range_end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ranges() {
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"a", b"", true),
            (b"a", b"\0", true),
            (b"a", b"b", true),
            (b"b", b"a", false),
            (b"a", b"a", false),
            (b"", b"", false),
        ];
        for (k, e, ok) in cases {
            assert_eq!(is_valid_range(k, e), *ok, "{k:?} {e:?}");
        }
    }
}
