//! `copy`: objects → objects, streaming with bounded memory.
//!
//! Destination keys are the source's relative keys under the destination prefix,
//! so a repeated or resumed copy writes the same keys. Each object is written
//! atomically by the store (rename on local disks, multipart completion on S3),
//! verified, and only then recorded in the object ledger; the manifest is written
//! last, so its presence means the copy is complete.

pub mod config;
pub mod plan;

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStoreExt, PutPayload};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::model::Verify;
use crate::error::{ErrorKind, StepError};
use crate::plan::CopyPlan;
use crate::state::StepReport;
use crate::steps::context::{StepContext, StepOutput};
use crate::store::{StoreHandle, join_key as join};

struct Item {
    meta: ObjectMeta,
    relative: String,
}

/// What happened to one object.
enum Done {
    /// `check`: what identifies the bytes at the destination, for the manifest
    /// (`{"sha256": …}`, or `{"etag": …}` after a server-side copy verified by size).
    Copied {
        bytes: u64,
        check: Value,
    },
    Unchanged {
        check: Value,
    },
    Quarantined {
        report: String,
    },
    /// Quarantined because it could not be decrypted: fails the step.
    Undecryptable {
        report: String,
    },
    Vanished,
}

/// An object that could not be decrypted: a user error (quarantined), never retried.
fn undecryptable(why: String) -> StepError {
    StepError::user(format!("cannot decrypt: {why}")).with_kind(ErrorKind::Undecryptable)
}

fn render_prefix(ctx: &StepContext<'_>, template: &str) -> Result<String, StepError> {
    let p = crate::template::render(template, ctx.template).map_err(StepError::user)?;
    Ok(p.trim_matches('/').to_string())
}

/// Parse an age identity; the error never repeats the key.
pub fn age_identity(text: &str) -> Result<age::x25519::Identity, String> {
    use std::str::FromStr;
    if text.trim().is_empty() {
        return Err("decrypt.age_identity is empty: this transfer asks for decryption, so give the age identity (through a secret)".into());
    }
    age::x25519::Identity::from_str(text.trim())
        .map_err(|_| "decrypt.age_identity is not an age identity (AGE-SECRET-KEY-1…)".to_string())
}

pub async fn run(ctx: &StepContext<'_>, plan: &CopyPlan) -> Result<StepOutput, StepError> {
    let src = ctx.stores.get(&plan.from.store)?;
    let dst = ctx.stores.get(&plan.to.store)?;
    let what = format!("step `{}`", ctx.step.id);
    // Refused before any I/O.
    let writer = dst
        .writer(&what)
        .map_err(|e| StepError::user(e.to_string()))?
        .clone();
    let identity = decrypt_identity(ctx, plan)?;
    let from_prefix = render_prefix(ctx, &plan.from.prefix)?;
    let to_prefix = render_prefix(ctx, &plan.to.prefix)?;
    let base = src
        .path(&from_prefix)
        .map_err(|e| StepError::user(format!("source prefix `{from_prefix}`: {e}")))?;
    dst.path(&to_prefix)
        .map_err(|e| StepError::user(format!("destination prefix `{to_prefix}`: {e}")))?;

    // A listing that fails part-way cannot be trusted to be complete (the local
    // store ends its listing at the first bad name), so the step fails loudly.
    let (listed, unnamed) = list_source(src, &base, &from_prefix).await?;
    let same_place = src.url == dst.url && from_prefix == to_prefix;
    let items = select(listed, &base, plan, same_place);
    let scope = format!(
        "{}/{}/{}",
        ctx.plan.name,
        ctx.step.id,
        dst.display(&to_prefix)
    );
    let ledger = ctx.state.ledger_list(&scope, "").await?;
    let total_bytes: u64 = items.iter().map(|i| i.meta.size).sum();
    ctx.progress
        .begin(&ctx.step.id, items.len() as u64, total_bytes);
    let quarantine = ctx.stores.quarantine_for(src, ctx.template)?;

    // Between buckets behind one endpoint the server copies (nothing to decrypt).
    #[cfg(feature = "aws")]
    let server_side = match identity {
        None => ServerSideCopy::between(src, dst).await,
        Some(_) => None,
    };
    #[cfg(not(feature = "aws"))]
    let server_side: Option<ServerSideCopy> = None;
    let job = Job {
        ctx,
        plan,
        src,
        dst,
        writer,
        identity: identity.as_ref(),
        server_side: server_side.as_ref(),
        from_prefix: &from_prefix,
        to_prefix: &to_prefix,
        scope: &scope,
        ledger: &ledger,
        quarantine: &quarantine,
    };
    let mut results: Vec<(usize, Result<Done, StepError>)> = futures::stream::iter(0..items.len())
        .map(|i| {
            let (job, item) = (&job, &items[i]);
            async move { (i, job.one(item).await) }
        })
        .buffer_unordered(plan.concurrency)
        .collect()
        .await;
    ctx.progress.end();
    results.sort_by_key(|(i, _)| *i);
    let tally = tally(&items, results);
    let mut report = tally.report;
    #[cfg(feature = "aws")]
    if let Some(n) = job
        .server_side
        .map(|s| s.copied.load(std::sync::atomic::Ordering::Relaxed))
        .filter(|n| *n > 0)
    {
        report.notes.push(format!(
            "{n} object(s) copied server-side: the bytes did not pass through flowgate"
        ));
    }
    if let Some(e) = tally.first_error {
        return Err(e);
    }
    for (key, _) in &unnamed {
        let at = set_aside_unnamed(ctx, src, &quarantine, &base, key).await?;
        report.quarantined += 1;
        report.notes.push(format!(
            "quarantined `{}` (no store path can name it): see {at}",
            key.escape_debug()
        ));
    }
    if let Some(e) = tally.undecryptable {
        return Ok(StepOutput {
            report,
            failure: Some(e),
        });
    }
    if report.objects_out == 0 && report.objects_skipped > 0 && report.quarantined == 0 {
        report.notes.push(format!(
            "nothing to copy: all {} objects were copied before and are unchanged",
            report.objects_skipped
        ));
    } else if items.is_empty() {
        report.notes.push(format!(
            "nothing to copy: no objects under {}",
            src.display(&from_prefix)
        ));
    }
    if let Some(name) = plan.manifest.as_deref() {
        job.write_manifest(name, &report, tally.manifest).await?;
    }
    Ok(StepOutput::from(report))
}

