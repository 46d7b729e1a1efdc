//! A service's state, Gitopper's five: OK (tracking its branch), FREEZE (held
//! where it is), ROLLBACK (to be pinned to a commit, then FREEZE), BROKEN
//! (its links or its action failed) and DIFF (git failed), with the
//! operator's transitions (freeze, unfreeze, roll back) as pure functions.
//!
//! Beyond Gitopper, the state survives a restart: it is saved in the
//! checkout's git directory (`.git/gitopper/state.json`, written atomically)
//! on every change, with the pinned commit and the commit the action last
//! succeeded at. A FREEZE or a pending ROLLBACK comes back as it was; OK,
//! BROKEN and DIFF come back as OK, to be checked again (Gitopper's start
//! state). A state file that cannot be read holds the service in FREEZE,
//! so that nothing moves until an operator decides.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Gitopper's states, with its gauge values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    /// Tracking the branch.
    Ok,
    /// Held at its commit; upstream is not pulled.
    Freeze,
    /// To be checked out at a commit, then held (FREEZE).
    Rollback,
    /// Its links or its action failed; still tracking.
    Broken,
    /// git failed; still tracking.
    Diff,
}

impl State {
    /// The value of `gitopper_service_state`.
    pub fn gauge(self) -> i64 {
        match self {
            Self::Ok => 0,
            Self::Freeze => 1,
            Self::Rollback => 2,
            Self::Broken => 3,
            Self::Diff => 4,
        }
    }

    /// As Gitopper prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Freeze => "FREEZE",
            Self::Rollback => "ROLLBACK",
            Self::Broken => "BROKEN",
            Self::Diff => "DIFF",
        }
    }

    /// FREEZE or ROLLBACK: the operator holds the service; nothing is pulled.
    pub fn held(self) -> bool {
        matches!(self, Self::Freeze | Self::Rollback)
    }
}

/// What is known of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Its state.
    pub state: State,
    /// What the state says more (an error, `ROLLBACK: <hash>`).
    pub info: String,
    /// When the state or its info last changed.
    pub since: SystemTime,
    /// The commit checked out (full hash), once there is a checkout.
    pub hash: Option<String>,
    /// The commit a ROLLBACK pins (pending in ROLLBACK, done in FREEZE).
    pub pin: Option<String>,
    /// The commit the action last succeeded at (or found nothing to do).
    pub applied: Option<String>,
}

impl Status {
    /// Gitopper's start: OK, nothing known.
    pub fn new(now: SystemTime) -> Self {
        Self {
            state: State::Ok,
            info: String::new(),
            since: now,
            hash: None,
            pin: None,
            applied: None,
        }
    }

    /// Sets the state and its info; `since` moves only when either changes.
    pub fn set(&mut self, state: State, info: impl Into<String>, now: SystemTime) {
        let info = info.into();
        if self.state != state || self.info != info {
            self.since = now;
        }
        self.state = state;
        self.info = info;
    }

    /// The operator's freeze: hold the service where it is (a pending
    /// rollback is dropped). Always allowed.
    pub fn freeze(&mut self, now: SystemTime) {
        self.pin = None;
        self.set(State::Freeze, "", now);
    }

    /// The operator's unfreeze: a held service (FREEZE, ROLLBACK) tracks its
    /// branch again. Returns false, changing nothing, for a service that
    /// was not held: an unfreeze does not hide a BROKEN or a DIFF.
    pub fn unfreeze(&mut self, now: SystemTime) -> bool {
        if !self.state.held() {
            return false;
        }
        self.pin = None;
        self.set(State::Ok, "", now);
        true
    }

    /// The operator's rollback to `hash` (a full hash, already resolved):
    /// pending until the tracker has checked it out.
    pub fn rollback(&mut self, hash: &str, now: SystemTime) {
        self.pin = Some(hash.to_string());
        self.set(State::Rollback, hash, now);
    }

    /// What is saved.
    pub fn saved(&self) -> Saved {
        Saved {
            state: self.state,
            info: self.info.clone(),
            since: self.since.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
            pin: self.pin.clone(),
            applied: self.applied.clone(),
        }
    }

    /// The status a restart begins with, from what was saved: FREEZE and a
    /// pending ROLLBACK as they were, any other state as OK.
    pub fn restored(saved: Saved, now: SystemTime) -> Self {
        let since = UNIX_EPOCH + Duration::from_secs(saved.since);
        match saved.state {
            State::Freeze | State::Rollback => Self {
                state: saved.state,
                info: saved.info,
                since,
                hash: None,
                pin: saved.pin,
                applied: saved.applied,
            },
            State::Ok | State::Broken | State::Diff => Self {
                applied: saved.applied,
                ..Self::new(now)
            },
        }
    }
}

/// The saved part of a [`Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    /// The state.
    pub state: State,
    /// Its info.
    #[serde(default)]
    pub info: String,
    /// When it changed, in seconds since the epoch.
    #[serde(default)]
    pub since: u64,
    /// The pinned commit.
    #[serde(default)]
    pub pin: Option<String>,
    /// The commit the action last succeeded at.
    #[serde(default)]
    pub applied: Option<String>,
}

