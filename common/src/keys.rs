//! The key codec: etcd keys (arbitrary bytes) <-> paths in a Git tree.
//!
//! The common case stays natural: `/registry/pods/ns/name` is the file
//! `registry/pods/ns/name`. Everything else etcd accepts is escaped, with `%`
//! as the only escape character (see `docs/format.md`):
//!
//! * within a segment, `%XX` (upper-case hex) stands for a byte: `%` itself,
//!   control bytes (0x00-0x1f, 0x7f) and bytes that are not valid UTF-8;
//! * an empty segment (`//`, a trailing `/`) is the name `%`;
//! * `.`, `..` and names Git refuses as `.git` keep their text but their
//!   leading `.` (or `g` of `git~1`) is written `%2E` (`%67`);
//! * keys that do not start with `/` live below the top-level tree `%rel`;
//! * a key whose natural home is also a directory (because `/a` and `/a/b`
//!   both exist) is stored in that directory as the file `%self`.
//!
//! Decoding is total: every path of every repository maps to exactly one key.
//! Encoding followed by decoding is the identity; paths that are not what the
//! encoder writes (say `%zz`, or lower-case hex) still decode, to the key that
//! they spell.

/// Name of the file that holds the value of a key whose natural path is a
/// directory.
pub const SELF_NAME: &str = "%self";
/// Top-level directory holding keys that do not start with `/`.
pub const REL_DIR: &str = "%rel";
/// Name of an empty segment.
pub const EMPTY_SEGMENT: &str = "%";

/// The natural path of `key`: its tree entry names from the root.
///
/// The key's value lives at this path, or at this path plus [`SELF_NAME`] when
/// other keys live below it.
pub fn encode(key: &[u8]) -> Vec<String> {
    match key.strip_prefix(b"/") {
        Some(rest) => rest.split(|b| *b == b'/').map(encode_segment).collect(),
        None => std::iter::once(REL_DIR.to_owned())
            .chain(key.split(|b| *b == b'/').map(encode_segment))
            .collect(),
    }
}

/// The key stored at `path` (tree entry names from the root). Total: any
/// non-empty path decodes.
pub fn decode<S: AsRef<[u8]>>(path: &[S]) -> Vec<u8> {
    let mut names: Vec<&[u8]> = path.iter().map(AsRef::as_ref).collect();
    if names.len() > 1 && names.last() == Some(&SELF_NAME.as_bytes()) {
        names.pop();
    }
    let (mut key, names) = if names.len() > 1 && names[0] == REL_DIR.as_bytes() {
        (Vec::new(), &names[1..])
    } else {
        (vec![b'/'], &names[..])
    };
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            key.push(b'/');
        }
        decode_segment_into(name, &mut key);
    }
    key
}

/// Joins the entry names of a path with `/`, for messages and logs.
pub fn display_path(path: &[String]) -> String {
    path.join("/")
}

/// Encodes one `/`-free segment of a key as a tree entry name.
pub fn encode_segment(segment: &[u8]) -> String {
    if segment.is_empty() {
        return EMPTY_SEGMENT.to_owned();
    }
    let mut out = String::with_capacity(segment.len());
    if needs_leading_escape(segment) {
        push_escape(&mut out, segment[0]);
        escape_into(&segment[1..], &mut out);
    } else {
        escape_into(segment, &mut out);
    }
    out
}

/// Percent-escapes `bytes` so that the result is printable UTF-8: `%`,
/// control bytes and bytes outside valid UTF-8 become `%XX`.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    escape_into(bytes, &mut out);
    out
}

/// Reverses [`escape`]; a `%` not followed by two hex digits stands for itself.
pub fn unescape(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    unescape_into(text, &mut out);
    out
}

fn escape_into(bytes: &[u8], out: &mut String) {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '%' || c.is_ascii_control() {
                push_escape(out, c as u8);
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            push_escape(out, *b);
        }
    }
}

fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 0xf)] as char);
}

