//! git-pre: preparing a participant's repository. Without a remote, a bare
//! repository whose data branch has an initial empty commit. With one:
//! the remote configured (fetches land in remote-tracking refs, pushes name
//! the branch pair explicitly), the refs that matter fetched, and the local
//! branch pair created: from the remote's own pair when it has one (a pod
//! restarted from an empty volume continues where it was, and its
//! revisions jump past any it may have acknowledged but not pushed), else
//! from the upstream branch, else empty. Idempotent: an existing local pair
//! is kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gix::ObjectId;

use crate::remote::{self, Credentials, FetchSpec, Remote, RemoteError};
use crate::repo::refs::RefUpdate;
use crate::repo::{Kind, Maintenance, ObjectWriter, Repo, RepoError, Signature, encode_commit};

/// What git-pre is asked to do.
#[derive(Clone, Debug)]
pub struct PrepareConfig {
    pub repo: PathBuf,
    pub data_ref: String,
    pub metadata_ref: String,
    pub committer: Signature,
    /// The remote, when there is one.
    pub remote: Option<(Remote, Credentials)>,
    /// The branch (on the remote) a new branch starts from.
    pub upstream_ref: Option<String>,
    /// Whether a branch the remote lacks is created (`true`) or an error.
    pub create_missing: bool,
    pub timeout: Duration,
}