/// Where a checkout's state is saved.
pub fn path(checkout: &Path) -> PathBuf {
    checkout.join(".git").join("gitopper").join("state.json")
}

/// The state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// Reading or writing failed.
    #[error("state file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not a state file.
    #[error("state file {path} is not what git-sync writes")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// The saved state of the checkout at `checkout`, if any was saved.
pub fn load(checkout: &Path) -> Result<Option<Saved>, StateFileError> {
    let path = path(checkout);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateFileError::Io { path, source }),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| StateFileError::Malformed { path, source })
}

/// Saves `saved` for the checkout at `checkout` (which must exist): a
/// temporary file, synced, renamed over the old one, and the directory
/// synced, so that a crash leaves the old state or the new one.
pub fn save(checkout: &Path, saved: &Saved) -> Result<(), StateFileError> {
    let path = path(checkout);
    let io = |source| StateFileError::Io {
        path: path.clone(),
        source,
    };
    let dir = path.parent().expect("the state file has a directory");
    std::fs::create_dir_all(dir).map_err(io)?;
    let body = serde_json::to_vec_pretty(saved).expect("a status serializes");
    let tmp = dir.join("state.json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&body).map_err(io)?;
    f.write_all(b"\n").map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn operator_transitions() {
        // (start state, operation, end state, changed)
        type Op = fn(&mut Status, SystemTime) -> bool;
        let freeze: Op = |s, t| {
            s.freeze(t);
            true
        };
        let unfreeze: Op = |s, t| s.unfreeze(t);
        let rollback: Op = |s, t| {
            s.rollback("abc", t);
            true
        };
        let cases: &[(State, Op, State, bool)] = &[
            (State::Ok, freeze, State::Freeze, true),
            (State::Broken, freeze, State::Freeze, true),
            (State::Diff, freeze, State::Freeze, true),
            (State::Rollback, freeze, State::Freeze, true),
            (State::Freeze, unfreeze, State::Ok, true),
            (State::Rollback, unfreeze, State::Ok, true),
            (State::Ok, unfreeze, State::Ok, false),
            (State::Broken, unfreeze, State::Broken, false),
            (State::Diff, unfreeze, State::Diff, false),
            (State::Ok, rollback, State::Rollback, true),
            (State::Freeze, rollback, State::Rollback, true),
            (State::Broken, rollback, State::Rollback, true),
        ];
        for (start, op, end, changed) in cases {
            let mut s = Status::new(at(1));
            s.set(*start, "why", at(2));
            assert_eq!(op(&mut s, at(3)), *changed, "{start:?}");
            assert_eq!(s.state, *end, "{start:?}");
            if *changed {
                assert_eq!(s.since, at(3), "{start:?}");
            } else {
                assert_eq!((s.since, s.info.as_str()), (at(2), "why"), "{start:?}");
            }
        }
        let mut s = Status::new(at(1));
        s.rollback("abc", at(2));
        assert_eq!((s.info.as_str(), s.pin.as_deref()), ("abc", Some("abc")));
        s.freeze(at(3));
        assert_eq!(s.pin, None, "a freeze drops a pending rollback");
    }

    #[test]
    fn since_moves_only_on_a_change() {
        let mut s = Status::new(at(1));
        s.set(State::Ok, "", at(5));
        assert_eq!(s.since, at(1));
        s.set(State::Broken, "x", at(6));
        s.set(State::Broken, "x", at(7));
        assert_eq!(s.since, at(6));
        s.set(State::Broken, "y", at(8));
        assert_eq!(s.since, at(8));
    }

    #[test]
    fn restart_keeps_what_the_operator_set() {
        let saved = |state| Saved {
            state,
            info: "ROLLBACK: abc".into(),
            since: 100,
            pin: Some("abc".into()),
            applied: Some("def".into()),
        };
        for held in [State::Freeze, State::Rollback] {
            let s = Status::restored(saved(held), at(500));
            assert_eq!((s.state, s.since, s.pin.as_deref()), (held, at(100), Some("abc")));
        }
        for other in [State::Ok, State::Broken, State::Diff] {
            let s = Status::restored(saved(other), at(500));
            assert_eq!((s.state, s.since, s.pin.as_deref()), (State::Ok, at(500), None));
            assert_eq!(s.info, "");
            assert_eq!(s.applied.as_deref(), Some("def"), "the last applied commit is kept");
        }
    }

    #[test]
    fn saved_round_trips_atomically() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let checkout = dir.path();
        std::fs::create_dir(checkout.join(".git"))?;
        assert_eq!(load(checkout)?, None);
        let mut s = Status::new(at(42));
        s.rollback("0123", at(43));
        save(checkout, &s.saved())?;
        assert_eq!(load(checkout)?, Some(s.saved()));
        let text = std::fs::read_to_string(path(checkout))?;
        assert!(text.contains("\"ROLLBACK\""), "{text}");
        assert!(!path(checkout).with_extension("json.tmp").exists());
        std::fs::write(path(checkout), "{not json")?;
        assert!(matches!(load(checkout), Err(StateFileError::Malformed { .. })));
        Ok(())
    }
}
