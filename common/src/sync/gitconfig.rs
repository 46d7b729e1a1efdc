//! The `--git-config` / `--git-config-add` syntax: `key:value` pairs joined
//! by commas; a key or value may be double-quoted; values understand the
//! escapes `\n`, `\t`, `\"`, `\,` and `\\` (a quoted key is the only way to
//! have a `:` in a key).

use std::iter::Peekable;
use std::str::Chars;

/// A malformed `--git-config` value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GitConfigError {
    /// A key without `:value`.
    #[error("key {0:?}: no value")]
    NoValue(String),
    /// The input ended inside a key.
    #[error("unexpected end of key: {0:?}")]
    UnterminatedKey(String),
    /// The input ended inside a quoted string.
    #[error("unexpected end of quoted string: {0:?}")]
    UnterminatedQuote(String),
    /// Something other than `:` after a quoted key.
    #[error("unexpected character after quoted key: {0:?}{1}")]
    AfterQuotedKey(String, char),
    /// Something other than `,` after a quoted value.
    #[error("key {0:?}: unexpected character after quoted value {1:?}{2}")]
    AfterQuotedValue(String, String, char),
    /// A backslash before something that is not an escape.
    #[error("unsupported escape character: '{0}'")]
    BadEscape(char),
    /// A backslash at the very end.
    #[error("unexpected end of escape sequence")]
    EndOfEscape,
}

/// Parses `k:v,"k2":"v2"` into pairs, in order.
pub fn parse(s: &str) -> Result<Vec<(String, String)>, GitConfigError> {
    let mut chars = s.chars().peekable();
    let mut out = Vec::new();
    while let Some(c) = chars.next() {
        let key = if c == '"' {
            let k = quoted(&mut chars)?;
            match chars.next() {
                Some(':') => k,
                Some(other) => return Err(GitConfigError::AfterQuotedKey(k, other)),
                None => return Err(GitConfigError::UnterminatedKey(k)),
            }
        } else {
            let mut k = String::from(c);
            loop {
                match chars.next() {
                    Some(':') => break k,
                    Some(c) => k.push(c),
                    None => return Err(GitConfigError::UnterminatedKey(k)),
                }
            }
        };
        let value = match chars.next() {
            None => return Err(GitConfigError::NoValue(key)),
            Some('"') => {
                let v = quoted(&mut chars)?;
                match chars.next() {
                    None | Some(',') => v,
                    Some(other) => return Err(GitConfigError::AfterQuotedValue(key, v, other)),
                }
            }
            Some(first) => {
                let mut v = String::new();
                let mut c = Some(first);
                while let Some(ch) = c {
                    match ch {
                        ',' => break,
                        '\\' => v.push(unescape(&mut chars)?),
                        other => v.push(other),
                    }
                    c = chars.next();
                }
                v
            }
        };
        out.push((key, value));
    }
    Ok(out)
}

fn quoted(chars: &mut Peekable<Chars<'_>>) -> Result<String, GitConfigError> {
    let mut s = String::new();
    loop {
        match chars.next() {
            None => return Err(GitConfigError::UnterminatedQuote(s)),
            Some('"') => return Ok(s),
            Some('\\') => s.push(unescape(chars)?),
            Some(c) => s.push(c),
        }
    }
}

fn unescape(chars: &mut Peekable<Chars<'_>>) -> Result<char, GitConfigError> {
    match chars.next() {
        None => Err(GitConfigError::EndOfEscape),
        Some('n') => Ok('\n'),
        Some('t') => Ok('\t'),
        Some(c @ ('"' | ',' | '\\')) => Ok(c),
        Some(c) => Err(GitConfigError::BadEscape(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn accepted_forms() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("", &[]),
            ("a.b:c", &[("a.b", "c")]),
            ("a.b:c,d.e:f", &[("a.b", "c"), ("d.e", "f")]),
            (r#""a.b":"c d""#, &[("a.b", "c d")]),
            (r#""a.b:x":"c,d",e.f:g"#, &[("a.b:x", "c,d"), ("e.f", "g")]),
            (r"a.b:c\,d", &[("a.b", "c,d")]),
            (r#"a.b:x\n\t\"\\"#, &[("a.b", "x\n\t\"\\")]),
            ("safe.directory:*", &[("safe.directory", "*")]),
            ("a.b:", &[]),
            (
                "protocol.file.allow:always,a.b:c,",
                &[("protocol.file.allow", "always"), ("a.b", "c")],
            ),
            ("http.url:http://x:1/y", &[("http.url", "http://x:1/y")]),
        ];
        for (input, want) in cases {
            if want.is_empty() && !input.is_empty() {
                assert!(parse(input).is_err(), "{input:?} should fail");
                continue;
            }
            assert_eq!(parse(input), Ok(pairs(want)), "{input:?}");
        }
    }

    #[test]
    fn refused_forms() {
        for input in [
            "a.b",
            r#""a.b"x:c"#,
            r#"a.b:"c"d"#,
            r"a.b:c\q",
            r"a.b:c\",
            r#"a.b:"c"#,
            r#""a.b"#,
        ] {
            assert!(parse(input).is_err(), "{input:?} should fail");
        }
    }
}
