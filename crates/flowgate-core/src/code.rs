//! What a run ran: its pipeline file and the files it pins (`pin = [...]`),
//! kept by content hash in the state store, so that `flowgate runs rerun` runs
//! a failed run again with the files it had, not with today's.
//!
//! Each file is kept once, under the hash of its bytes; a run's manifest (its
//! files' paths, hashes and modes) is kept under the hash of the manifest, and
//! that hash is what the run records (`params.code.id`). Many workers sharing a
//! PostgreSQL state store thus share the files too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::plan::Plan;
use crate::state::{StateError, StateStore};

/// Most bytes one kept file may have, and all of a run's files together.
const FILE_LIMIT: u64 = 4 << 20;
const TOTAL_LIMIT: u64 = 32 << 20;

/// Folders never kept: tools' caches and environments, flowgate's own state.
const SKIPPED_DIRS: &[&str] = &[
    ".git",
    ".venv",
    "venv",
    "node_modules",
    "__pycache__",
    ".flowgate",
];

#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    TooLarge(String),
    #[error(
        "the files run {run} ran (code {code}) are not in the state store: pruned, or kept by another state store"
    )]
    Missing { run: String, code: String },
    #[error("kept file {0} is damaged: its bytes do not match their hash")]
    Damaged(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CodeError + '_ {
    move |source| CodeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    /// The pipeline file, relative to the folder.
    pipeline: String,
    files: BTreeMap<String, Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    sha256: String,
    bytes: u64,
    executable: bool,
}

fn blob_key(sha: &str) -> String {
    format!("flowgate/code/blob/{sha}")
}

fn manifest_key(id: &str) -> String {
    format!("flowgate/code/manifest/{id}")
}

/// What [`keep`] kept.
#[derive(Debug, Clone)]
pub struct Kept {
    /// The manifest's hash: the same files give the same id.
    pub id: String,
    pub files: usize,
    pub bytes: u64,
}

/// Keep `plan`'s pipeline file and pinned files; files already kept (by any
/// run) are not written again.
pub async fn keep(state: &dyn StateStore, plan: &Plan) -> Result<Kept, CodeError> {
    let root = plan.code_root();
    let pipeline = plan
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut paths = BTreeMap::new();
    paths.insert(pipeline.clone(), root.join(&pipeline));
    for p in &plan.pin {
        collect(root, p, &mut paths)?;
    }
    let mut manifest = Manifest {
        pipeline,
        files: BTreeMap::new(),
    };
    let mut total = 0;
    for (rel, path) in paths {
        let meta = std::fs::metadata(&path).map_err(io(&path))?;
        total += meta.len();
        if meta.len() > FILE_LIMIT || total > TOTAL_LIMIT {
            return Err(CodeError::TooLarge(format!(
                "{rel}: the files to keep pass {} MiB per file or {} MiB in all; pin the scripts, not data",
                FILE_LIMIT >> 20,
                TOTAL_LIMIT >> 20
            )));
        }
        let body = std::fs::read(&path).map_err(io(&path))?;
        let sha = hex::encode(sha2::Sha256::digest(&body));
        let key = blob_key(&sha);
        if state.kv_get(&key).await?.is_none() {
            let text = base64::engine::general_purpose::STANDARD.encode(&body);
            state.kv_set(&key, &text).await?;
        }
        manifest.files.insert(
            rel,
            Entry {
                sha256: sha,
                bytes: meta.len(),
                executable: executable(&meta),
            },
        );
    }
    let text = serde_json::to_string(&manifest).map_err(|e| CodeError::Damaged(e.to_string()))?;
    let id = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    if state.kv_get(&manifest_key(&id)).await?.is_none() {
        state.kv_set(&manifest_key(&id), &text).await?;
    }
    Ok(Kept {
        id,
        files: manifest.files.len(),
        bytes: total,
    })
}

#[cfg(unix)]
fn executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn executable(_: &std::fs::Metadata) -> bool {
    false
}

/// Whether a file or folder of this name is left out: environment files hold
/// secrets, the rest is made, not written.
fn skipped(name: &str, dir: bool) -> bool {
    if dir {
        SKIPPED_DIRS.contains(&name)
    } else {
        name.starts_with(".env") || name == ".flowgate-setup"
    }
}

