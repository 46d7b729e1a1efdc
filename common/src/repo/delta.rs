//! Git deltas between two versions of a tree. A tree is a sorted list of
//! entries (`<mode> <name>\0<20-byte id>`), and one version differs from the
//! previous in a few entries: walking both lists together finds the entries
//! that stayed (copied from the base) and the ones that are new (inserted),
//! with no search. The format is Git's (pack-format.txt, "Deltified
//! representation"): the two sizes, then copy and insert instructions.

use std::cmp::Ordering;
use std::ops::Range;

/// Most bytes one copy instruction may take (three size bytes).
const MAX_COPY: usize = 0x00ff_ffff;
/// Most bytes one insert instruction may carry.
const MAX_INSERT: usize = 0x7f;

/// Most bytes a one-splice delta inserts (see [`splice_delta`]).
const MAX_SPLICE: usize = 256;

/// The delta that turns tree `base` into tree `new`. Correct for any two
/// byte strings that parse as trees (a malformed tail is inserted whole).
pub fn tree_delta(base: &[u8], new: &[u8]) -> Vec<u8> {
    if let Some(delta) = splice_delta(base, new) {
        return delta;
    }
    let mut out = Vec::with_capacity(64);
    push_size(&mut out, base.len());
    push_size(&mut out, new.len());
    let olds = entries(base);
    let mut old = olds.iter().peekable();
    let mut copy: Option<Range<usize>> = None;
    let mut insert = Vec::new();
    let mut end = 0;
    for entry in entries(new) {
        end = entry.bytes.end;
        let unchanged = |o: &&Entry<'_>| base[o.bytes.clone()] == new[entry.bytes.clone()];
        // Most entries are the next old one, unchanged: one comparison of
        // bytes, no ordering.
        let same = match old.next_if(unchanged) {
            Some(o) => Some(o),
            None => {
                while old.next_if(|o| o.key < entry.key).is_some() {}
                old.next_if(unchanged)
            }
        };
        match same {
            Some(o) => {
                flush_insert(&mut out, &mut insert);
                copy = match copy {
                    Some(c) if c.end == o.bytes.start => Some(c.start..o.bytes.end),
                    Some(c) => {
                        push_copy(&mut out, c);
                        Some(o.bytes.clone())
                    }
                    None => Some(o.bytes.clone()),
                };
            }
            None => {
                if let Some(c) = copy.take() {
                    push_copy(&mut out, c);
                }
                insert.extend_from_slice(&new[entry.bytes.clone()]);
            }
        }
    }
    if let Some(c) = copy {
        push_copy(&mut out, c);
    }
    insert.extend_from_slice(&new[end..]);
    flush_insert(&mut out, &mut insert);
    out
}

/// The delta that copies the bytes `base` and `new` begin and end with and
/// inserts the rest, when that is at most [`MAX_SPLICE`] bytes: a version of
/// a tree in a group mostly differs from the one before in one entry, and
/// two scans for the common ends find it without parsing either tree. Git's
/// deltas copy and insert bytes, so the ends need not fall on entries.
fn splice_delta(base: &[u8], new: &[u8]) -> Option<Vec<u8>> {
    let prefix = common_prefix(base, new);
    let (base_rest, new_rest) = (&base[prefix..], &new[prefix..]);
    let suffix = common_suffix(base_rest, new_rest);
    let middle = &new_rest[..new_rest.len() - suffix];
    if middle.len() > MAX_SPLICE {
        return None;
    }
    let mut out = Vec::with_capacity(32 + middle.len());
    push_size(&mut out, base.len());
    push_size(&mut out, new.len());
    push_copy(&mut out, 0..prefix);
    flush_insert(&mut out, &mut middle.to_vec());
    push_copy(&mut out, base.len() - suffix..base.len());
    Some(out)
}

/// Bytes compared at a time by [`common_prefix`] and [`common_suffix`]
/// before the last, partial chunk is compared a byte at a time.
const CHUNK: usize = 32;

/// How many bytes `a` and `b` begin with in common.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let len = a.len().min(b.len());
    let mut at = 0;
    while at + CHUNK <= len && a[at..at + CHUNK] == b[at..at + CHUNK] {
        at += CHUNK;
    }
    at + a[at..len].iter().zip(&b[at..len]).take_while(|(x, y)| x == y).count()
}

