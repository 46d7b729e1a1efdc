//! Key patterns for `--include` and `--exclude`, matched against the whole
//! key: `*` matches within one `/`-separated segment, `**` (a whole
//! segment) matches one or more segments. So `/registry/masterleases/**`
//! matches the keys below that prefix, not the prefix key itself, and
//! `/registry/*/kube-system/**` matches kube-system objects of every
//! resource. Keys without a leading `/` are written as they are
//! (`compact_rev_key`).

/// One pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPattern {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// `**`: one or more whole segments.
    Any,
    /// Literal parts between `*`s: `a*b` is `["a", "b"]`.
    Glob(Vec<Vec<u8>>),
}

impl KeyPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("a key pattern cannot be empty".into());
        }
        let mut segments = Vec::new();
        for part in text.as_bytes().split(|b| *b == b'/') {
            if part == b"**" {
                segments.push(Segment::Any);
            } else if part.windows(2).any(|w| w == b"**") {
                return Err(format!(
                    "key pattern {text:?}: `**` must be a whole segment (`/a/**`, not `/a**`)"
                ));
            } else {
                segments.push(Segment::Glob(part.split(|b| *b == b'*').map(<[u8]>::to_vec).collect()));
            }
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, key: &[u8]) -> bool {
        let parts: Vec<&[u8]> = key.split(|b| *b == b'/').collect();
        matches_from(&self.segments, &parts)
    }
}

fn matches_from(pattern: &[Segment], key: &[&[u8]]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((Segment::Any, rest)) => (1..=key.len()).any(|n| matches_from(rest, &key[n..])),
        Some((Segment::Glob(parts), rest)) => match key.split_first() {
            Some((segment, tail)) => glob(parts, segment) && matches_from(rest, tail),
            None => false,
        },
    }
}

/// Whether `segment` is `parts` joined by runs of anything but `/`.
fn glob(parts: &[Vec<u8>], segment: &[u8]) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return segment.is_empty();
    };
    let Some(mut remaining) = segment.strip_prefix(first.as_slice()) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return remaining.is_empty();
    };
    for part in middle {
        match find(remaining, part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Which keys a merge takes from the other side: those matching an include
/// (every key when there is none) and no exclude.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyFilter {
    pub include: Vec<KeyPattern>,
    pub exclude: Vec<KeyPattern>,
}

impl KeyFilter {
    pub fn allows(&self, key: &[u8]) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(key)))
            && !self.exclude.iter().any(|p| p.matches(key))
    }

    /// Whether the filter lets every key through.
    pub fn is_open(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() -> Result<(), String> {
        let cases: &[(&str, &str, bool)] = &[
            ("/registry/masterleases/**", "/registry/masterleases/10.0.0.1", true),
            ("/registry/masterleases/**", "/registry/masterleases/a/b", true),
            ("/registry/masterleases/**", "/registry/masterleases", false),
            ("/registry/masterleases/**", "/registry/masterleases/", true),
            ("/registry/masterleases/**", "/registry/masterleasesX/1", false),
            ("/registry/*/kube-system/**", "/registry/pods/kube-system/p", true),
            ("/registry/*/kube-system/**", "/registry/pods/default/p", false),
            ("/registry/*", "/registry/pods", true),
            ("/registry/*", "/registry/pods/x", false),
            ("/registry/lease*/**", "/registry/leases/ns/x", true),
            ("/a/*b*c", "/a/xbyc", true),
            ("/a/*b*c", "/a/xbyd", false),
            ("/a/b*b", "/a/bb", true),
            ("/a/b*b", "/a/b", false),
            ("compact_rev_key", "compact_rev_key", true),
            ("compact_rev_key", "/compact_rev_key", false),
            ("/a/**/z", "/a/b/c/z", true),
            ("/a/**/z", "/a/z", false),
            ("**", "anything/at/all", true),
        ];
        for (pattern, key, want) in cases {
            assert_eq!(
                KeyPattern::parse(pattern)?.matches(key.as_bytes()),
                *want,
                "{pattern} ~ {key}"
            );
        }
        assert!(KeyPattern::parse("/a**").is_err());
        assert!(KeyPattern::parse("").is_err());
        Ok(())
    }

    #[test]
    fn filters() -> Result<(), String> {
        let f = KeyFilter {
            include: vec![KeyPattern::parse("/registry/**")?],
            exclude: vec![KeyPattern::parse("/registry/masterleases/**")?],
        };
        assert!(f.allows(b"/registry/pods/ns/p"));
        assert!(!f.allows(b"/registry/masterleases/1"));
        assert!(!f.allows(b"/other"));
        assert!(KeyFilter::default().allows(b"anything"));
        Ok(())
    }
}
