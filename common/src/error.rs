//! Reporting errors with their causes.

use std::fmt;

/// Formats `e` and every cause below it, `outer: inner: innermost`: what a
/// log line or an error answer shows, as `{:#}` does for anyhow.
pub fn chain<'a>(e: &'a (dyn std::error::Error + 'static)) -> Chain<'a> {
    Chain(e)
}

/// See [`chain`].
pub struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut last = self.0.to_string();
        let mut source = self.0.source();
        while let Some(s) = source {
            let text = s.to_string();
            // Some errors repeat their source's text in their own.
            if !last.contains(&text) {
                write!(f, ": {text}")?;
            }
            last = text;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("reading {0}")]
    struct Outer(&'static str, #[source] std::io::Error);

    #[test]
    fn chains_causes() {
        let e = Outer("x", std::io::Error::other("disk on fire"));
        assert_eq!(super::chain(&e).to_string(), "reading x: disk on fire");
    }
}