/// The age identity to decrypt with, when the step decrypts this run.
fn decrypt_identity(
    ctx: &StepContext<'_>,
    plan: &CopyPlan,
) -> Result<Option<age::x25519::Identity>, StepError> {
    let Some(d) = &plan.decrypt else {
        return Ok(None);
    };
    let on = match &d.when {
        Some(w) => crate::template::truthy(w, ctx.template)
            .map_err(|e| StepError::user(format!("decrypt.when {e}")))?,
        None => true,
    };
    if !on {
        return Ok(None);
    }
    age_identity(&d.age_identity)
        .map(Some)
        .map_err(StepError::user)
}

/// The listed objects the step copies, by relative key: not the source itself,
/// not its own manifest when copying in place, through `include`/`exclude`.
fn select(
    listed: Vec<ObjectMeta>,
    base: &object_store::path::Path,
    plan: &CopyPlan,
    same_place: bool,
) -> Vec<Item> {
    let manifest = plan.manifest.as_deref();
    let mut items: Vec<Item> = listed
        .into_iter()
        .filter_map(|meta| {
            let relative = StoreHandle::relative_to(base, &meta.location)?;
            let skip = relative.is_empty()
                || (same_place && Some(relative.as_str()) == manifest)
                || plan
                    .include
                    .as_ref()
                    .is_some_and(|g| !g.is_match(&relative))
                || plan.exclude.as_ref().is_some_and(|g| g.is_match(&relative));
            (!skip).then_some(Item { meta, relative })
        })
        .collect();
    items.sort_by(|a, b| a.relative.cmp(&b.relative));
    items
}

/// One copy step's run: what every object's copy shares.
struct Job<'a> {
    ctx: &'a StepContext<'a>,
    plan: &'a CopyPlan,
    src: &'a StoreHandle,
    dst: &'a StoreHandle,
    writer: Arc<dyn object_store::ObjectStore>,
    identity: Option<&'a age::x25519::Identity>,
    server_side: Option<&'a ServerSideCopy>,
    from_prefix: &'a str,
    to_prefix: &'a str,
    scope: &'a str,
    ledger: &'a std::collections::HashMap<String, crate::state::LedgerEntry>,
    quarantine: &'a crate::quarantine::Quarantine,
}