/// What git-pre found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prepared {
    /// The local branch pair was there: kept as it is.
    Existing,
    /// Restored from the remote's own pair.
    Restored,
    /// Created from the upstream branch.
    FromUpstream,
    /// Created empty (one empty commit).
    Created,
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("{ref_name} does not exist on {url} (--on-missing-branch=fail)")]
    Missing { ref_name: String, url: String },
    #[error("writing {path}")]
    Config {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Prepares the repository. Blocking.
pub fn prepare(config: &PrepareConfig) -> Result<Prepared, PrepareError> {
    let repo = Repo::open_or_init(&config.repo)?;
    let local = repo.local();
    if let Some((remote, _)) = &config.remote {
        configure_remote(repo.git_dir(), remote, &config.data_ref, &config.metadata_ref)?;
    }
    let have = (
        local.ref_target(&config.data_ref)?,
        local.ref_target(&config.metadata_ref)?,
    );
    if have.0.is_some() || have.1.is_some() {
        local.set_head(&config.data_ref)?;
        return Ok(Prepared::Existing);
    }
    let outcome = match &config.remote {
        None => {
            initial_commit(&repo, config)?;
            Prepared::Created
        }
        Some((remote, credentials)) => from_remote(&repo, config, remote, credentials)?,
    };
    local.set_head(&config.data_ref)?;
    Ok(outcome)
}

fn from_remote(
    repo: &Repo,
    config: &PrepareConfig,
    remote: &Remote,
    credentials: &Credentials,
) -> Result<Prepared, PrepareError> {
    let local = repo.local();
    let mut wanted = vec![config.data_ref.clone(), config.metadata_ref.clone()];
    if let Some(up) = &config.upstream_ref {
        wanted.push(up.clone());
        wanted.push(crate::pull::metadata_ref(up));
    }
    let specs: Vec<FetchSpec> = wanted
        .iter()
        .map(|r| FetchSpec {
            remote_ref: r.clone(),
            local_ref: remote::tracking_ref(&remote.name, r),
        })
        .collect();
    let fetched = remote::fetch(repo.git_dir(), remote, credentials, &specs, config.timeout)?;
    // A pair: the data commit, and the metadata commit when it describes it.
    let pair = |data_ref: &str, meta_ref: &str| -> Option<(ObjectId, Option<ObjectId>)> {
        let data = *fetched.refs.get(data_ref)?;
        let meta = fetched
            .refs
            .get(meta_ref)
            .copied()
            .filter(|m| crate::store::history::data_of(&local, *m).ok() == Some(data));
        Some((data, meta))
    };
    let create = |data: ObjectId, meta: Option<ObjectId>| -> Result<(), RepoError> {
        let mut edits = vec![RefUpdate {
            name: &config.data_ref,
            old: None,
            new: data,
        }];
        if let Some(meta) = meta {
            edits.push(RefUpdate {
                name: &config.metadata_ref,
                old: None,
                new: meta,
            });
        }
        local.update_refs(&edits, "git-pre", &config.committer)
    };
    if let Some((data, meta)) = pair(&config.data_ref, &config.metadata_ref) {
        create(data, meta)?;
        if meta.is_some() {
            let marker = crate::repo::lock::restored_marker_path(repo.git_dir(), &config.metadata_ref);
            write_marker(&marker)?;
        }
        tracing::info!(data_ref = %config.data_ref, %data, "restored the branch pair from the remote");
        return Ok(Prepared::Restored);
    }
    if !config.create_missing {
        return Err(PrepareError::Missing {
            ref_name: config.data_ref.clone(),
            url: remote::redact(&remote.url),
        });
    }
    if let Some(up) = &config.upstream_ref
        && let Some((data, meta)) = pair(up, &crate::pull::metadata_ref(up))
    {
        create(data, meta)?;
        tracing::info!(data_ref = %config.data_ref, upstream = %up, %data, "created the branch pair from the upstream branch");
        return Ok(Prepared::FromUpstream);
    }
    initial_commit(repo, config)?;
    Ok(Prepared::Created)
}

/// The remote in the repository's config: its URL, fetches into
/// remote-tracking refs for data and metadata refs alike, and pushes of
/// the branch pair under the same names. Written with gix (a URL with a
/// password in it never becomes an argument of a process).
fn configure_remote(git_dir: &Path, remote: &Remote, data_ref: &str, metadata_ref: &str) -> Result<(), PrepareError> {
    let path = git_dir.join("config");
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| PrepareError::Config {
        path: path.clone(),
        source,
    };
    let mut file = gix::config::File::from_path_no_includes(path.clone(), gix::config::Source::Local)
        .map_err(|e| failed(Box::new(e)))?;
    let name = remote.name.as_str();
    file.remove_section("remote", Some(name.into()));
    {
        let mut section = file
            .section_mut_or_create_new("remote", Some(name.into()))
            .map_err(|e| failed(Box::new(e)))?;
        let push = |section: &mut gix::config::file::SectionMut<'_>, key: &str, value: String| {
            section
                .push(key, Some(value.as_str().into()))
                .map_err(|e| failed(Box::new(e)))?;
            Ok::<_, PrepareError>(())
        };
        push(&mut section, "url", remote.url.clone())?;
        push(&mut section, "fetch", format!("+refs/heads/*:refs/remotes/{name}/*"))?;
        push(
            &mut section,
            "fetch",
            format!("+refs/gitcd/metadata/*:refs/remotes/{name}/gitcd/metadata/*"),
        )?;
        push(&mut section, "push", format!("{data_ref}:{data_ref}"))?;
        push(&mut section, "push", format!("{metadata_ref}:{metadata_ref}"))?;
    }
    let mut out = Vec::new();
    file.write_to(&mut out).map_err(|e| failed(Box::new(e)))?;
    let tmp = git_dir.join("config.gitcd-tmp");
    std::fs::write(&tmp, out)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| failed(Box::new(e)))?;
    Ok(())
}

/// A first, empty commit on the data ref (gitcd-init makes it revision 1).
fn initial_commit(repo: &Repo, config: &PrepareConfig) -> Result<(), RepoError> {
    let mut objects = ObjectWriter::new(repo.git_dir(), Maintenance::Off);
    let tree = objects.write(Kind::Tree, &[])?;
    let commit = objects.write(Kind::Commit, &encode_commit(tree, &[], &config.committer, "init"))?;
    objects.sync()?;
    let edit = RefUpdate {
        name: &config.data_ref,
        old: None,
        new: commit,
    };
    repo.local().update_refs(&[edit], "git-pre", &config.committer)?;
    Ok(())
}

fn write_marker(path: &Path) -> Result<(), RepoError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| RepoError::Io {
            path: dir.to_owned(),
            source,
        })?;
    }
    std::fs::write(
        path,
        "restored from the remote by git-pre; the store jumps its revisions at its next start\n",
    )
    .map_err(|source| RepoError::Io {
        path: path.to_owned(),
        source,
    })
}
