//! The HTTP endpoints of `gitcd serve`, with etcd's answers where etcd has
//! them: `/health` (`{"health":"true","reason":""}`, false while the store
//! cannot write), `/version` (etcd's JSON, plus gitcd's own version),
//! `/livez`, `/readyz` (the store is open and writing, and the server is not
//! draining), `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper::StatusCode;

use super::metrics;
use crate::http::{Admin, Answer};
use crate::store::Store;

/// etcd's cluster version for a 3.5 server.
const CLUSTER_VERSION: &str = "3.5.0";

pub fn admin(
    store: &Store,
    registry: prometheus::Registry,
    server: metrics::Server,
    draining: Arc<AtomicBool>,
) -> Admin {
    let ready = {
        let (store, draining) = (store.clone(), draining.clone());
        Arc::new(move || !draining.load(Ordering::Acquire) && store.health().is_ok())
    };
    let refresh = {
        let store = store.clone();
        Arc::new(move || server.refresh(&store))
    };
    let health = {
        let store = store.clone();
        Arc::new(move || match store.health() {
            Ok(()) => Answer::json(StatusCode::OK, "{\"health\":\"true\",\"reason\":\"\"}"),
            Err(reason) => Answer::json(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{{\"health\":\"false\",\"reason\":{}}}", json_string(reason.as_str())),
            ),
        })
    };
    let version = Arc::new(|| {
        Answer::json(
            StatusCode::OK,
            format!(
                "{{\"etcdserver\":\"{}\",\"etcdcluster\":\"{CLUSTER_VERSION}\",\"gitcd\":\"{}\"}}",
                crate::etcd::ETCD_VERSION,
                env!("CARGO_PKG_VERSION")
            ),
        )
    });
    let mut admin = Admin::new(ready)
        .on_scrape(refresh)
        .route("/health", health)
        .route("/version", version);
    admin.registry = registry_with_process(registry);
    admin
}

/// `registry` with the process metrics (`etcdctl check datascale` reads
/// `process_resident_memory_bytes`).
fn registry_with_process(registry: prometheus::Registry) -> prometheus::Registry {
    #[cfg(target_os = "linux")]
    {
        let _ = registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
    }
    registry
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}
