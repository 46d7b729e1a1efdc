//! Gitopper's metrics, with its names, plus the commit as an info metric
//! (Gitopper once had one and removed it; people track rollouts with it):
//! `gitopper_service_state{service}` (OK 0, FREEZE 1, ROLLBACK 2, BROKEN 3,
//! DIFF 4), `gitopper_service_change_time_seconds{service}` (when the state
//! last changed), `gitopper_service_info{service,hash,state}` (1, with the
//! full 40-hex hash; one series per service), and the machine's git
//! counters `gitopper_machine_git_ops_total` and
//! `gitopper_machine_git_errors_total`, in a registry of their own with the
//! `process_*` collector.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use prometheus::{GaugeVec, IntCounter, IntGaugeVec, Opts, Registry};

use super::state::Status;

/// Every gitopper metric.
pub struct Metrics {
    /// What `/metrics` renders.
    pub registry: Registry,
    state: IntGaugeVec,
    change_time: GaugeVec,
    info: IntGaugeVec,
    /// Every git command run.
    pub git_ops: IntCounter,
    /// Every git command that failed.
    pub git_errors: IntCounter,
    /// The labels of each service's info series, to remove the old one.
    info_labels: Mutex<BTreeMap<String, (String, String)>>,
}

impl Metrics {
    /// Builds and registers them.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let state = IntGaugeVec::new(
            Opts::new(
                "gitopper_service_state",
                "The service's state: OK 0, FREEZE 1, ROLLBACK 2, BROKEN 3, DIFF 4.",
            ),
            &["service"],
        )?;
        let change_time = GaugeVec::new(
            Opts::new(
                "gitopper_service_change_time_seconds",
                "When the service's state or its info last changed, in seconds since the epoch.",
            ),
            &["service"],
        )?;
        let info = IntGaugeVec::new(
            Opts::new(
                "gitopper_service_info",
                "The commit (full hash) and state of this service; always 1.",
            ),
            &["service", "hash", "state"],
        )?;
        let git_ops = IntCounter::new("gitopper_machine_git_ops_total", "git commands run on this machine.")?;
        let git_errors = IntCounter::new(
            "gitopper_machine_git_errors_total",
            "git commands that failed on this machine.",
        )?;
        registry.register(Box::new(state.clone()))?;
        registry.register(Box::new(change_time.clone()))?;
        registry.register(Box::new(info.clone()))?;
        registry.register(Box::new(git_ops.clone()))?;
        registry.register(Box::new(git_errors.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(Self {
            registry,
            state,
            change_time,
            info,
            git_ops,
            git_errors,
            info_labels: Mutex::new(BTreeMap::new()),
        })
    }

    /// Sets `service`'s series from `status`.
    pub fn show(&self, service: &str, status: &Status) {
        self.state.with_label_values(&[service]).set(status.state.gauge());
        let since = status.since.duration_since(UNIX_EPOCH).unwrap_or_default();
        self.change_time
            .with_label_values(&[service])
            .set(since.as_secs() as f64);
        let Some(hash) = &status.hash else { return };
        let labels = (hash.clone(), status.state.as_str().to_string());
        let mut known = self.info_labels.lock().expect("metrics lock is never poisoned");
        if let Some(old) = known.get(service)
            && *old != labels
        {
            let _ = self.info.remove_label_values(&[service, &old.0, &old.1]);
        }
        self.info.with_label_values(&[service, &labels.0, &labels.1]).set(1);
        known.insert(service.to_string(), labels);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut out = String::new();
        prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gitopper::state::State;
    use std::time::{Duration, SystemTime};

    #[test]
    fn one_info_series_per_service() -> Result<(), prometheus::Error> {
        let m = Metrics::new()?;
        let mut s = Status::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        m.show("web", &s);
        let text = m.render()?;
        assert!(text.contains("gitopper_service_state{service=\"web\"} 0"), "{text}");
        assert!(text.contains("gitopper_service_change_time_seconds{service=\"web\"} 1700000000"));
        assert!(!text.contains("gitopper_service_info{"), "no hash yet: {text}");
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        s.hash = Some(a.clone());
        m.show("web", &s);
        s.hash = Some(b.clone());
        s.set(State::Freeze, "", SystemTime::now());
        m.show("web", &s);
        let text = m.render()?;
        assert!(
            text.contains(&format!(
                "gitopper_service_info{{hash=\"{b}\",service=\"web\",state=\"FREEZE\"}} 1"
            )),
            "{text}"
        );
        assert!(!text.contains(&a), "the old series is gone: {text}");
        assert!(text.contains("gitopper_service_state{service=\"web\"} 1"));
        m.git_ops.inc();
        m.git_errors.inc();
        let text = m.render()?;
        assert!(text.contains("gitopper_machine_git_ops_total 1"));
        assert!(text.contains("gitopper_machine_git_errors_total 1"));
        Ok(())
    }
}
