//! One service, tracked: its checkout kept on its branch (or held), its
//! links made, its action run when its linked files change.
//!
//! A tracker works in steps, one at a time under the service's step lock,
//! which the API's changes take too: a freeze answered is a freeze in
//! force, never overtaken by a pull that was already running. Each step:
//! 1. installs the package while that has not succeeded (BROKEN until it
//!    does), clones when there is no checkout (DIFF until that works), and
//!    brings an existing checkout in line with the services file once per
//!    process;
//! 2. by state: ROLLBACK checks out the pinned commit, makes the links,
//!    runs the action (always), and becomes FREEZE (`ROLLBACK: <hash>`),
//!    or DIFF (git failed) or BROKEN (links or action failed), which track
//!    the branch again (Gitopper's transitions); FREEZE holds the commit (and
//!    re-pins a rolled-back commit that was moved by hand); OK, BROKEN and
//!    DIFF fetch the branch and check out its tip (DIFF when git fails);
//! 3. makes the links (BROKEN when that fails) and decides on the action:
//!    `change` when a linked path differs between the commit the action
//!    last succeeded at and the one checked out, else `start` when links
//!    were just made. A success is OK (a held service stays held, with any
//!    error in its info); a failure is BROKEN and is not retried at the same
//!    commit in the same process. With nothing to do, DIFF clears to OK (the
//!    checkout matches upstream again) and BROKEN stays until an action
//!    succeeds.
//!
//! The commit the action last succeeded at is saved with the state, so a
//! change checked out just before a crash is still acted on after it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::sync::Notify;

use super::action::{Phase, Runner};
use super::checkout::{Checkout, ResolveError};
use super::config::{self, Action};
use super::git::{Git, RunAs};
use super::links::{self, How};
use super::metrics::Metrics;
use super::state::{self, State, Status};
use crate::sync::credentials::redact_url;
use crate::sync::log::{Log, error_chain};

/// What every tracker shares.
pub struct Ctx {
    /// git.
    pub git: Git,
    /// Actions and packages.
    pub runner: Runner,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The log.
    pub log: Log,
    /// `--services-links`.
    pub link_mode: links::Mode,
    /// The deadline of one step's git commands and action.
    pub step_timeout: Duration,
    /// `/etc/os-release`, for packages.
    pub os_release: String,
}

/// A tracked service, shared by its tracker and the API.
pub struct Tracked {
    /// The service as the services file says.
    pub spec: config::Service,
    /// Its checkout.
    pub checkout: Checkout,
    /// Why git cannot run as its user, if it cannot.
    owner_error: Option<String>,
    status: Mutex<Status>,
    links: Mutex<Vec<(PathBuf, How)>>,
    step: tokio::sync::Mutex<StepMemory>,
    /// Wakes the tracker for a step now.
    pub wake: Notify,
}

/// What a tracker remembers between steps (not saved).
#[derive(Default)]
struct StepMemory {
    /// The package is installed (or there is none).
    package_done: bool,
    /// The checkout was brought in line with the services file.
    configured: bool,
    /// The commit the action last failed at, and the error.
    failed_at: Option<(String, String)>,
}

/// An operator's change the API asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Hold at the current commit.
    Freeze,
    /// Track the branch again.
    Unfreeze,
    /// Pin to a commit (a hash or prefix, resolved here).
    Rollback(String),
}

