//! Writing a merged YAML mapping back: block style, two-space indents,
//! sequences at their key's indent (as Kubernetes writes YAML), and strings
//! quoted unless they cannot be read as anything else by a YAML 1.1 reader
//! (Kubernetes reads with one): `yes`, `on`, `1e3`, `2026-12-01T00:00:00Z`,
//! `null` are all quoted when they are strings.

use std::fmt::Write as _;

use yaml_rust2::Yaml;
use yaml_rust2::yaml::Hash;

/// `map` as a YAML document, ending in a newline.
pub fn emit_mapping(map: &Hash) -> String {
    let mut out = String::new();
    if map.is_empty() {
        out.push_str("{}\n");
    } else {
        mapping(&mut out, map, 0);
    }
    out
}

/// A scalar as it is written (keys, and values on their key's line).
pub fn emit_scalar(y: &Yaml) -> String {
    match y {
        Yaml::String(s) => string(s),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Real(r) => r.clone(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Hash(h) if h.is_empty() => "{}".into(),
        Yaml::Array(a) if a.is_empty() => "[]".into(),
        // Aliases are resolved by the loader; a bad value is written as null.
        _ => "null".into(),
    }
}

fn indent(out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(' ');
    }
}

fn mapping(out: &mut String, map: &Hash, at: usize) {
    let mut first = true;
    for (k, v) in map {
        if !first {
            indent(out, at);
        }
        first = false;
        out.push_str(&emit_scalar(k));
        out.push(':');
        value(out, v, at);
    }
}

/// Writes `v` after a `key:` at indent `at`.
fn value(out: &mut String, v: &Yaml, at: usize) {
    match v {
        Yaml::Hash(h) if !h.is_empty() => {
            out.push('\n');
            indent(out, at + 2);
            mapping(out, h, at + 2);
        }
        Yaml::Array(a) if !a.is_empty() => {
            out.push('\n');
            indent(out, at);
            sequence(out, a, at);
        }
        scalar => {
            out.push(' ');
            out.push_str(&emit_scalar(scalar));
            out.push('\n');
        }
    }
}

fn sequence(out: &mut String, items: &[Yaml], at: usize) {
    let mut first = true;
    for item in items {
        if !first {
            indent(out, at);
        }
        first = false;
        out.push_str("- ");
        match item {
            Yaml::Hash(h) if !h.is_empty() => mapping(out, h, at + 2),
            Yaml::Array(a) if !a.is_empty() => sequence(out, a, at + 2),
            scalar => {
                out.push_str(&emit_scalar(scalar));
                out.push('\n');
            }
        }
    }
}

/// Words a YAML 1.1 reader takes for booleans or null.
const SPECIAL: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false", "False", "FALSE", "on",
    "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL", "~",
];

/// A string: plain when it can only be read back as this string, else
/// double-quoted with escapes.
fn string(s: &str) -> String {
    let plain = s
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b'/')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-'))
        && !SPECIAL.contains(&s);
    if plain {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) -> String {
        let docs = yaml_rust2::YamlLoader::load_from_str(text).expect("valid YAML");
        let Some(Yaml::Hash(h)) = docs.first() else {
            panic!("a mapping: {text}");
        };
        emit_mapping(h)
    }

    /// What Kubernetes writes comes back the same, and what we write reads
    /// back to the same tree.
    #[test]
    fn kubernetes_style() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  labels:\n    app: web\n  name: p\nspec:\n  containers:\n  - image: nginx\n    name: a\n    ports:\n    - containerPort: 80\n  nodeName: node-1\nstatus:\n  conditions: []\n  phase: Pending\n";
        assert_eq!(round_trip(text), text);
    }

    #[test]
    fn strings_that_read_as_something_else_are_quoted() {
        let cases = [
            ("yes", "\"yes\""),
            ("on", "\"on\""),
            ("123", "\"123\""),
            ("1e3", "\"1e3\""),
            (".5", "\".5\""),
            ("2026-12-01T00:00:00Z", "\"2026-12-01T00:00:00Z\""),
            ("a: b", "\"a: b\""),
            ("", "\"\""),
            ("two\nlines", "\"two\\nlines\""),
            ("kube-system", "kube-system"),
            ("apps/v1", "apps/v1"),
            ("x\u{1}", "\"x\\x01\""),
        ];
        for (s, want) in cases {
            assert_eq!(string(s), want);
            let back = yaml_rust2::YamlLoader::load_from_str(&format!("k: {want}\n")).expect("valid YAML");
            assert_eq!(back[0]["k"].as_str(), Some(s), "{want} reads back");
        }
    }
}
