//! git-sync's metrics, with git-sync's names and labels, in a registry of
//! their own (plus the `process_*` collector).
//!
//! `git_sync_duration_seconds` is a Prometheus *summary* without quantiles in
//! git-sync (only `_sum` and `_count`); the `prometheus` crate has no summary
//! type, so [`DurationSummary`] collects one by hand.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType, Summary};
use prometheus::{CounterVec, IntCounter, Opts, Registry};

/// Status label values.
pub const SUCCESS: &str = "success";
/// Status label values.
pub const ERROR: &str = "error";
/// Status label values.
pub const NOOP: &str = "noop";

/// Every metric git-sync exports.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// `git_sync_duration_seconds{status}`.
    pub sync_duration: DurationSummary,
    /// `git_sync_count_total{status}`.
    pub sync_count: CounterVec,
    /// `git_fetch_count_total`: "update required" events.
    pub fetch_count: IntCounter,
    /// `git_sync_askpass_calls{status}`.
    pub askpass_count: CounterVec,
    /// `git_sync_refresh_github_app_token_count{status}`.
    pub github_app_token_count: CounterVec,
    /// `git_sync_hook_run_count_total{name,status}`.
    pub hook_run_count: CounterVec,
}

impl Metrics {
    /// Builds and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let sync_duration = DurationSummary::new("git_sync_duration_seconds", "Summary of git_sync durations")?;
        let sync_count = CounterVec::new(
            Opts::new(
                "git_sync_count_total",
                "How many git syncs completed, partitioned by state (success, error, noop)",
            ),
            &["status"],
        )?;
        let fetch_count = IntCounter::new("git_fetch_count_total", "How many git fetches were run")?;
        let askpass_count = CounterVec::new(
            Opts::new(
                "git_sync_askpass_calls",
                "How many git askpass calls completed, partitioned by state (success, error)",
            ),
            &["status"],
        )?;
        let github_app_token_count = CounterVec::new(
            Opts::new(
                "git_sync_refresh_github_app_token_count",
                "How many times the GitHub app token was refreshed, partitioned by state (success, error)",
            ),
            &["status"],
        )?;
        let hook_run_count = CounterVec::new(
            Opts::new(
                "git_sync_hook_run_count_total",
                "How many hook runs completed, partitioned by name and state (success, error)",
            ),
            &["name", "status"],
        )?;
        registry.register(Box::new(sync_duration.clone_handle()))?;
        registry.register(Box::new(sync_count.clone()))?;
        registry.register(Box::new(fetch_count.clone()))?;
        registry.register(Box::new(askpass_count.clone()))?;
        registry.register(Box::new(github_app_token_count.clone()))?;
        registry.register(Box::new(hook_run_count.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(Self {
            registry,
            sync_duration,
            sync_count,
            fetch_count,
            askpass_count,
            github_app_token_count,
            hook_run_count,
        })
    }

    /// Counts one finished sync with its duration.
    pub fn sync_done(&self, status: &str, took: Duration) {
        self.sync_duration.observe(status, took.as_secs_f64());
        self.sync_count.with_label_values(&[status]).inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather())
    }
}

/// A summary without quantiles, labelled by `status`.
pub struct DurationSummary {
    desc: Desc,
    name: String,
    help: String,
    values: std::sync::Arc<Mutex<BTreeMap<String, (f64, u64)>>>,
}

impl DurationSummary {
    fn new(name: &str, help: &str) -> Result<Self, prometheus::Error> {
        Ok(Self {
            desc: Desc::new(name.into(), help.into(), vec!["status".into()], Default::default())?,
            name: name.into(),
            help: help.into(),
            values: Default::default(),
        })
    }

    fn clone_handle(&self) -> Self {
        Self {
            desc: self.desc.clone(),
            name: self.name.clone(),
            help: self.help.clone(),
            values: self.values.clone(),
        }
    }

    /// Records one observation.
    pub fn observe(&self, status: &str, seconds: f64) {
        let mut v = self.values.lock().unwrap_or_else(|p| p.into_inner());
        let e = v.entry(status.to_string()).or_default();
        e.0 += seconds;
        e.1 += 1;
    }
}

impl Collector for DurationSummary {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let v = self.values.lock().unwrap_or_else(|p| p.into_inner());
        let mut family = MetricFamily::default();
        family.set_name(self.name.clone());
        family.set_help(self.help.clone());
        family.set_field_type(MetricType::SUMMARY);
        for (status, (sum, count)) in v.iter() {
            let mut label = LabelPair::default();
            label.set_name("status".into());
            label.set_value(status.clone());
            let mut summary = Summary::default();
            summary.set_sample_sum(*sum);
            summary.set_sample_count(*count);
            let mut m = Metric::default();
            m.set_label(vec![label]);
            m.set_summary(summary);
            family.mut_metric().push(m);
        }
        if family.get_metric().is_empty() {
            return vec![];
        }
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_git_syncs() -> Result<(), prometheus::Error> {
        let m = Metrics::new()?;
        m.sync_done(SUCCESS, Duration::from_millis(1500));
        m.sync_done(SUCCESS, Duration::from_millis(500));
        m.sync_done(NOOP, Duration::from_millis(10));
        m.fetch_count.inc();
        m.hook_run_count.with_label_values(&["exechook", "success"]).inc();
        m.askpass_count.with_label_values(&[ERROR]).inc();
        let text = m.render()?;
        for line in [
            "git_sync_count_total{status=\"success\"} 2",
            "git_sync_count_total{status=\"noop\"} 1",
            "git_fetch_count_total 1",
            "git_sync_duration_seconds_sum{status=\"success\"} 2",
            "git_sync_duration_seconds_count{status=\"success\"} 2",
            "git_sync_hook_run_count_total{name=\"exechook\",status=\"success\"} 1",
            "git_sync_askpass_calls{status=\"error\"} 1",
            "# TYPE git_sync_duration_seconds summary",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        Ok(())
    }
}