/// Why an operator's change was refused (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The service has no checkout yet.
    #[error("service {0:?} has no checkout yet")]
    NoCheckout(String),
    /// The rollback hash is not a commit.
    #[error(transparent)]
    Hash(#[from] ResolveError),
    /// The new state could not be saved.
    #[error(transparent)]
    Save(#[from] state::StateFileError),
}

impl Tracked {
    /// A service to track, its saved state read back.
    pub fn new(spec: config::Service, owner: Result<Option<RunAs>, String>, now: SystemTime) -> Self {
        let (owner, owner_error) = match owner {
            Ok(o) => (o, None),
            Err(e) => (None, Some(e)),
        };
        let checkout = Checkout {
            dir: spec.checkout.clone(),
            upstream: spec.upstream.clone(),
            branch: spec.branch.clone(),
            links: spec.dirs.iter().map(|d| d.link.clone()).collect(),
            owner,
        };
        let status = if checkout.exists() {
            match state::load(&checkout.dir) {
                Ok(Some(saved)) => Status::restored(saved, now),
                Ok(None) => Status::new(now),
                Err(e) => {
                    let mut s = Status::new(now);
                    s.set(State::Freeze, format!("held: {}", error_chain(&e)), now);
                    s
                }
            }
        } else {
            Status::new(now)
        };
        Self {
            spec,
            checkout,
            owner_error,
            status: Mutex::new(status),
            links: Mutex::new(Vec::new()),
            step: tokio::sync::Mutex::new(StepMemory::default()),
            wake: Notify::new(),
        }
    }

    /// The service's status now.
    pub fn status(&self) -> Status {
        self.status.lock().expect("status lock is never poisoned").clone()
    }

    /// How each linked `local` shows its path, as last made.
    pub fn links(&self) -> Vec<(PathBuf, How)> {
        self.links.lock().expect("links lock is never poisoned").clone()
    }

    /// Changes the status, saves it (when there is a checkout) and shows
    /// it in the metrics, all under the status lock: whoever sees the new
    /// status (the API) finds it saved and in the metrics too, and two
    /// changes cannot reach the metrics out of order. A failed save is
    /// logged: the tracker's changes reflect what happened on disk whether
    /// or not they could be saved.
    fn update(&self, ctx: &Ctx, f: impl FnOnce(&mut Status)) {
        let mut s = self.status.lock().expect("status lock is never poisoned");
        let before = s.clone();
        f(&mut s);
        if *s == before {
            return;
        }
        let after = s.clone();
        if before.state != after.state || before.info != after.info {
            ctx.log.info(
                0,
                "service state",
                &[
                    ("service", self.spec.name.clone().into()),
                    ("state", after.state.as_str().into()),
                    ("info", after.info.clone().into()),
                ],
            );
        }
        if before.saved() != after.saved()
            && self.checkout.exists()
            && let Err(e) = state::save(&self.checkout.dir, &after.saved())
        {
            ctx.log.error(Some(&e), "can't save the service's state", &[]);
        }
        ctx.metrics.show(&self.spec.name, &after);
    }

    fn set(&self, ctx: &Ctx, state: State, info: impl Into<String>) {
        let info = info.into();
        self.update(ctx, |s| s.set(state, info, SystemTime::now()));
    }

    /// Shows the status in the metrics (at start).
    pub fn show(&self, ctx: &Ctx) {
        ctx.metrics.show(&self.spec.name, &self.status());
    }

    /// An operator's change: taken under the step lock, saved before it
    /// is in force, and refused whole if it cannot be. Wakes the tracker
    /// for a rollback or an unfreeze.
    pub async fn change(&self, ctx: &Ctx, change: &Change) -> Result<Status, ChangeError> {
        let _step = self.step.lock().await;
        if !self.checkout.exists() {
            return Err(ChangeError::NoCheckout(self.spec.name.clone()));
        }
        let now = SystemTime::now();
        let mut next = self.status();
        let wake = match change {
            Change::Freeze => {
                next.freeze(now);
                false
            }
            Change::Unfreeze => next.unfreeze(now),
            Change::Rollback(rev) => {
                let hash = match self.checkout.resolve(rev) {
                    Ok(h) => h,
                    // Perhaps a commit the checkout has not fetched yet
                    // (a frozen service does not fetch): fetch, then ask
                    // again.
                    Err(ResolveError::Unknown { .. }) => {
                        let deadline = crate::sync::git::deadline_in(ctx.step_timeout);
                        if let Err(e) = self.checkout.fetch(&ctx.git, deadline).await {
                            ctx.log
                                .error(None, "fetching for a rollback", &[("error", error_chain(&e).into())]);
                        }
                        self.checkout.resolve(rev)?
                    }
                    Err(e) => return Err(e.into()),
                };
                next.rollback(&hash, now);
                true
            }
        };
        state::save(&self.checkout.dir, &next.saved())?;
        self.update(ctx, |s| *s = next);
        if wake {
            self.wake.notify_one();
        }
        Ok(self.status())
    }

    /// One step (see the module's documentation).
    pub async fn step(&self, ctx: &Ctx) {
        let mut mem = self.step.lock().await;
        if let Some(e) = &self.owner_error {
            self.set(ctx, State::Diff, e.clone());
            return;
        }
        let deadline = crate::sync::git::deadline_in(ctx.step_timeout);
        if !mem.package_done {
            if let Some(p) = &self.spec.package {
                match ctx.runner.install(p, &ctx.os_release, deadline).await {
                    Ok(true) => ctx.log.info(0, "installed package", &[("package", p.clone().into())]),
                    Ok(false) => ctx.log.info(
                        0,
                        "no known package manager on this system: package not installed",
                        &[("package", p.clone().into())],
                    ),
                    Err(e) => {
                        self.set(
                            ctx,
                            State::Broken,
                            format!("installing package {p:?}: {}", error_chain(&e)),
                        );
                        return;
                    }
                }
            }
            if let Err(e) = ctx
                .runner
                .enable_template(&self.spec.action, &self.spec.name, deadline)
                .await
            {
                self.set(
                    ctx,
                    State::Broken,
                    format!("enabling {}: {}", self.spec.name, error_chain(&e)),
                );
                return;
            }
            mem.package_done = true;
        }
        if !self.checkout.exists() {
            if let Err(e) = self.checkout.clone_repo(&ctx.git, deadline).await {
                self.set(
                    ctx,
                    State::Diff,
                    format!(
                        "error cloning {}: {}",
                        redact_url(&self.checkout.upstream),
                        error_chain(&e)
                    ),
                );
                return;
            }
            mem.configured = true;
            ctx.log.info(
                0,
                "cloned",
                &[
                    ("service", self.spec.name.clone().into()),
                    ("dir", self.checkout.dir.display().to_string().into()),
                ],
            );
        } else if !mem.configured {
            if let Err(e) = self.checkout.configure(&ctx.git, deadline).await {
                self.set(
                    ctx,
                    State::Diff,
                    format!("error configuring the checkout: {}", error_chain(&e)),
                );
                return;
            }
            mem.configured = true;
        }
        let head = match self.checkout.head() {
            Ok(h) => h,
            Err(e) => {
                self.set(ctx, State::Diff, error_chain(&e));
                return;
            }
        };
        self.update(ctx, |s| s.hash = Some(head.clone()));
        let status = self.status();
        match status.state {
            State::Rollback => {
                if let Some(pin) = status.pin {
                    self.roll_back(ctx, &mut mem, &pin, deadline).await;
                } else {
                    self.set(ctx, State::Freeze, "");
                }
            }
            State::Freeze => match status.pin {
                Some(pin) if pin != head => self.roll_back(ctx, &mut mem, &pin, deadline).await,
                _ => self.settle(ctx, &mut mem, &head, deadline).await,
            },
            State::Ok | State::Broken | State::Diff => {
                let tip = match self.checkout.fetch(&ctx.git, deadline).await {
                    Ok(t) => t,
                    Err(e) => {
                        self.set(
                            ctx,
                            State::Diff,
                            format!(
                                "error pulling {}: {}",
                                redact_url(&self.checkout.upstream),
                                error_chain(&e)
                            ),
                        );
                        return;
                    }
                };
                if tip != head || !self.on_branch() {
                    if let Err(e) = self.checkout.check_out_branch_at(&ctx.git, &tip, deadline).await {
                        self.set(
                            ctx,
                            State::Diff,
                            format!("error checking out {}: {}", self.checkout.branch, error_chain(&e)),
                        );
                        return;
                    }
                    self.update(ctx, |s| s.hash = Some(tip.clone()));
                }
                self.settle(ctx, &mut mem, &tip, deadline).await;
            }
        }
    }

    fn on_branch(&self) -> bool {
        let want = format!("ref: refs/heads/{}", self.checkout.branch);
        std::fs::read_to_string(self.checkout.dir.join(".git/HEAD")).is_ok_and(|h| h.trim() == want)
    }

    /// Links, then the action if one is due (see the module's notes).
    async fn settle(&self, ctx: &Ctx, mem: &mut StepMemory, head: &str, deadline: tokio::time::Instant) {
        let held = self.status().state.held();
        let made = match links::ensure(
            &self.spec.dirs,
            &self.checkout.dir,
            ctx.link_mode,
            self.checkout.owner.as_ref(),
        ) {
            Ok(m) => m,
            Err(e) => {
                let info = format!("error linking: {}", error_chain(&e));
                if held {
                    self.update(ctx, |s| s.info = info);
                } else {
                    self.set(ctx, State::Broken, info);
                }
                return;
            }
        };
        if made.changed > 0 {
            let how: Vec<Value> = made
                .links
                .iter()
                .map(|(p, h)| format!("{} ({})", p.display(), h.as_str()).into())
                .collect();
            ctx.log.info(
                0,
                "linked",
                &[("service", self.spec.name.clone().into()), ("links", how.into())],
            );
        }
        *self.links.lock().expect("links lock is never poisoned") = made.links;
        let applied = self.status().applied;
        if applied.is_none() && made.changed == 0 {
            // Found in place (a restart, or a checkout Gitopper made):
            // nothing to tell the service.
            self.update(ctx, |s| s.applied = Some(head.to_string()));
        }
        let changed = applied
            .as_deref()
            .is_some_and(|a| a != head && self.checkout.links_differ(a, head));
        if !changed && made.changed == 0 {
            self.update(ctx, |s| {
                s.applied = Some(head.to_string());
                if s.state == State::Diff {
                    s.set(State::Ok, "", SystemTime::now());
                }
            });
            return;
        }
        if let Some((at, info)) = &mem.failed_at
            && at == head
        {
            // Not retried at the commit it failed at (a later commit, or a
            // restart, tries again). A git error since then that has
            // cleared leaves the service BROKEN again, not DIFF; a held
            // service stays held, with the error in its info.
            if self.status().state == State::Diff {
                self.set(ctx, State::Broken, info.clone());
            }
            return;
        }
        let phase = if changed { Phase::Change } else { Phase::Start };
        self.act(ctx, mem, head, phase, deadline).await;
    }

    async fn act(&self, ctx: &Ctx, mem: &mut StepMemory, head: &str, phase: Phase, deadline: tokio::time::Instant) {
        ctx.log.info(
            0,
            "running the service's action",
            &[
                ("service", self.spec.name.clone().into()),
                ("phase", phase.as_str().into()),
                ("hash", head.into()),
            ],
        );
        let result = ctx
            .runner
            .run(
                &self.spec.action,
                &self.spec.name,
                &self.checkout.dir,
                head,
                phase,
                deadline,
            )
            .await;
        let held = self.status().state.held();
        match result {
            Ok(()) => {
                mem.failed_at = None;
                self.update(ctx, |s| {
                    s.applied = Some(head.to_string());
                    if !held {
                        s.set(State::Ok, "", SystemTime::now());
                    }
                });
            }
            Err(e) => {
                let info = format!("error running the action: {}", error_chain(&e));
                mem.failed_at = Some((head.to_string(), info.clone()));
                if held {
                    self.update(ctx, |s| s.info = info);
                } else {
                    self.set(ctx, State::Broken, info);
                }
            }
        }
    }

    /// Checks out `pin`, links, acts, and holds it (FREEZE), or falls back
    /// to tracking (DIFF, BROKEN) as Gitopper's diagram says.
    async fn roll_back(&self, ctx: &Ctx, mem: &mut StepMemory, pin: &str, deadline: tokio::time::Instant) {
        let now = SystemTime::now;
        let fail = |state: State, info: String| {
            self.update(ctx, |s| {
                s.pin = None;
                s.set(state, info, now());
            })
        };
        if let Err(e) = self.checkout.check_out_detached(&ctx.git, pin, deadline).await {
            fail(State::Diff, format!("error rolling back to {pin}: {}", error_chain(&e)));
            return;
        }
        self.update(ctx, |s| s.hash = Some(pin.to_string()));
        let made = match links::ensure(
            &self.spec.dirs,
            &self.checkout.dir,
            ctx.link_mode,
            self.checkout.owner.as_ref(),
        ) {
            Ok(m) => m,
            Err(e) => {
                fail(State::Broken, format!("error linking: {}", error_chain(&e)));
                return;
            }
        };
        *self.links.lock().expect("links lock is never poisoned") = made.links;
        ctx.log.info(
            0,
            "running the service's action",
            &[
                ("service", self.spec.name.clone().into()),
                ("phase", Phase::Rollback.as_str().into()),
                ("hash", pin.into()),
            ],
        );
        match ctx
            .runner
            .run(
                &self.spec.action,
                &self.spec.name,
                &self.checkout.dir,
                pin,
                Phase::Rollback,
                deadline,
            )
            .await
        {
            Ok(()) => {
                mem.failed_at = None;
                self.update(ctx, |s| {
                    s.applied = Some(pin.to_string());
                    s.set(State::Freeze, format!("ROLLBACK: {pin}"), now());
                });
            }
            Err(e) => {
                let info = format!("error running the action: {}", error_chain(&e));
                mem.failed_at = Some((pin.to_string(), info.clone()));
                fail(State::Broken, info);
            }
        }
    }

    /// Whether the service has an action that does anything.
    pub fn acts(&self) -> bool {
        self.spec.action != Action::Nothing
    }
}
