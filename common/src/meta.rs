//! The metadata format: gitcd's per-key bookkeeping and the store's root
//! entries, as stored in the metadata tree (see `docs/format.md`).
//!
//! Layout of a metadata tree:
//!
//! ```text
//! format      "gitcd/3" (read too: "gitcd/2", "gitcd/1"; see READ_FORMATS)
//! revision    the store revision this commit brings the store to
//! data        the id of the data commit this revision describes
//! compact     the compact revision (absent until the first Compact)
//! leases      one line per lease: "<id> <ttl>" (absent when none)
//! log         only in a commit grouping several revisions: each one's changes
//! keys/ab/c/def…  one blob per key, in a trie named by the SHA-1 of the key
//!                 bytes (see `key_hex`): key, create, mod, version, lease,
//!                 time (see `encode_key`)
//! ```

use std::fmt::Write as _;

/// The value of the `format` root entry this code writes.
pub const FORMAT: &str = "gitcd/3";
/// The formats this code reads. `gitcd/1`'s logs hold every value inline
/// (no `putblob` lines); `gitcd/1` and `gitcd/2` keep every key's blob one
/// level below its `keys/` directory, which is a trie that has not split
/// yet. So an older store is read as it is, its next commit is of format 3,
/// and its directories split as they grow.
pub const READ_FORMATS: [&str; 3] = ["gitcd/1", "gitcd/2", FORMAT];
/// Root entry names.
pub const FORMAT_ENTRY: &str = "format";
pub const REVISION_ENTRY: &str = "revision";
pub const DATA_ENTRY: &str = "data";
pub const COMPACT_ENTRY: &str = "compact";
pub const LEASES_ENTRY: &str = "leases";
pub const ALARMS_ENTRY: &str = "alarms";
pub const KEYS_DIR: &str = "keys";
pub const LOG_ENTRY: &str = "log";

/// The bookkeeping etcd keeps for a live key, and the time its value was
/// written (what the `newest` merge policy compares).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct KeyMeta {
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
    /// When the value was written, in nanoseconds since the Unix epoch; 0
    /// when unknown. A merge carries it with the value: merging does not
    /// make a value newer.
    pub time: i64,
}

/// A metadata blob that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("malformed metadata blob: {reason}")]
pub struct ParseError {
    reason: String,
}

impl ParseError {
    pub fn new(reason: impl Into<String>) -> Self {
        Self { reason: reason.into() }
    }
}

/// Hex digits of the key's SHA-1 that name its directory right below
/// `keys/` (256 of them, as in formats 1 and 2).
pub const KEYS_TOP_DIGITS: usize = 2;
/// Most blobs a directory of the keys trie holds before it splits by the
/// next digit: a write rewrites the directories on its key's path, so their
/// size, not the number of keys, is what a write costs.
pub const KEYS_MAX_LEAF: usize = 32;

/// The 40 hex digits of a key's SHA-1, which place its metadata blob in the
/// `keys/` trie: the first [`KEYS_TOP_DIGITS`] name a directory, then one
/// digit per directory level as deep as the trie has split there, and the
/// rest name the blob.
pub fn key_hex(key: &[u8]) -> [u8; 40] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 40];
    for (i, b) in <sha1::Sha1 as sha1::Digest>::digest(key).iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
    out
}

/// Encodes a key's metadata blob: one `name value` line per field, the key
/// itself first (percent-escaped, see [`crate::keys::escape`]).
pub fn encode_key(key: &[u8], meta: &KeyMeta) -> Vec<u8> {
    let mut out = String::with_capacity(key.len() + 64);
    let _ = writeln!(out, "key {}", crate::keys::escape(key));
    let _ = writeln!(out, "create {}", meta.create_revision);
    let _ = writeln!(out, "mod {}", meta.mod_revision);
    let _ = writeln!(out, "version {}", meta.version);
    if meta.lease != 0 {
        let _ = writeln!(out, "lease {}", meta.lease);
    }
    if meta.time != 0 {
        let _ = writeln!(out, "time {}", meta.time);
    }
    out.into_bytes()
}

