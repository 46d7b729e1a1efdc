//! git-sync's log: one JSON object per line on stderr, filtered by a `-v`
//! verbosity level, and an optional error file that mirrors the last error.
//!
//! git-sync's users parse these lines (the level numbers and messages such as
//! "update required" are what their alerts match), so the shape follows
//! git-sync's: `{"logger","ts","caller","level","msg",<key/values>}`, errors
//! without `level` and with `error`. Values passed here must never hold a
//! secret: callers redact URLs and never pass passwords.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// A key/value pair attached to a log line.
pub type Kv<'a> = (&'a str, Value);

/// A cheap, cloneable logger.
#[derive(Clone, Debug)]
pub struct Log {
    inner: Arc<Inner>,
    name: &'static str,
}

#[derive(Debug)]
struct Inner {
    verbosity: u8,
    error_file: Option<PathBuf>,
}

impl Log {
    /// A logger printing levels up to `verbosity`; errors are also written to
    /// `error_file` (absolute) when given.
    pub fn new(verbosity: u8, error_file: Option<PathBuf>) -> Self {
        Self {
            inner: Arc::new(Inner { verbosity, error_file }),
            name: "",
        }
    }

    /// The same logger with a name (git-sync's `webhook`, `exechook`, ...).
    pub fn named(&self, name: &'static str) -> Self {
        Self {
            inner: self.inner.clone(),
            name,
        }
    }

    /// The verbosity this logger prints.
    pub fn verbosity(&self) -> u8 {
        self.inner.verbosity
    }

    /// Whether lines at `level` are printed.
    pub fn enabled(&self, level: u8) -> bool {
        level <= self.inner.verbosity
    }

    /// Logs `msg` at `level` with key/values.
    #[track_caller]
    pub fn info(&self, level: u8, msg: &str, kvs: &[Kv<'_>]) {
        if !self.enabled(level) {
            return;
        }
        let caller = std::panic::Location::caller();
        let mut obj = self.head(caller);
        obj.insert("level".into(), Value::from(level));
        obj.insert("msg".into(), Value::from(msg));
        for (k, v) in kvs {
            obj.insert((*k).to_string(), v.clone());
        }
        emit(&obj);
    }

    /// Logs an error, and writes it to the error file when one is configured.
    #[track_caller]
    pub fn error(&self, err: Option<&dyn std::error::Error>, msg: &str, kvs: &[Kv<'_>]) {
        let caller = std::panic::Location::caller();
        let mut obj = self.head(caller);
        obj.insert("msg".into(), Value::from(msg));
        let err_text = err.map(error_chain);
        obj.insert("error".into(), err_text.clone().map(Value::from).unwrap_or(Value::Null));
        let mut args = Map::new();
        for (k, v) in kvs {
            obj.insert((*k).to_string(), v.clone());
            args.insert((*k).to_string(), v.clone());
        }
        emit(&obj);
        if self.inner.error_file.is_some() {
            let mut payload = Map::new();
            payload.insert("Msg".into(), Value::from(msg));
            payload.insert("Err".into(), Value::from(err_text.unwrap_or_default()));
            payload.insert("Args".into(), Value::Object(args));
            self.export_error(&Value::Object(payload).to_string());
        }
    }

    /// Writes `content` to the error file (atomically), if one is configured.
    pub fn export_error(&self, content: &str) {
        let Some(path) = &self.inner.error_file else {
            return;
        };
        if let Err(e) = write_atomically(path, content.as_bytes()) {
            let mut obj = self.head(std::panic::Location::caller());
            obj.insert("msg".into(), Value::from("can't write the error-file"));
            obj.insert("error".into(), Value::from(e.to_string()));
            obj.insert("path".into(), Value::from(path.display().to_string()));
            emit(&obj);
        }
    }

    /// Deletes the error file, if one is configured and present.
    pub fn delete_error_file(&self) {
        let Some(path) = &self.inner.error_file else {
            return;
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                let mut obj = self.head(std::panic::Location::caller());
                obj.insert("msg".into(), Value::from("can't delete the error-file"));
                obj.insert("error".into(), Value::from(e.to_string()));
                emit(&obj);
            }
        }
    }

    fn head(&self, caller: &std::panic::Location<'_>) -> Map<String, Value> {
        let mut obj = Map::new();
        obj.insert("logger".into(), Value::from(self.name));
        obj.insert("ts".into(), Value::from(timestamp(SystemTime::now())));
        let file = Path::new(caller.file())
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut c = Map::new();
        c.insert("file".into(), Value::from(file));
        c.insert("line".into(), Value::from(caller.line()));
        obj.insert("caller".into(), Value::Object(c));
        obj
    }
}

/// An error and its sources, joined with ": ".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let t = e.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = e.source();
    }
    s
}

/// One JSON object per line, keys in git-sync's order (`logger`, `ts`,
/// `caller`, `level`, `msg`, then the caller's).
fn emit(obj: &Map<String, Value>) {
    const FIRST: [&str; 6] = ["logger", "ts", "caller", "level", "msg", "error"];
    let mut line = String::from("{");
    let keys = FIRST
        .iter()
        .filter(|k| obj.contains_key(**k))
        .copied()
        .chain(obj.keys().map(String::as_str).filter(|k| !FIRST.contains(k)));
    for (i, k) in keys.enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(&Value::from(k).to_string());
        line.push(':');
        line.push_str(&obj[k].to_string());
    }
    line.push_str("}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `tmp-err-*` beside the file, then rename over it; mode 0644.
fn write_atomically(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o775).create(dir)?;
    }
    let mut tmp = tempfile::Builder::new().prefix("tmp-err-").tempfile_in(dir)?;
    tmp.write_all(content)?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// `2024-09-02 12:34:53.603568` in UTC.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02} {:02}:{:02}:{:02}.{:06}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's civil_from_days).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        let t = UNIX_EPOCH + Duration::from_micros(1_725_280_493_603_568);
        assert_eq!(timestamp(t), "2024-09-02 12:34:53.603568");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01 00:00:00.000000");
    }

    #[test]
    fn civil_days_round_trip() {
        for z in [-800_000i64, -1, 0, 59, 60, 11_016, 19_968, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(19_968), (2024, 9, 2));
    }

    #[test]
    fn error_file_gets_json_and_is_deleted() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sub/error.json");
        let log = Log::new(0, Some(path.clone()));
        let err = std::io::Error::other("couldn't find remote ref");
        log.error(Some(&err), "error syncing repo", &[("failCount", Value::from(1))]);
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        assert_eq!(v["Msg"], "error syncing repo");
        assert_eq!(v["Err"], "couldn't find remote ref");
        assert_eq!(v["Args"]["failCount"], 1);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path)?.permissions().mode() & 0o777, 0o644);
        log.delete_error_file();
        assert!(!path.exists());
        log.delete_error_file();
        Ok(())
    }
}