impl Job<'_> {
    /// Copy one object: skipped when unchanged since a verified copy; recorded
    /// in the ledger (fenced) once written and verified; set aside when it
    /// cannot be copied.
    async fn one(&self, item: &Item) -> Result<Done, StepError> {
        let ctx = self.ctx;
        if ctx.cancel.is_cancelled() {
            return Err(StepError::external(
                "interrupted before this object was copied",
            ));
        }
        let fp = crate::store::version_of(&item.meta);
        // A decrypted object drops its `.age`.
        let dest_rel = match self.identity {
            Some(_) => item.relative.strip_suffix(".age").unwrap_or(&item.relative),
            None => &item.relative,
        };
        let dest_key = join(self.to_prefix, dest_rel);
        let dest = match self.dst.path(&dest_key) {
            Ok(p) => p,
            Err(e) => {
                let err = StepError::user(format!(
                    "`{}` cannot be a destination key: {e}",
                    item.relative
                ));
                return quarantine_one(ctx, self.src, self.quarantine, self.from_prefix, item, err)
                    .await;
            }
        };
        ctx.claim.check()?;
        // Unchanged since a verified copy: skip.
        // The size written (decrypted: not the source's) is in the ledger.
        if let Some(entry) = self.ledger.get(&item.relative)
            && entry.fingerprint == fp
            && let Ok(head) = self.writer.head(&dest).await
            && head.size
                == entry
                    .detail
                    .get("size")
                    .and_then(Value::as_u64)
                    .unwrap_or(item.meta.size)
        {
            ctx.progress.advance(item.meta.size);
            return Ok(Done::Unchanged {
                check: check_of(&entry.detail),
            });
        }
        let res = transfer(
            self.src,
            self.dst,
            &self.writer,
            item,
            &dest,
            self.plan,
            self.identity,
            self.server_side,
            ctx.progress,
        )
        .await;
        match res {
            Ok((bytes, check)) => {
                let mut detail = json!({"size": bytes, "destination": self.dst.display(&dest_key)});
                merge(&mut detail, &check);
                ctx.state
                    .ledger_put(self.scope, &item.relative, &fp, &detail, ctx.fence())
                    .await?;
                Ok(Done::Copied { bytes, check })
            }
            Err(e) if e.kind == ErrorKind::SourceVanished => Ok(Done::Vanished),
            Err(e) if e.kind == ErrorKind::ClaimLost => Err(e),
            Err(e) if !e.class.retriable => {
                let undecryptable = e.kind == ErrorKind::Undecryptable;
                match quarantine_one(ctx, self.src, self.quarantine, self.from_prefix, item, e)
                    .await
                {
                    // A file that cannot be decrypted fails the transfer
                    // (after it is quarantined with the reason).
                    Ok(Done::Quarantined { report }) if undecryptable => {
                        Ok(Done::Undecryptable { report })
                    }
                    other => other,
                }
            }
            Err(e) => Err(e.context(format!(
                "copying {}",
                self.src.display(&join(self.from_prefix, &item.relative))
            ))),
        }
    }

    /// The manifest, written last: its presence means the copy is complete.
    async fn write_manifest(
        &self,
        name: &str,
        report: &StepReport,
        objects: Vec<Value>,
    ) -> Result<(), StepError> {
        let ctx = self.ctx;
        let manifest = json!({
            "pipeline": ctx.plan.name,
            "run_id": ctx.run_id,
            "step": ctx.step.id,
            "source": self.src.display(self.from_prefix),
            "destination": self.dst.display(self.to_prefix),
            "objects": objects,
            "quarantined": report.quarantined,
            "written_at": chrono::Utc::now().to_rfc3339(),
        });
        let body =
            serde_json::to_vec_pretty(&manifest).map_err(|e| StepError::internal(e.to_string()))?;
        let path = self
            .dst
            .path(&join(self.to_prefix, name))
            .map_err(|e| StepError::user(e.to_string()))?;
        self.writer
            .put(&path, PutPayload::from(body))
            .await
            .map_err(|e| StepError::from(e).context("writing the manifest"))?;
        Ok(())
    }
}

/// The objects' outcomes added up.
struct Tally {
    report: StepReport,
    manifest: Vec<Value>,
    first_error: Option<StepError>,
    undecryptable: Option<StepError>,
}