/// Every file at `rel` under `root` (a file, or a folder walked), by its path
/// relative to `root` with `/` between names.
fn collect(root: &Path, rel: &Path, out: &mut BTreeMap<String, PathBuf>) -> Result<(), CodeError> {
    let path = root.join(rel);
    let meta = std::fs::metadata(&path).map_err(io(&path))?;
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    if skipped(&name, meta.is_dir()) {
        return Ok(());
    }
    if meta.is_file() {
        let key = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .filter(|c| c != ".")
            .collect::<Vec<_>>()
            .join("/");
        out.insert(key, path);
    } else if meta.is_dir() {
        let mut entries = std::fs::read_dir(&path)
            .map_err(io(&path))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io(&path))?;
        entries.sort();
        for name in entries {
            collect(root, &rel.join(name), out)?;
        }
    }
    Ok(())
}

/// A run's files restored into a folder of their own; removed when dropped.
#[derive(Debug)]
pub struct Restored {
    dir: tempfile::TempDir,
    /// The pipeline file as it was.
    pub text: String,
}

impl Restored {
    /// The folder: the kept files, and everything else of today's folder
    /// linked in (data, `.env` files, caches), so a script finds what it found.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}

/// Restore the files of `code` (recorded by `run`) beside links to the rest of
/// `today`, the pipeline's folder.
pub async fn restore(
    state: &dyn StateStore,
    run: &str,
    code: &str,
    today: &Path,
) -> Result<Restored, CodeError> {
    let missing = || CodeError::Missing {
        run: run.to_string(),
        code: code.chars().take(12).collect(),
    };
    let manifest = state
        .kv_get(&manifest_key(code))
        .await?
        .ok_or_else(missing)?;
    let manifest: Manifest = serde_json::from_str(&manifest.value)
        .map_err(|e| CodeError::Damaged(format!("manifest {code}: {e}")))?;
    let dir = tempfile::Builder::new()
        .prefix("flowgate-rerun-")
        .tempdir()
        .map_err(io(&std::env::temp_dir()))?;
    let mut folders = BTreeSet::new();
    let mut text = String::new();
    for (rel, entry) in &manifest.files {
        let blob = state
            .kv_get(&blob_key(&entry.sha256))
            .await?
            .ok_or_else(missing)?;
        let body = base64::engine::general_purpose::STANDARD
            .decode(blob.value.trim())
            .map_err(|_| CodeError::Damaged(rel.clone()))?;
        if hex::encode(sha2::Sha256::digest(&body)) != entry.sha256 {
            return Err(CodeError::Damaged(rel.clone()));
        }
        let dest = dir.path().join(rel);
        let mut up = Path::new(rel).parent();
        while let Some(d) = up {
            folders.insert(d.to_path_buf());
            up = d.parent();
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&dest, &body).map_err(io(&dest))?;
        set_executable(&dest, entry.executable)?;
        if *rel == manifest.pipeline {
            text = String::from_utf8_lossy(&body).into_owned();
        }
    }
    let today = std::path::absolute(today).map_err(io(today))?;
    for folder in &folders {
        link_the_rest(&today.join(folder), &dir.path().join(folder))?;
    }
    Ok(Restored { dir, text })
}

/// Link each entry of `from` that `to` does not have.
fn link_the_rest(from: &Path, to: &Path) -> Result<(), CodeError> {
    let Ok(entries) = std::fs::read_dir(from) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry.map_err(io(from))?;
        let dest = to.join(entry.file_name());
        if dest.symlink_metadata().is_ok() {
            continue;
        }
        #[cfg(unix)]
        std::os::unix::fs::symlink(entry.path(), &dest).map_err(io(&dest))?;
    }
    Ok(())
}

#[cfg(unix)]
fn set_executable(path: &Path, executable: bool) -> Result<(), CodeError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

#[cfg(not(unix))]
fn set_executable(_: &Path, _: bool) -> Result<(), CodeError> {
    Ok(())
}
