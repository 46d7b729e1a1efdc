//! Showing URLs without their secrets.

/// `url` with the password of its user info replaced (`https://u:REDACTED@h/r`),
/// as git-sync's redactURL does; URLs without one are unchanged.
pub fn redact(url: &str) -> String {
    redact_text(url)
}

/// Whether `url` carries a password in its user info (`https://u:p@h/r`).
pub fn has_password(url: &str) -> bool {
    redact(url) != url
}

/// `text` (a child's stderr, say) with the password of every URL in it
/// replaced.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c == '/' || c.is_whitespace() || c == '\'' || c == '"')
            .unwrap_or(after.len());
        let authority = &after[..end];
        let userinfo = authority
            .rfind('@')
            .and_then(|at| authority[..at].find(':').map(|colon| (colon, at)));
        match userinfo {
            Some((colon, at)) => {
                out.push_str(&authority[..colon]);
                out.push_str(":REDACTED");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let cases = [
            (
                "https://alice:s3cret@host/repo.git",
                "https://alice:REDACTED@host/repo.git",
            ),
            ("https://alice@host/repo.git", "https://alice@host/repo.git"),
            ("https://host/a@b", "https://host/a@b"),
            ("ssh://git@host:22/r", "ssh://git@host:22/r"),
            ("/local/path", "/local/path"),
            ("http://u:p:q@h:8080/x", "http://u:REDACTED@h:8080/x"),
        ];
        for (url, want) in cases {
            assert_eq!(redact(url), want);
        }
        let text = "fatal: unable to access 'https://bob:tok3n@h/r/': 403\n";
        let shown = redact_text(text);
        assert!(!shown.contains("tok3n"), "{shown}");
        assert!(shown.contains("https://bob:REDACTED@h/r/"), "{shown}");
    }
}