fn tally(items: &[Item], results: Vec<(usize, Result<Done, StepError>)>) -> Tally {
    let mut t = Tally {
        report: StepReport {
            objects_in: items.len() as u64,
            ..Default::default()
        },
        manifest: Vec::new(),
        first_error: None,
        undecryptable: None,
    };
    for (i, r) in results {
        let item = &items[i];
        match r {
            Ok(Done::Copied { bytes, check }) => {
                t.report.objects_out += 1;
                t.report.bytes_in += bytes;
                t.report.bytes_out += bytes;
                let mut entry = json!({"key": item.relative, "size": bytes});
                merge(&mut entry, &check);
                t.manifest.push(entry);
            }
            Ok(Done::Unchanged { check }) => {
                t.report.objects_skipped += 1;
                let mut entry = json!({"key": item.relative, "size": item.meta.size});
                merge(&mut entry, &check);
                t.manifest.push(entry);
            }
            Ok(Done::Quarantined { report: at }) => {
                t.report.quarantined += 1;
                t.report
                    .notes
                    .push(format!("quarantined `{}`: see {at}", item.relative));
            }
            Ok(Done::Undecryptable { report: at }) => {
                t.report.quarantined += 1;
                t.undecryptable.get_or_insert_with(|| StepError::user(format!(
                    "`{}` could not be decrypted with the configured age identity; it was quarantined (see {at})",
                    item.relative
                )));
            }
            Ok(Done::Vanished) => t.report.notes.push(format!(
                "`{}` disappeared from the source before it was copied",
                item.relative
            )),
            Err(e) => {
                t.first_error.get_or_insert(e);
            }
        }
    }
    t
}

/// Objects under `base`. A listing that fails part-way cannot be trusted to be
/// complete (the local store ends its listing at the first bad name), so the
/// step fails loudly; except on S3, where the SDK lists every key as it is and
/// those no store path can name (`..`, an empty segment, a control character)
/// come back apart (full keys, with sizes), to be set aside.
async fn list_source(
    src: &StoreHandle,
    base: &object_store::path::Path,
    from_prefix: &str,
) -> Result<(Vec<ObjectMeta>, Vec<(String, u64)>), StepError> {
    match src.reader().list(Some(base)).try_collect().await {
        Ok(listed) => Ok((listed, Vec::new())),
        #[cfg(feature = "aws")]
        Err(object_store::Error::InvalidPath { .. }) if src.s3.is_some() => {
            let prefix = match base.as_ref() {
                "" => String::new(),
                b => format!("{b}/"),
            };
            let s3 = src
                .s3
                .as_ref()
                .ok_or_else(|| StepError::internal("no S3 client"))?;
            crate::store::server_side::list_raw(s3, &prefix).await
        }
        Err(e) => {
            let hint = match &e {
                object_store::Error::InvalidPath { .. } => {
                    "; rename or move that object: flowgate cannot read it under this name, and skips nothing silently"
                }
                _ => "",
            };
            Err(StepError::from(e)
                .context(format!("listing `{}`", src.display(from_prefix)))
                .context_suffix(hint))
        }
    }
}

/// Set aside an object listed under a key no store path can name: its bytes and
/// a report go to the quarantine, and the rest of the transfer goes on.
async fn set_aside_unnamed(
    ctx: &StepContext<'_>,
    src: &StoreHandle,
    quarantine: &crate::quarantine::Quarantine,
    base: &object_store::path::Path,
    key: &str,
) -> Result<String, StepError> {
    let relative = key
        .strip_prefix(base.as_ref())
        .unwrap_or(key)
        .trim_start_matches('/');
    let reason = StepError::user(format!(
        "`{key}` cannot be a key here (an empty, `.` or `..` segment, or a control character): \
         it was set aside; rename or move it at the source to transfer it"
    ));
    tracing::warn!(object = %key.escape_debug(), "quarantining an object no store path can name");
    #[cfg(feature = "aws")]
    let bytes = match &src.s3 {
        Some(s3) => Some(crate::store::server_side::get_raw(s3, key).await?),
        None => None,
    };
    #[cfg(not(feature = "aws"))]
    let bytes = None;
    let context = json!({"pipeline": ctx.plan.name, "run_id": ctx.run_id, "step": ctx.step.id});
    let shown = format!("{}:{key}", src.name);
    quarantine
        .bytes(&shown, relative, bytes, &reason, &context)
        .await
}

/// What identifies an object's bytes, from its ledger entry.
fn check_of(detail: &Value) -> Value {
    let mut check = serde_json::Map::new();
    for k in ["sha256", "etag"] {
        if let Some(v) = detail.get(k) {
            check.insert(k.to_string(), v.clone());
        }
    }
    Value::Object(check)
}