/// Decodes a key's metadata blob into the key and its metadata.
pub fn decode_key(blob: &[u8]) -> Result<(Vec<u8>, KeyMeta), ParseError> {
    let mut key = None;
    let mut meta = KeyMeta::default();
    for line in blob.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let (name, value) = split_field(line)?;
        match name {
            b"key" => key = Some(crate::keys::unescape(value)),
            b"create" => meta.create_revision = parse_int(name, value)?,
            b"mod" => meta.mod_revision = parse_int(name, value)?,
            b"version" => meta.version = parse_int(name, value)?,
            b"lease" => meta.lease = parse_int(name, value)?,
            b"time" => meta.time = parse_int(name, value)?,
            // Unknown fields are kept for forward compatibility: ignored.
            _ => {}
        }
    }
    let key = key.ok_or_else(|| ParseError::new("no `key` line"))?;
    Ok((key, meta))
}

/// A lease as persisted: its id and granted TTL in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub id: i64,
    pub ttl: i64,
}

/// Encodes the `leases` root entry.
pub fn encode_leases<'a>(leases: impl IntoIterator<Item = &'a LeaseRecord>) -> Vec<u8> {
    let mut out = String::new();
    for l in leases {
        let _ = writeln!(out, "{} {}", l.id, l.ttl);
    }
    out.into_bytes()
}

/// Decodes the `leases` root entry.
pub fn decode_leases(blob: &[u8]) -> Result<Vec<LeaseRecord>, ParseError> {
    blob.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (id, ttl) = split_field(line)?;
            Ok(LeaseRecord {
                id: parse_int(b"lease id", id)?,
                ttl: parse_int(b"lease ttl", ttl)?,
            })
        })
        .collect()
}

/// Encodes the `alarms` root entry: one `<member id> <alarm>` line per raised
/// alarm (`NOSPACE`, `CORRUPT`).
pub fn encode_alarms<'a>(alarms: impl IntoIterator<Item = &'a (u64, i32)>) -> Vec<u8> {
    let mut out = String::new();
    for (member, alarm) in alarms {
        let name = match alarm {
            1 => "NOSPACE",
            2 => "CORRUPT",
            _ => continue,
        };
        let _ = writeln!(out, "{member} {name}");
    }
    out.into_bytes()
}

/// Decodes the `alarms` root entry; unknown alarm names are skipped.
pub fn decode_alarms(blob: &[u8]) -> Result<Vec<(u64, i32)>, ParseError> {
    let mut out = Vec::new();
    for line in blob.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let (member, name) = split_field(line)?;
        let member: u64 = std::str::from_utf8(member)
            .ok()
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| ParseError::new(format!("alarm member {:?}", String::from_utf8_lossy(member))))?;
        let alarm = match name {
            b"NOSPACE" => 1,
            b"CORRUPT" => 2,
            _ => continue,
        };
        out.push((member, alarm));
    }
    Ok(out)
}

/// One key's change in a revision recorded in a grouped commit's `log`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogChange {
    pub key: bytes::Bytes,
    /// The key's metadata and value after the change; `None` for a delete.
    pub new: Option<(KeyMeta, bytes::Bytes)>,
    /// The blob that holds the value, when the log names it instead of
    /// holding the value (the key's last change in the group: its blob is in
    /// the group's data tree).
    pub blob: Option<gix::ObjectId>,
}

/// One revision recorded in a grouped commit's `log`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRevision {
    pub revision: i64,
    pub changes: Vec<LogChange>,
}

