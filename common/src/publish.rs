//! git-post: publishing a prepared branch pair to the remote, as one
//! atomic push, retried with exponential backoff and jitter while the
//! failure may pass (the network, the remote), never for a wrong password.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::remote::{self, Credentials, PushOutcome, PushSpec, Remote, RemoteError};
use crate::repo::{Repo, RepoError};

#[derive(Clone, Debug)]
pub struct PublishConfig {
    pub repo: PathBuf,
    pub data_ref: String,
    pub metadata_ref: String,
    pub remote: Remote,
    pub credentials: Credentials,
    /// Attempts in all (at least one).
    pub max_attempts: u32,
    /// Time after which no new attempt starts.
    pub max_elapsed: Duration,
    /// Deadline of each push.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("{metadata_ref} does not exist in {repo}: run gitcd-init first")]
    NoMetadata { metadata_ref: String, repo: PathBuf },
    #[error("gave up after {attempts} attempts in {elapsed:?}")]
    GaveUp {
        attempts: u32,
        elapsed: Duration,
        #[source]
        last: RemoteError,
    },
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("reading {metadata_ref}")]
    Store {
        metadata_ref: String,
        #[source]
        source: crate::store::Error,
    },
}

/// Pushes the pair (the metadata ref, and the data commit it describes).
pub async fn publish(config: &PublishConfig) -> Result<PushOutcome, PublishError> {
    let repo = Repo::open(&config.repo)?;
    let local = repo.local();
    let meta = local
        .ref_target(&config.metadata_ref)?
        .ok_or_else(|| PublishError::NoMetadata {
            metadata_ref: config.metadata_ref.clone(),
            repo: config.repo.clone(),
        })?;
    let data = crate::store::history::data_of(&local, meta).map_err(|source| PublishError::Store {
        metadata_ref: config.metadata_ref.clone(),
        source,
    })?;
    let specs = [
        PushSpec {
            local: data.to_string(),
            remote_ref: config.data_ref.clone(),
        },
        PushSpec {
            local: meta.to_string(),
            remote_ref: config.metadata_ref.clone(),
        },
    ];
    let start = Instant::now();
    let mut delays = {
        use backon::BackoffBuilder as _;
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut attempts = 0;
    loop {
        attempts += 1;
        let err = match remote::push(
            repo.git_dir(),
            &config.remote,
            &config.credentials,
            &specs,
            config.timeout,
        )
        .await
        {
            Ok(outcome) => return Ok(outcome),
            // A rejection here means the remote's branch has history this
            // repository lacks: trying again will not change that.
            Err(e) if !e.is_transient() || matches!(e, RemoteError::Rejected { .. }) => return Err(e.into()),
            Err(e) => e,
        };
        let delay = delays.next().unwrap_or(Duration::from_secs(10));
        if attempts >= config.max_attempts.max(1) || start.elapsed() + delay > config.max_elapsed {
            return Err(PublishError::GaveUp {
                attempts,
                elapsed: start.elapsed(),
                last: err,
            });
        }
        tracing::warn!(attempt = attempts, error = %crate::error::chain(&err), retry_in = ?delay, "push failed; retrying");
        tokio::time::sleep(delay).await;
    }
}