/// Add `extra`'s fields to `into` (both objects).
fn merge(into: &mut Value, extra: &Value) {
    if let (Some(into), Some(extra)) = (into.as_object_mut(), extra.as_object()) {
        into.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

/// A server-side copier, and whether the server still accepts its copies.
#[cfg(feature = "aws")]
struct ServerSideCopy {
    copier: crate::store::server_side::ServerSide,
    works: std::sync::atomic::AtomicBool,
    /// Objects copied by the server.
    copied: std::sync::atomic::AtomicU64,
}

#[cfg(feature = "aws")]
impl ServerSideCopy {
    async fn between(src: &StoreHandle, dst: &StoreHandle) -> Option<ServerSideCopy> {
        Some(ServerSideCopy {
            copier: crate::store::server_side::ServerSide::between(src, dst).await?,
            works: std::sync::atomic::AtomicBool::new(true),
            copied: std::sync::atomic::AtomicU64::new(0),
        })
    }
}

#[cfg(not(feature = "aws"))]
struct ServerSideCopy;

/// Copy one object and verify it: by the server when it can, else streamed
/// through here. Returns the size and what identifies the bytes.
#[allow(clippy::too_many_arguments, reason = "the step's context, spelled out")]
async fn transfer(
    src: &StoreHandle,
    dst: &StoreHandle,
    writer: &Arc<dyn object_store::ObjectStore>,
    item: &Item,
    dest: &object_store::path::Path,
    plan: &CopyPlan,
    identity: Option<&age::x25519::Identity>,
    server_side: Option<&ServerSideCopy>,
    progress: &dyn crate::steps::context::Progress,
) -> Result<(u64, Value), StepError> {
    #[cfg(feature = "aws")]
    if let Some(ss) = server_side
        && ss.works.load(std::sync::atomic::Ordering::Relaxed)
        && let (Some(from), Some(to)) = (&src.s3, &dst.s3)
    {
        let copied = ss
            .copier
            .copy(
                from,
                item.meta.location.as_ref(),
                to,
                dest.as_ref(),
                item.meta.size,
                plan.part_size as u64,
                4,
            )
            .await;
        match copied {
            Ok(c) => {
                progress.advance(item.meta.size);
                ss.copied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let check =
                    verify_server_side(src, writer, item, dest, plan.verify, c.etag).await?;
                return Ok((item.meta.size, check));
            }
            Err(e) if e.kind == ErrorKind::Unsupported => {
                tracing::info!(reason = %e.message, "copying through flowgate instead");
                ss.works.store(false, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    #[cfg(not(feature = "aws"))]
    let _ = (dst, server_side);
    let (bytes, sha256) =
        copy_one(src, writer, item, dest, plan.part_size, identity, progress).await?;
    verify(writer, dest, plan.verify, bytes, &sha256).await?;
    Ok((bytes, json!({ "sha256": sha256 })))
}

/// Verify a server-side copy: its size (and ETag, when both ETags are plain
/// MD5s), or, with `verify = "sha256"`, the SHA-256 of both ends, read in parallel.
#[cfg(feature = "aws")]
async fn verify_server_side(
    src: &StoreHandle,
    writer: &Arc<dyn object_store::ObjectStore>,
    item: &Item,
    dest: &object_store::path::Path,
    how: Verify,
    etag: Option<String>,
) -> Result<Value, StepError> {
    let head = writer.head(dest).await?;
    if head.size != item.meta.size {
        return Err(StepError::external(format!(
            "{dest}: destination has {} bytes after a server-side copy, expected {}",
            head.size, item.meta.size
        )));
    }
    let plain = |t: &Option<String>| {
        t.as_deref()
            .filter(|t| !t.contains('-'))
            .map(str::to_string)
    };
    let dest_etag = plain(&head.e_tag).or(plain(&etag));
    if let (Some(a), Some(b)) = (plain(&item.meta.e_tag), &dest_etag)
        && a.trim_matches('"') != b.trim_matches('"')
    {
        return Err(StepError::external(format!(
            "{dest}: ETag {b} after a server-side copy of an object with ETag {a}"
        )));
    }
    if how == Verify::Sha256 {
        let (a, b) = tokio::try_join!(
            sha256_of(src.reader(), &item.meta.location),
            sha256_of(writer, dest)
        )?;
        if a != b {
            return Err(StepError::external(format!(
                "{dest}: checksum mismatch after a server-side copy (sha256 {b}, source {a})"
            )));
        }
        return Ok(json!({ "sha256": a }));
    }
    Ok(json!({ "etag": head.e_tag.or(etag) }))
}

async fn sha256_of(
    store: &Arc<dyn object_store::ObjectStore>,
    path: &object_store::path::Path,
) -> Result<String, StepError> {
    let mut stream = store.get(path).await?.into_stream();
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.next().await {
        hasher.update(&chunk?);
    }
    Ok(hex::encode(hasher.finalize()))
}

async fn quarantine_one(
    ctx: &StepContext<'_>,
    src: &StoreHandle,
    quarantine: &crate::quarantine::Quarantine,
    from_prefix: &str,
    item: &Item,
    reason: StepError,
) -> Result<Done, StepError> {
    let context = json!({"pipeline": ctx.plan.name, "run_id": ctx.run_id, "step": ctx.step.id});
    tracing::warn!(object = %item.relative, reason = %reason.message, "quarantining input object");
    // Set aside under its whole key: `day1/part-0.csv` and `day2/part-0.csv`
    // never overwrite each other there.
    let key = join(from_prefix, &item.relative);
    let report = quarantine
        .object(src, &key, &key, &reason, &context)
        .await?;
    Ok(Done::Quarantined { report })
}

/// Stream one object (decrypting it with `identity`); returns the size and
/// SHA-256 of what was written. Memory stays within about `part_size` times the
/// upload concurrency.
async fn copy_one(
    src: &StoreHandle,
    writer: &Arc<dyn object_store::ObjectStore>,
    item: &Item,
    dest: &object_store::path::Path,
    part_size: usize,
    identity: Option<&age::x25519::Identity>,
    progress: &dyn crate::steps::context::Progress,
) -> Result<(u64, String), StepError> {
    let got = match src.reader().get(&item.meta.location).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(StepError::external("the source object no longer exists")
                .with_kind(ErrorKind::SourceVanished));
        }
        Err(e) => return Err(e.into()),
    };
    let stream: futures::stream::BoxStream<'static, Result<bytes::Bytes, StepError>> =
        match identity {
            None => got
                .into_stream()
                .map(|c| c.map_err(StepError::from))
                .boxed(),
            Some(id) => decrypting(got.into_stream(), id).await?,
        };
    let mut hasher = Sha256::new();
    let bytes = crate::store::put_stream(writer, dest, part_size, stream, |chunk| {
        hasher.update(chunk);
        progress.advance(chunk.len() as u64);
    })
    .await?;
    if identity.is_none() && bytes != item.meta.size {
        return Err(StepError::external(format!(
            "read {bytes} bytes but the source listed {} (the object changed while it was copied)",
            item.meta.size
        )));
    }
    Ok((bytes, hex::encode(hasher.finalize())))
}

/// The plaintext of an age-encrypted stream, in chunks. A wrong identity or a
/// damaged file is a user error (quarantined); a failed read stays retriable.
async fn decrypting(
    input: futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
    identity: &age::x25519::Identity,
) -> Result<futures::stream::BoxStream<'static, Result<bytes::Bytes, StepError>>, StepError> {
    use futures::AsyncReadExt;
    let reader = input.map_err(std::io::Error::other).into_async_read();
    let decryptor = age::Decryptor::new_async(reader)
        .await
        .map_err(|e| undecryptable(format!("not an age file: {e}")))?;
    let plain = decryptor
        .decrypt_async(std::iter::once(identity as &dyn age::Identity))
        .map_err(|e| undecryptable(e.to_string()))?;
    Ok(futures::stream::try_unfold(plain, |mut r| async move {
        let mut buf = vec![0u8; 256 * 1024];
        let n = r.read(&mut buf).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                undecryptable(format!("the file is damaged: {e}"))
            } else {
                crate::store::io_error(e)
            }
        })?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((bytes::Bytes::from(buf), r)))
    })
    .boxed())
}

async fn verify(
    store: &Arc<dyn object_store::ObjectStore>,
    dest: &object_store::path::Path,
    how: Verify,
    size: u64,
    sha256: &str,
) -> Result<(), StepError> {
    let head = store.head(dest).await?;
    if head.size != size {
        return Err(StepError::external(format!(
            "{dest}: destination has {} bytes, expected {size}",
            head.size
        )));
    }
    if how == Verify::Sha256 {
        let got = sha256_of(store, dest).await?;
        if got != sha256 {
            return Err(StepError::external(format!(
                "{dest}: checksum mismatch after copy (sha256 {got}, expected {sha256})"
            )));
        }
    }
    Ok(())
}