/// Encodes the `log` root entry of a commit that groups several revisions:
/// each revision's changes in order, values inline or, for a change that
/// names its blob, by the blob's id.
///
/// ```text
/// revision 12
/// put <create> <mod> <version> <lease> <value size> <escaped key>
/// <value bytes>
/// putblob <create> <mod> <version> <lease> <blob id> <escaped key>
/// delete <escaped key>
/// ```
pub fn encode_log(revisions: &[LogRevision]) -> Vec<u8> {
    let size: usize = revisions
        .iter()
        .flat_map(|r| &r.changes)
        .map(|c| c.key.len() + c.new.as_ref().filter(|_| c.blob.is_none()).map_or(0, |(_, v)| v.len()) + 64)
        .sum();
    let mut out = Vec::with_capacity(size + 16 * revisions.len());
    for r in revisions {
        out.extend_from_slice(format!("revision {}\n", r.revision).as_bytes());
        for c in &r.changes {
            let key = crate::keys::escape(&c.key);
            match &c.new {
                Some((m, _)) if let Some(blob) = c.blob => {
                    let line = format!(
                        "putblob {} {} {} {} {blob} {key}\n",
                        m.create_revision, m.mod_revision, m.version, m.lease
                    );
                    out.extend_from_slice(line.as_bytes());
                }
                Some((m, value)) => {
                    let line = format!(
                        "put {} {} {} {} {} {key}\n",
                        m.create_revision,
                        m.mod_revision,
                        m.version,
                        m.lease,
                        value.len()
                    );
                    out.extend_from_slice(line.as_bytes());
                    out.extend_from_slice(value);
                    out.push(b'\n');
                }
                None => out.extend_from_slice(format!("delete {key}\n").as_bytes()),
            }
        }
    }
    out
}

/// Decodes the `log` root entry (see [`encode_log`]); inline values are
/// slices of `blob`, the others are read with `read_blob`.
pub fn decode_log(
    blob: &bytes::Bytes,
    read_blob: &mut dyn FnMut(gix::ObjectId) -> Result<bytes::Bytes, ParseError>,
) -> Result<Vec<LogRevision>, ParseError> {
    let mut out: Vec<LogRevision> = Vec::new();
    let mut at = 0;
    while at < blob.len() {
        let end = blob[at..]
            .iter()
            .position(|b| *b == b'\n')
            .map(|p| at + p)
            .ok_or_else(|| ParseError::new("log ends inside a line"))?;
        let line = &blob[at..end];
        at = end + 1;
        let (word, rest) = split_field(line)?;
        match word {
            b"revision" => out.push(LogRevision {
                revision: parse_int(word, rest)?,
                changes: Vec::new(),
            }),
            b"put" | b"putblob" | b"delete" => {
                let current = out
                    .last_mut()
                    .ok_or_else(|| ParseError::new("log change before any `revision` line"))?;
                if word == b"delete" {
                    current.changes.push(LogChange {
                        key: crate::keys::unescape(rest).into(),
                        new: None,
                        blob: None,
                    });
                    continue;
                }
                let mut fields = rest.splitn(6, |b| *b == b' ');
                let mut int = |name: &str| -> Result<i64, ParseError> {
                    parse_int(name.as_bytes(), fields.next().unwrap_or_default())
                };
                let meta = KeyMeta {
                    create_revision: int("create")?,
                    mod_revision: int("mod")?,
                    version: int("version")?,
                    lease: int("lease")?,
                    // Not logged: history reads do not need it.
                    time: 0,
                };
                if word == b"putblob" {
                    let hex = fields.next().unwrap_or_default();
                    let id = gix::ObjectId::from_hex(hex)
                        .map_err(|_| ParseError::new(format!("log blob id {:?}", String::from_utf8_lossy(hex))))?;
                    let key = crate::keys::unescape(fields.next().unwrap_or_default());
                    current.changes.push(LogChange {
                        key: key.into(),
                        new: Some((meta, read_blob(id)?)),
                        blob: Some(id),
                    });
                    continue;
                }
                let size = usize::try_from(int("size")?).map_err(|_| ParseError::new("negative value size"))?;
                let key = crate::keys::unescape(fields.next().unwrap_or_default());
                if blob.len() < at + size + 1 || blob[at + size] != b'\n' {
                    return Err(ParseError::new("log value runs past its size"));
                }
                current.changes.push(LogChange {
                    key: key.into(),
                    new: Some((meta, blob.slice(at..at + size))),
                    blob: None,
                });
                at += size + 1;
            }
            _ => {
                return Err(ParseError::new(format!(
                    "unknown log line {:?}",
                    String::from_utf8_lossy(line)
                )));
            }
        }
    }
    Ok(out)
}

/// Parses a decimal integer root entry such as `revision` or `compact`.
pub fn decode_int(name: &str, blob: &[u8]) -> Result<i64, ParseError> {
    parse_int(name.as_bytes(), blob.trim_ascii())
}

