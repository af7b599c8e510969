//! A command's staged files: its inputs downloaded into a fresh folder before it
//! starts, its outputs uploaded from another after it succeeded. The folders
//! are the attempt's own (`<tmp>/flowgate-work/<run>/<step>/`), emptied when it
//! starts and removed when it ends, so nothing of an earlier attempt is uploaded.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use object_store::ObjectStoreExt as _;
use tokio::io::AsyncWriteExt;

use super::plan::{CommandPlan, Staged};
use crate::error::StepError;
use crate::store::{StoreHandle, io_error, join_key};
use crate::steps::context::StepContext;

/// Part size of an output's multipart upload.
const UPLOAD_PART: usize = 8 << 20;

/// The attempt's folders; removed when dropped.
pub(super) struct Work {
    root: PathBuf,
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// `FLOWGATE_IN_<NAME>` / `FLOWGATE_OUT_<NAME>`.
fn var(kind: &str, name: &str) -> String {
    format!("FLOWGATE_{kind}_{}", name.to_ascii_uppercase())
}

/// The store and prefix a staged input or output names in this run.
pub(crate) fn place<'a>(ctx: &'a StepContext<'_>, s: &Staged) -> Result<(&'a StoreHandle, String), StepError> {
    let render = |t: &str| crate::template::render(t, ctx.template).map_err(StepError::user);
    match s {
        Staged::DatasetPart(part) => {
            let ds = &ctx.template["dataset"];
            let (Some(store), Some(prefix)) = (ds["store"].as_str(), ds["prefix"].as_str()) else {
                return Err(StepError::internal("the run's dataset was not resolved"));
            };
            Ok((ctx.stores.get(store)?, join_key(prefix, render(part)?.trim_matches('/'))))
        }
        Staged::At(loc) => Ok((ctx.stores.get(&loc.store)?, render(&loc.prefix)?.trim_matches('/').to_string())),
    }
}

impl Work {
    /// Fresh folders, the inputs downloaded; the environment that names them.
    pub(super) async fn prepare(
        ctx: &StepContext<'_>,
        plan: &CommandPlan,
    ) -> Result<(Option<Work>, Vec<(String, String)>), StepError> {
        if plan.inputs.is_empty() && plan.outputs.is_empty() {
            return Ok((None, Vec::new()));
        }
        let root = std::env::temp_dir().join("flowgate-work").join(ctx.run_id).join(&ctx.step.id);
        let _ = std::fs::remove_dir_all(&root);
        let work = Work { root };
        let mut env = vec![("FLOWGATE_WORK".to_string(), work.root.display().to_string())];
        for (name, s) in &plan.inputs {
            let dir = work.root.join("in").join(name);
            std::fs::create_dir_all(&dir).map_err(io_error)?;
            let (store, prefix) = place(ctx, s)?;
            let n = download(store, &prefix, &dir).await?;
            if n == 0 {
                return Err(StepError::user(format!(
                    "input `{name}`: nothing at {}",
                    store.display(&prefix)
                )));
            }
            env.push((var("IN", name), dir.display().to_string()));
        }
        for (name, _) in &plan.outputs {
            let dir = work.root.join("out").join(name);
            std::fs::create_dir_all(&dir).map_err(io_error)?;
            env.push((var("OUT", name), dir.display().to_string()));
        }
        Ok((Some(work), env))
    }

    /// Upload every output; (objects, bytes).
    pub(super) async fn upload(&self, ctx: &StepContext<'_>, plan: &CommandPlan) -> Result<(u64, u64), StepError> {
        let (mut objects, mut bytes) = (0, 0);
        for (name, s) in &plan.outputs {
            let (store, prefix) = place(ctx, s)?;
            let writer = store
                .writer(&format!("step `{}` (output `{name}`)", ctx.step.id))
                .map_err(|e| StepError::user(e.to_string()))?;
            let dir = self.root.join("out").join(name);
            for (rel, path) in files(&dir)? {
                let key = join_key(&prefix, &rel);
                let at = store.path(&key).map_err(StepError::user)?;
                // Streamed: memory stays at a few parts whatever the file's size.
                let file = tokio::fs::File::open(&path).await.map_err(io_error)?;
                let chunks = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
                    .map(|c| c.map_err(io_error));
                bytes += crate::store::put_stream(writer, &at, UPLOAD_PART, Box::pin(chunks), |_| {})
                    .await
                    .map_err(|e| e.context(format!("uploading {}", store.display(&key))))?;
                objects += 1;
            }
        }
        Ok((objects, bytes))
    }
}

/// Every object under `prefix` into `dir`, keeping relative paths.
async fn download(store: &StoreHandle, prefix: &str, dir: &Path) -> Result<u64, StepError> {
    let listed = store.list_under(prefix).await?;
    let mut n = 0;
    for (rel, meta) in listed {
        if rel.split('/').any(|s| s == ".." || s.is_empty()) {
            continue;
        }
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_error)?;
        }
        // Streamed to the file: memory stays at one chunk whatever the object's size.
        let mut chunks = store
            .reader()
            .get(&meta.location)
            .await
            .map_err(StepError::from)?
            .into_stream();
        let mut file = tokio::fs::File::create(&path).await.map_err(io_error)?;
        while let Some(chunk) = chunks.next().await {
            file.write_all(&chunk.map_err(StepError::from)?).await.map_err(io_error)?;
        }
        file.flush().await.map_err(io_error)?;
        n += 1;
    }
    Ok(n)
}

/// Files under `dir`, as (relative path with `/`, path), sorted.
fn files(dir: &Path) -> Result<Vec<(String, PathBuf)>, StepError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io_error)? {
            let p = e.map_err(io_error)?.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                let rel: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
                out.push((rel.join("/"), p));
            }
        }
    }
    out.sort();
    Ok(out)
}