/// How many bytes `a` and `b` end with in common.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let len = a.len().min(b.len());
    let (a, b) = (&a[a.len() - len..], &b[b.len() - len..]);
    let mut n = 0;
    while n + CHUNK <= len && a[len - n - CHUNK..len - n] == b[len - n - CHUNK..len - n] {
        n += CHUNK;
    }
    n + a[..len - n]
        .iter()
        .rev()
        .zip(b[..len - n].iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

struct Entry<'a> {
    /// The name, with `/` after a tree's: Git's sort order.
    key: SortKey<'a>,
    bytes: Range<usize>,
}

#[derive(PartialEq, Eq)]
struct SortKey<'a> {
    name: &'a [u8],
    is_tree: bool,
}

impl Ord for SortKey<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        let common = self.name.len().min(other.name.len());
        match self.name[..common].cmp(&other.name[..common]) {
            Ordering::Equal => {}
            unequal => return unequal,
        }
        // One name is a prefix of the other: what follows decides, a tree's
        // name followed by `/`.
        let rest = |k: &Self| k.name[common..].iter().copied().chain(k.is_tree.then_some(b'/'));
        rest(self).cmp(rest(other))
    }
}

impl PartialOrd for SortKey<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The entries of tree body `tree`, up to the first malformed one.
fn entries(tree: &[u8]) -> Vec<Entry<'_>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < tree.len() {
        let rest = &tree[at..];
        let Some(space) = memchr::memchr(b' ', rest) else {
            break;
        };
        let Some(nul) = memchr::memchr(0, rest) else {
            break;
        };
        let end = nul + 21;
        if nul < space || end > rest.len() {
            break;
        }
        out.push(Entry {
            key: SortKey {
                name: &rest[space + 1..nul],
                is_tree: &rest[..space] == b"40000",
            },
            bytes: at..at + end,
        });
        at += end;
    }
    out
}