fn split_field(line: &[u8]) -> Result<(&[u8], &[u8]), ParseError> {
    let at = line
        .iter()
        .position(|b| *b == b' ')
        .ok_or_else(|| ParseError::new(format!("line {:?} has no value", String::from_utf8_lossy(line))))?;
    Ok((&line[..at], &line[at + 1..]))
}

fn parse_int(name: &[u8], value: &[u8]) -> Result<i64, ParseError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            ParseError::new(format!(
                "{} is not a decimal integer: {:?}",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(value)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_blob_round_trip() -> Result<(), ParseError> {
        let cases = [
            (
                b"/registry/pods/ns/a".to_vec(),
                KeyMeta {
                    create_revision: 2,
                    mod_revision: 9,
                    version: 3,
                    lease: 0,
                    time: 0,
                },
            ),
            (
                b"x\ny\xff".to_vec(),
                KeyMeta {
                    create_revision: 1,
                    mod_revision: 1,
                    version: 1,
                    lease: 7587,
                    time: 1_764_576_866_123_456_789,
                },
            ),
        ];
        for (key, meta) in cases {
            let blob = encode_key(&key, &meta);
            assert_eq!(decode_key(&blob)?, (key, meta));
        }
        let blob = encode_key(
            b"/a",
            &KeyMeta {
                create_revision: 2,
                mod_revision: 3,
                version: 2,
                lease: 0,
                time: 0,
            },
        );
        assert_eq!(blob, b"key /a\ncreate 2\nmod 3\nversion 2\n");
        Ok(())
    }

    #[test]
    fn malformed_blobs_are_refused() {
        assert!(decode_key(b"create 1\n").is_err());
        assert!(decode_key(b"key /a\nmod x\n").is_err());
        assert!(decode_key(b"key /a\nmod\n").is_err());
        assert!(decode_int("revision", b"12\n").is_ok());
    }

    #[test]
    fn leases_round_trip() -> Result<(), ParseError> {
        let leases = [LeaseRecord { id: 1, ttl: 60 }, LeaseRecord { id: 99, ttl: 15 }];
        assert_eq!(decode_leases(&encode_leases(&leases))?, leases);
        Ok(())
    }

    #[test]
    fn log_round_trip() -> Result<(), ParseError> {
        let meta = KeyMeta {
            create_revision: 3,
            mod_revision: 4,
            version: 2,
            lease: 9,
            time: 0,
        };
        let log = [
            LogRevision {
                revision: 4,
                changes: vec![
                    LogChange {
                        key: bytes::Bytes::from_static(b"/a b\n%"),
                        new: Some((meta, bytes::Bytes::from_static(b"line\nrevision 5\n\0"))),
                        blob: None,
                    },
                    LogChange {
                        key: bytes::Bytes::from_static(b"/gone"),
                        new: None,
                        blob: None,
                    },
                ],
            },
            LogRevision {
                revision: 5,
                changes: vec![
                    LogChange {
                        key: bytes::Bytes::from_static(b"rel"),
                        new: Some((meta, bytes::Bytes::new())),
                        blob: None,
                    },
                    LogChange {
                        key: bytes::Bytes::from_static(b"/by id"),
                        new: Some((meta, bytes::Bytes::from_static(b"stored in a blob"))),
                        blob: Some(crate::repo::objects::blob_id(b"stored in a blob")),
                    },
                ],
            },
        ];
        let encoded = bytes::Bytes::from(encode_log(&log));
        assert!(
            !encoded.windows(16).any(|w| w == b"stored in a blob"),
            "a named blob is not inline"
        );
        let mut read = |id: gix::ObjectId| {
            (id == crate::repo::objects::blob_id(b"stored in a blob"))
                .then(|| bytes::Bytes::from_static(b"stored in a blob"))
                .ok_or_else(|| ParseError::new("no such blob"))
        };
        assert_eq!(decode_log(&encoded, &mut read)?, log);
        assert!(decode_log(&encoded.slice(..encoded.len() - 3), &mut read).is_err());
        assert!(decode_log(&bytes::Bytes::from_static(b"put 1 1 1 0 0 /a\n\n"), &mut read).is_err());
        Ok(())
    }

    #[test]
    fn key_hex_is_the_sha1_in_hex() {
        assert_eq!(&key_hex(b"/a"), b"2256c6ac80d3eb2693897a53c615c4840981e5aa");
    }
}
