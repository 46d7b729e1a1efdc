//! Named sets of excludes for what some programs write that must never be
//! shared between participants. `--exclude-preset=kubernetes` is for
//! heavens: kube-apiservers (each with its controllers) that coordinate
//! through Git (docs/kubernetes.md has the reasons and the evidence).

/// The patterns of preset `name`, each with why it is there; `None` for an
/// unknown name.
pub fn preset(name: &str) -> Option<&'static [(&'static str, &'static str)]> {
    match name {
        "kubernetes" => Some(KUBERNETES),
        _ => None,
    }
}

/// The names of the presets.
pub const NAMES: &[&str] = &["kubernetes"];

const KUBERNETES: &[(&str, &str)] = &[
    (
        "/registry/masterleases/**",
        "each kube-apiserver's own address, held by a lease; leases do not travel, so a merged copy would never expire",
    ),
    (
        "/registry/services/specs/default/kubernetes",
        "each kube-apiserver reconciles the kubernetes Service to its own port",
    ),
    (
        "/registry/services/endpoints/default/kubernetes",
        "each kube-apiserver reconciles the kubernetes Endpoints to its own address and port",
    ),
    (
        "/registry/endpointslices/default/kubernetes",
        "the same, as the EndpointSlice kube-apiserver mirrors",
    ),
    (
        "/registry/leases/kube-system/**",
        "leader election of the controllers of one heaven (renewed every 2 s): a heaven's own business",
    ),
    (
        "/registry/services/endpoints/kube-system/kube-controller-manager",
        "leader election's endpoints lock (1.20 locks both endpoints and leases)",
    ),
    (
        "/registry/services/endpoints/kube-system/kube-scheduler",
        "leader election's endpoints lock (1.20 locks both endpoints and leases)",
    ),
    (
        "compact_rev_key",
        "each kube-apiserver's compactor counts its own compactions on it",
    ),
];