/// A size in the delta header: 7 bits a byte, least significant first.
fn push_size(out: &mut Vec<u8>, mut size: usize) {
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Copy instructions for `range` of the base: a flag byte saying which
/// offset and size bytes follow, then those bytes (zero bytes left out).
fn push_copy(out: &mut Vec<u8>, range: Range<usize>) {
    let mut start = range.start;
    while start < range.end {
        let size = (range.end - start).min(MAX_COPY);
        let at = out.len();
        out.push(0x80);
        let offset = u32::try_from(start).expect("trees are smaller than 4 GiB");
        for (i, byte) in offset.to_le_bytes().into_iter().enumerate() {
            if byte != 0 {
                out[at] |= 1 << i;
                out.push(byte);
            }
        }
        for (i, byte) in (size as u32).to_le_bytes().into_iter().take(3).enumerate() {
            if byte != 0 {
                out[at] |= 0x10 << i;
                out.push(byte);
            }
        }
        start += size;
    }
}

/// Insert instructions for the bytes gathered in `insert`, which it empties.
fn flush_insert(out: &mut Vec<u8>, insert: &mut Vec<u8>) {
    for chunk in insert.chunks(MAX_INSERT) {
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
    insert.clear();
}

/// Applies Git delta `delta` to `base`; `None` when the delta is malformed
/// or not made for a base of this size (a journal read after a crash is
/// checked, not trusted).
pub fn apply(base: &[u8], delta: &[u8]) -> Option<Vec<u8>> {
    let mut at = 0;
    let mut size = || {
        let (mut value, mut shift) = (0usize, 0u32);
        loop {
            let b = *delta.get(at)?;
            at += 1;
            value |= usize::from(b & 0x7f).checked_shl(shift)?;
            shift += 7;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
    };
    if size()? != base.len() {
        return None;
    }
    let want = size()?;
    let mut out = Vec::with_capacity(want);
    while at < delta.len() {
        let cmd = delta[at];
        at += 1;
        if cmd & 0x80 != 0 {
            let mut field = |bits: Range<u8>| {
                let mut v = 0usize;
                for (i, bit) in bits.enumerate() {
                    if cmd & (1 << bit) != 0 {
                        v |= usize::from(*delta.get(at)?) << (8 * i);
                        at += 1;
                    }
                }
                Some(v)
            };
            let offset = field(0..4)?;
            let size = match field(4..7)? {
                0 => 0x10000,
                s => s,
            };
            out.extend_from_slice(base.get(offset..offset.checked_add(size)?)?);
        } else if cmd == 0 {
            return None;
        } else {
            let n = usize::from(cmd);
            out.extend_from_slice(delta.get(at..at + n)?);
            at += n;
        }
        if out.len() > want {
            return None;
        }
    }
    (out.len() == want).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(base: &[u8], delta: &[u8]) -> Vec<u8> {
        super::apply(base, delta).expect("a delta we made applies")
    }

    /// A tree of `(mode, name, id byte)` entries, given in Git's order.
    fn tree(entries: &[(&str, &str, u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (mode, name, id) in entries {
            out.extend_from_slice(format!("{mode} {name}\0").as_bytes());
            out.extend_from_slice(&[*id; 20]);
        }
        out
    }

    #[test]
    fn delta_rebuilds_the_new_tree() {
        let base = tree(&[
            ("100644", "a", 1),
            ("100644", "b.c", 3),
            ("40000", "b", 2),
            ("100644", "d", 4),
            ("100644", "e", 5),
        ]);
        let cases = [
            base.clone(),
            tree(&[]),
            tree(&[
                ("100644", "a", 1),
                ("100644", "b.c", 3),
                ("40000", "b", 9),
                ("100644", "e", 5),
            ]),
            tree(&[
                ("100644", "0", 7),
                ("100644", "a", 1),
                ("100644", "b.c", 3),
                ("100644", "d", 4),
                ("100644", "e", 5),
                ("100644", "f", 6),
            ]),
            [tree(&[("100644", "x", 8)]), vec![b'z'; 300]].concat(),
        ];
        for new in cases {
            let delta = tree_delta(&base, &new);
            assert_eq!(apply(&base, &delta), new);
        }
        // Mostly copies when little changed.
        let changed = tree(&[
            ("100644", "a", 1),
            ("100644", "b.c", 3),
            ("40000", "b", 9),
            ("100644", "d", 4),
            ("100644", "e", 5),
        ]);
        let delta = tree_delta(&base, &changed);
        assert!(delta.len() < 48, "{} bytes: {delta:?}", delta.len());
    }

    /// The one-splice path: ends in common whatever their length, the
    /// middle inserted, anything longer left to the entry-wise walk.
    #[test]
    fn one_splice_deltas() {
        let cases: [(&[u8], &[u8]); 7] = [
            (b"", b""),
            (b"abc", b"abc"),
            (b"abcdef", b"abXdef"),
            (b"abcdef", b"abdef"),
            (b"abdef", b"abcccdef"),
            (b"aaaa", b"aa"),
            (b"xyz", b""),
        ];
        for (base, new) in cases {
            let delta = splice_delta(base, new).expect("small changes splice");
            assert_eq!(apply(base, &delta), new);
        }
        let base: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut new = base.clone();
        new[77_777] ^= 1;
        new.splice(1000..1000, [7u8; 200]);
        assert!(splice_delta(&base, &new).is_none(), "two changes far apart");
        let mut one = base.clone();
        one[300_001] ^= 0xff;
        let delta = tree_delta(&base, &one);
        assert_eq!(apply(&base, &delta), one);
        assert!(delta.len() < 32, "{} bytes", delta.len());
        assert_eq!(common_prefix(&base, &one), 300_001);
        assert_eq!(common_suffix(&base, &one), base.len() - 300_002);
    }

    #[test]
    fn long_copies_and_offsets() {
        let names: Vec<String> = (0..20_000).map(|i| format!("{i:08}")).collect();
        let base = tree(&names.iter().map(|n| ("100644", n.as_str(), 1)).collect::<Vec<_>>());
        let mut entries: Vec<(&str, &str, u8)> = names.iter().map(|n| ("100644", n.as_str(), 1)).collect();
        entries[15_000].2 = 2;
        entries.remove(100);
        let new = tree(&entries);
        let delta = tree_delta(&base, &new);
        assert_eq!(apply(&base, &delta), new);
        assert!(delta.len() < 100, "{} bytes", delta.len());
    }
}
