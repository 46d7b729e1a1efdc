//! The structural three-way merge of a value: when the base and both sides
//! parse as JSON objects (or all as YAML mappings), fields merge one by one
//! (maps recursively; scalars and lists are atomic); a field changed
//! differently on both sides goes to the side the policy picked for the
//! whole key. The result is written in the value's own format, canonically,
//! so two merges of the same three values give the same bytes whichever
//! side merges: fields keep the base's order, and fields new on either side
//! follow in byte order of their names.

use super::Side;
use super::yaml;

/// The merged value, or `None` when the values are not all mappings of one
/// format (the policy then decides the whole value).
pub fn merge(base: &[u8], ours: &[u8], theirs: &[u8], pick: Side) -> Option<Vec<u8>> {
    if let (Some(b), Some(o), Some(t)) = (json_object(base), json_object(ours), json_object(theirs)) {
        let merged = merge_maps(&b, &o, &t, pick);
        if let Some(same) = same_as_a_side(&merged, (&o, ours), (&t, theirs)) {
            return Some(same);
        }
        let mut out = serde_json::to_vec(&serde_json::Value::Object(merged)).ok()?;
        if base.ends_with(b"\n") {
            out.push(b'\n');
        }
        return Some(out);
    }
    let (b, o, t) = (yaml_mapping(base)?, yaml_mapping(ours)?, yaml_mapping(theirs)?);
    let merged = merge_maps(&b, &o, &t, pick);
    if let Some(same) = same_as_a_side(&merged, (&o, ours), (&t, theirs)) {
        return Some(same);
    }
    Some(yaml::emit_mapping(&merged).into_bytes())
}

/// A result equal to one side's value keeps that side's bytes (no
/// reformatting); equal to both, the greater bytes, whichever side merges.
fn same_as_a_side<M: Mapping>(merged: &M, ours: (&M, &[u8]), theirs: (&M, &[u8])) -> Option<Vec<u8>> {
    match (merged == ours.0, merged == theirs.0) {
        (true, true) => Some(ours.1.max(theirs.1).to_vec()),
        (true, false) => Some(ours.1.to_vec()),
        (false, true) => Some(theirs.1.to_vec()),
        (false, false) => None,
    }
}

fn json_object(bytes: &[u8]) -> Option<serde_json::Map<String, serde_json::Value>> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    match serde_json::from_slice(bytes).ok()? {
        serde_json::Value::Object(m) => Some(m),
        _ => None,
    }
}

fn yaml_mapping(bytes: &[u8]) -> Option<yaml_rust2::yaml::Hash> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut docs = yaml_rust2::YamlLoader::load_from_str(text).ok()?;
    if docs.len() != 1 {
        return None;
    }
    match docs.pop()? {
        yaml_rust2::Yaml::Hash(h) => Some(h),
        _ => None,
    }
}

/// A mapping of either format, as the merge sees it.
trait Mapping: Sized + PartialEq + Clone {
    type Key: PartialEq + Clone;
    type Value: PartialEq + Clone;
    fn keys(&self) -> Vec<Self::Key>;
    fn get(&self, k: &Self::Key) -> Option<&Self::Value>;
    fn insert(&mut self, k: Self::Key, v: Self::Value);
    fn empty() -> Self;
    fn as_mapping(v: &Self::Value) -> Option<&Self>;
    fn from_mapping(m: Self) -> Self::Value;
    /// The bytes keys are ordered by when neither order applies.
    fn key_bytes(k: &Self::Key) -> Vec<u8>;
}