/// Names Git will not store (or check out) as written: `.`, `..`, and the
/// spellings of `.git` that Git's fsck rejects on some file system
/// (`.GIT`, `.git.`, `.git  `, `git~1`).
fn needs_leading_escape(segment: &[u8]) -> bool {
    if segment == b"." || segment == b".." {
        return true;
    }
    let lower = segment.to_ascii_lowercase();
    let trimmed = {
        let mut end = lower.len();
        while end > 0 && matches!(lower[end - 1], b' ' | b'.') {
            end -= 1;
        }
        &lower[..end]
    };
    trimmed == b".git" || lower == b"git~1"
}

fn decode_segment_into(name: &[u8], out: &mut Vec<u8>) {
    if name == EMPTY_SEGMENT.as_bytes() {
        return;
    }
    unescape_into(name, out);
}

fn unescape_into(text: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'%'
            && let (Some(h), Some(l)) = (
                text.get(i + 1).and_then(|c| hex(*c)),
                text.get(i + 2).and_then(|c| hex(*c)),
            )
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn natural_and_escaped_paths() {
        let cases: &[(&[u8], &[&str])] = &[
            (b"/registry/pods/ns/name", &["registry", "pods", "ns", "name"]),
            (b"/a", &["a"]),
            (b"compact_rev_key", &["%rel", "compact_rev_key"]),
            (b"a/b", &["%rel", "a", "b"]),
            (b"/", &["%"]),
            (b"/a//b/", &["a", "%", "b", "%"]),
            (b"/./../.git", &["%2E", "%2E.", "%2Egit"]),
            (b"/.GIT/git~1/.git. ", &["%2EGIT", "%67it~1", "%2Egit. "]),
            (b"/100%/x", &["100%25", "x"]),
            (b"/nul\0/nl\n", &["nul%00", "nl%0A"]),
            (b"/\xff\xfe/caf\xc3\xa9", &["%FF%FE", "café"]),
            (b"/%self", &["%25self"]),
            (b"/%rel/x", &["%25rel", "x"]),
            (b"/.gitignore", &[".gitignore"]),
        ];
        for (key, path) in cases {
            assert_eq!(encode(key), *path, "encode {:?}", String::from_utf8_lossy(key));
            assert_eq!(decode(path), *key, "decode {path:?}");
            let mut blocked: Vec<String> = path.iter().map(|s| s.to_string()).collect();
            blocked.push(SELF_NAME.to_owned());
            assert_eq!(decode(&blocked), *key, "decode {blocked:?}");
        }
    }

    #[test]
    fn decoding_is_total() {
        let cases: &[(&[&str], &[u8])] = &[
            (&["%zz"], b"/%zz"),
            (&["%2e"], b"/."),
            (&["%"], b"/"),
            (&["%self"], b"/%self"),
            (&["%rel"], b"/%rel"),
            (&["a%4"], b"/a%4"),
            (&["%41%"], b"/A%"),
        ];
        for (path, key) in cases {
            assert_eq!(decode(path), *key, "decode {path:?}");
        }
    }

    #[test]
    fn escape_round_trip_in_metadata_text() {
        let key = b"/a b/%/\n\xff";
        assert_eq!(escape(key), "/a b/%25/%0A%FF");
        assert_eq!(unescape(escape(key).as_bytes()), key);
    }

    proptest! {
        #[test]
        fn round_trip(key in proptest::collection::vec(any::<u8>(), 1..40)) {
            let path = encode(&key);
            prop_assert_eq!(decode(&path), key.clone());
            for name in &path {
                prop_assert!(!name.is_empty());
                prop_assert!(!name.contains('/'));
                prop_assert!(!name.contains('\0'));
                prop_assert!(name != "." && name != ".." && !name.eq_ignore_ascii_case(".git"));
            }
            let mut blocked = path.clone();
            blocked.push(SELF_NAME.to_owned());
            prop_assert_eq!(decode(&blocked), key.clone());
            prop_assert_eq!(unescape(escape(&key).as_bytes()), key);
        }

        #[test]
        fn slashy_keys_round_trip(parts in proptest::collection::vec("[a-c./%]{0,3}", 1..6), rel in any::<bool>()) {
            let mut key = if rel { Vec::new() } else { b"/".to_vec() };
            key.extend(parts.join("/").into_bytes());
            prop_assume!(!key.is_empty());
            prop_assert_eq!(decode(&encode(&key)), key);
        }
    }
}