impl Mapping for serde_json::Map<String, serde_json::Value> {
    type Key = String;
    type Value = serde_json::Value;
    fn keys(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
    fn get(&self, k: &String) -> Option<&serde_json::Value> {
        self.get(k)
    }
    fn insert(&mut self, k: String, v: serde_json::Value) {
        self.insert(k, v);
    }
    fn empty() -> Self {
        serde_json::Map::new()
    }
    fn as_mapping(v: &serde_json::Value) -> Option<&Self> {
        v.as_object()
    }
    fn from_mapping(m: Self) -> serde_json::Value {
        serde_json::Value::Object(m)
    }
    fn key_bytes(k: &String) -> Vec<u8> {
        k.as_bytes().to_vec()
    }
}

impl Mapping for yaml_rust2::yaml::Hash {
    type Key = yaml_rust2::Yaml;
    type Value = yaml_rust2::Yaml;
    fn keys(&self) -> Vec<yaml_rust2::Yaml> {
        self.keys().cloned().collect()
    }
    fn get(&self, k: &yaml_rust2::Yaml) -> Option<&yaml_rust2::Yaml> {
        self.get(k)
    }
    fn insert(&mut self, k: yaml_rust2::Yaml, v: yaml_rust2::Yaml) {
        self.insert(k, v);
    }
    fn empty() -> Self {
        yaml_rust2::yaml::Hash::new()
    }
    fn as_mapping(v: &yaml_rust2::Yaml) -> Option<&Self> {
        match v {
            yaml_rust2::Yaml::Hash(h) => Some(h),
            _ => None,
        }
    }
    fn from_mapping(m: Self) -> yaml_rust2::Yaml {
        yaml_rust2::Yaml::Hash(m)
    }
    fn key_bytes(k: &yaml_rust2::Yaml) -> Vec<u8> {
        yaml::emit_scalar(k).into_bytes()
    }
}

/// Field by field: the base's fields in its order, then fields new on
/// either side in byte order of their names.
fn merge_maps<M: Mapping>(base: &M, ours: &M, theirs: &M, pick: Side) -> M {
    let mut keys = base.keys();
    let mut added: Vec<M::Key> = Vec::new();
    for k in ours.keys().into_iter().chain(theirs.keys()) {
        if !keys.contains(&k) && !added.contains(&k) {
            added.push(k);
        }
    }
    added.sort_by_key(|k| M::key_bytes(k));
    keys.extend(added);
    let mut out = M::empty();
    for k in keys {
        let (b, o, t) = (base.get(&k), ours.get(&k), theirs.get(&k));
        let merged = if o == t {
            o.cloned()
        } else if o == b {
            t.cloned()
        } else if t == b {
            o.cloned()
        } else if let (Some(bm), Some(om), Some(tm)) = (
            b.and_then(M::as_mapping),
            o.and_then(M::as_mapping),
            t.and_then(M::as_mapping),
        ) {
            Some(M::from_mapping(merge_maps(bm, om, tm, pick)))
        } else {
            match pick {
                Side::Ours => o.cloned(),
                Side::Theirs => t.cloned(),
            }
        };
        if let Some(v) = merged {
            out.insert(k, v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(base: &str, ours: &str, theirs: &str, pick: Side) -> Option<String> {
        merge(base.as_bytes(), ours.as_bytes(), theirs.as_bytes(), pick)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// One side edits `spec`, the other `status`: both edits stay, in JSON
    /// and in YAML, and the result is the same whichever side merges.
    #[test]
    fn different_fields_keep_both_edits() {
        let base = "{\"spec\":{\"replicas\":1,\"paused\":false},\"status\":{\"ready\":0}}\n";
        let ours = "{\"spec\":{\"replicas\":3,\"paused\":false},\"status\":{\"ready\":0}}\n";
        let theirs = "{\"spec\":{\"replicas\":1,\"paused\":false},\"status\":{\"ready\":1}}\n";
        let m = merged(base, ours, theirs, Side::Ours);
        assert_eq!(
            m.as_deref(),
            Some("{\"spec\":{\"replicas\":3,\"paused\":false},\"status\":{\"ready\":1}}\n")
        );
        assert_eq!(m, merged(base, theirs, ours, Side::Theirs), "symmetric");

        let base = "kind: Pod\nspec:\n  nodeName: \"\"\n  containers:\n  - name: a\nstatus:\n  phase: Pending\n";
        let ours = "kind: Pod\nspec:\n  nodeName: node-1\n  containers:\n  - name: a\nstatus:\n  phase: Pending\n";
        let theirs = "kind: Pod\nspec:\n  nodeName: \"\"\n  containers:\n  - name: a\nstatus:\n  phase: Running\n";
        let m = merged(base, ours, theirs, Side::Ours).expect("mappings merge");
        assert!(m.contains("nodeName: node-1") && m.contains("phase: Running"), "{m}");
        assert_eq!(Some(m), merged(base, theirs, ours, Side::Theirs));
    }

    /// A field changed differently on both sides goes to the picked side;
    /// new fields on either side are kept, in byte order; a field deleted
    /// on one side and unchanged on the other is deleted.
    #[test]
    fn conflicts_go_to_the_picked_side() {
        let base = "{\"a\":1,\"b\":1,\"gone\":1}";
        let ours = "{\"a\":2,\"b\":1,\"z\":1}";
        let theirs = "{\"a\":3,\"b\":1,\"gone\":1,\"m\":1}";
        assert_eq!(
            merged(base, ours, theirs, Side::Ours).as_deref(),
            Some("{\"a\":2,\"b\":1,\"m\":1,\"z\":1}")
        );
        assert_eq!(
            merged(base, ours, theirs, Side::Theirs).as_deref(),
            Some("{\"a\":3,\"b\":1,\"m\":1,\"z\":1}")
        );
    }

    /// Lists are atomic; values that are not all mappings of one format are
    /// not merged structurally.
    #[test]
    fn lists_are_atomic_and_non_mappings_refuse() {
        let base = "{\"l\":[1,2]}";
        let ours = "{\"l\":[1,2,3]}";
        let theirs = "{\"l\":[0,1,2]}";
        assert_eq!(merged(base, ours, theirs, Side::Theirs).as_deref(), Some(theirs));
        assert_eq!(merged("a", "b", "c", Side::Ours), None);
        assert_eq!(merged("[1]", "[2]", "[3]", Side::Ours), None);
        // JSON is YAML: mixed, they merge as YAML.
        assert_eq!(
            merged("{\"a\":1}", "a: 2\n", "{\"a\":3}", Side::Ours).as_deref(),
            Some("a: 2\n")
        );
        assert_eq!(
            merged("k8s\0\x01", "k8s\0\x02", "k8s\0\x03", Side::Ours),
            None,
            "protobuf"
        );
    }

    /// Properties over random nested objects: merging is symmetric (the
    /// same bytes whichever side merges), and a side left unchanged takes
    /// the other side's value.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn object() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                (0i64..4).prop_map(serde_json::Value::from),
                "[a-c]".prop_map(serde_json::Value::from),
                Just(serde_json::json!([1, 2])),
            ];
            let tree = leaf.prop_recursive(3, 16, 3, |inner| {
                proptest::collection::btree_map("[k-n]", inner, 0..3)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
            });
            proptest::collection::btree_map("[k-n]", tree, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
        }

        fn bytes(v: &serde_json::Value) -> Vec<u8> {
            serde_json::to_vec(v).expect("serialisable")
        }

        proptest! {
            #[test]
            fn symmetric_and_one_sided(b in object(), o in object(), t in object()) {
                let (b, o, t) = (bytes(&b), bytes(&o), bytes(&t));
                let ab = merge(&b, &o, &t, Side::Ours);
                let ba = merge(&b, &t, &o, Side::Theirs);
                prop_assert_eq!(&ab, &ba);
                prop_assert!(ab.is_some());
                let keep = merge(&b, &b, &t, Side::Ours).expect("objects merge");
                prop_assert_eq!(
                    serde_json::from_slice::<serde_json::Value>(&keep).ok(),
                    serde_json::from_slice::<serde_json::Value>(&t).ok()
                );
            }
        }
    }
}
