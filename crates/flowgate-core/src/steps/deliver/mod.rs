//! `deliver`: objects → HTTPS (mutual TLS), one request per object.
//!
//! Each object under the step's prefix is sent to the recipient's endpoint with the
//! recipient's client certificate, retried with backoff, and removed from the
//! outbox only after a 2xx answer. An object the receiver keeps refusing is
//! quarantined with the reason (a TLS alert, an HTTP status and its body) and
//! never reported as delivered. A delivered object is recorded in the object
//! ledger before it is removed, so a crash between the two does not send it again.

pub mod config;
pub mod plan;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStoreExt};
use serde_json::json;

use crate::error::{ErrorClass, ErrorDomain, ErrorKind, StepError, chain};
use crate::plan::{DeliverPlan, PathIn, RecipientPlan};
use crate::state::StepReport;
use crate::steps::context::{StepContext, StepOutput};
use crate::store::{StoreHandle, join_key as join};

/// Build the HTTPS client of one recipient: its client certificate and key, and
/// its CA bundle (when given, the only roots trusted).
pub fn client_for(r: &RecipientPlan) -> Result<reqwest::Client, StepError> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(Duration::from_secs(15))
        .timeout(r.timeout)
        .https_only(!r.allow_http);
    let read = |what: &str, pem: &crate::plan::Pem| {
        pem.read()
            .map_err(|e| StepError::user(format!("recipient `{}`: {what}: {e}", r.name)))
    };
    let unusable = |what: &str, e: reqwest::Error| {
        StepError::user(format!("recipient `{}`: {what}: {}", r.name, chain(&e)))
    };
    if let (Some(cert), Some(key)) = (&r.client_cert, &r.client_key) {
        let mut pem = read("client certificate", cert)?;
        pem.push(b'\n');
        pem.extend_from_slice(&read("client key", key)?);
        let id = reqwest::Identity::from_pem(&pem)
            .map_err(|e| unusable("the client certificate or key is not usable PEM", e))?;
        b = b.identity(id);
    }
    if let Some(ca) = &r.ca {
        let certs = reqwest::Certificate::from_pem_bundle(&read("CA bundle", ca)?)
            .map_err(|e| unusable("the CA bundle is not PEM certificates", e))?;
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build()
        .map_err(|e| StepError::user(format!("recipient `{}`: {}", r.name, chain(&e))))
}

/// The URL an object goes to: the recipient's URL, plus its relative path when the
/// path travels in the URL (each segment percent-encoded).
fn target_url(r: &RecipientPlan, relative: &str) -> Result<url::Url, StepError> {
    let mut url = r.url.clone();
    if r.path_in == PathIn::Url {
        let mut segs = url.path_segments_mut().map_err(|_| {
            StepError::user(format!(
                "recipient `{}`: its URL cannot take a path",
                r.name
            ))
        })?;
        segs.pop_if_empty();
        segs.extend(relative.split('/'));
    }
    Ok(url)
}

/// What happened to one object.
enum Done {
    Delivered { bytes: u64, status: u16 },
    AlreadyDelivered,
    Quarantined { at: String },
}

pub async fn run(ctx: &StepContext<'_>, plan: &DeliverPlan) -> Result<StepOutput, StepError> {
    let outbox = ctx.stores.get(&plan.from.store)?;
    let prefix = crate::template::render(&plan.from.prefix, ctx.template)
        .map_err(StepError::user)?
        .trim_matches('/')
        .to_string();
    let recipient = recipient_of(ctx, plan)?;
    let writer = outbox
        .writer(&format!(
            "step `{}` (it removes delivered files)",
            ctx.step.id
        ))
        .map_err(|e| StepError::user(e.to_string()))?
        .clone();
    let client = client_for(recipient)?;
    let base = outbox
        .path(&prefix)
        .map_err(|e| StepError::user(format!("outbox prefix `{prefix}`: {e}")))?;
    let listed: Vec<ObjectMeta> = outbox
        .reader()
        .list(Some(&base))
        .try_collect()
        .await
        .map_err(|e| StepError::from(e).context(format!("listing {}", outbox.display(&prefix))))?;
    let mut items: Vec<(ObjectMeta, String)> = listed
        .into_iter()
        .filter_map(|m| {
            let rel = StoreHandle::relative_to(&base, &m.location)?;
            (!rel.is_empty()).then_some((m, rel))
        })
        .collect();
    items.sort_by(|a, b| a.1.cmp(&b.1));

    let scope = format!("{}/{}/{}", ctx.plan.name, ctx.step.id, recipient.name);
    let job = Job {
        ctx,
        plan,
        recipient,
        outbox,
        client,
        writer,
        ledger: ctx.state.ledger_list(&scope, &prefix).await?,
        quarantine: ctx.stores.quarantine_for(outbox, ctx.template)?,
        scope: &scope,
        prefix: &prefix,
    };
    ctx.progress.begin(
        &ctx.step.id,
        items.len() as u64,
        items.iter().map(|i| i.0.size).sum(),
    );
    let mut results: Vec<(usize, Result<Done, StepError>)> = futures::stream::iter(0..items.len())
        .map(|i| {
            let (job, (meta, rel)) = (&job, &items[i]);
            async move { (i, job.one(meta, rel).await) }
        })
        .buffer_unordered(plan.concurrency)
        .collect()
        .await;
    ctx.progress.end();
    results.sort_by_key(|(i, _)| *i);
    let mut report = tally(&items, results, recipient)?;
    if items.is_empty() {
        report.notes.push(format!(
            "nothing to deliver under {}",
            outbox.display(&prefix)
        ));
    } else {
        report.notes.push(format!(
            "{} of {} file(s) delivered to `{}` ({})",
            report.objects_out + report.objects_skipped,
            items.len(),
            recipient.name,
            recipient.url_display
        ));
    }
    Ok(StepOutput::from(report))
}

/// The recipient the step's template names for this run.
fn recipient_of<'a>(
    ctx: &'a StepContext<'_>,
    plan: &DeliverPlan,
) -> Result<&'a RecipientPlan, StepError> {
    let name = crate::template::render(&plan.recipient, ctx.template).map_err(StepError::user)?;
    ctx.plan.recipients.get(name.trim()).ok_or_else(|| {
        let known: Vec<&str> = ctx.plan.recipients.keys().map(String::as_str).collect();
        StepError::user(format!(
            "no recipient `{name}` under [recipients] (known: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ))
    })
}

/// One deliver step's run: what every file's delivery shares.
struct Job<'a> {
    ctx: &'a StepContext<'a>,
    plan: &'a DeliverPlan,
    recipient: &'a RecipientPlan,
    outbox: &'a StoreHandle,
    client: reqwest::Client,
    writer: std::sync::Arc<dyn object_store::ObjectStore>,
    ledger: std::collections::HashMap<String, crate::state::LedgerEntry>,
    quarantine: crate::quarantine::Quarantine,
    scope: &'a str,
    prefix: &'a str,
}

impl Job<'_> {
    /// Deliver one file: recorded in the ledger (fenced) once the recipient took
    /// it, then removed from the outbox; a refused file is quarantined.
    async fn one(&self, meta: &ObjectMeta, rel: &str) -> Result<Done, StepError> {
        let ctx = self.ctx;
        let key = join(self.prefix, rel);
        let fp = staged_version(meta);
        ctx.claim.check()?;
        // Sent before a crash, but not yet removed: remove it now.
        if self.ledger.get(&key).is_some_and(|e| e.fingerprint == fp) {
            return remove(&self.writer, &meta.location)
                .await
                .map(|_| Done::AlreadyDelivered);
        }
        let (recipient, outbox) = (self.recipient, self.outbox);
        match self.send_with_retries(meta, rel).await {
            Ok((bytes, status)) => {
                let detail = json!({"recipient": recipient.name, "status": status, "size": bytes, "run_id": ctx.run_id});
                ctx.state
                    .ledger_put(self.scope, &key, &fp, &detail, ctx.fence())
                    .await?;
                remove(&self.writer, &meta.location)
                    .await
                    .map(|_| Done::Delivered { bytes, status })
            }
            Err(e) if ctx.cancel.is_cancelled() || e.kind == ErrorKind::ClaimLost => Err(e),
            Err(reason) => {
                tracing::warn!(object = %rel, recipient = %recipient.name, reason = %reason.message, "delivery refused; quarantining the file");
                let context = json!({"pipeline": ctx.plan.name, "run_id": ctx.run_id, "step": ctx.step.id, "recipient": recipient.name});
                let at = self
                    .quarantine
                    .object(outbox, &key, &key, &reason, &context)
                    .await?;
                remove(&self.writer, &meta.location)
                    .await
                    .map(|_| Done::Quarantined { at })
            }
        }
    }

    /// Send one object, retrying what may pass on a later attempt. The error of the
    /// last attempt is the reason it is quarantined.
    async fn send_with_retries(
        &self,
        meta: &ObjectMeta,
        rel: &str,
    ) -> Result<(u64, u16), StepError> {
        let (ctx, plan, recipient) = (self.ctx, self.plan, self.recipient);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.send_once(meta, rel).await;
            match result {
                Ok(ok) => {
                    ctx.progress.advance(meta.size);
                    return Ok(ok);
                }
                // Every refusal by the receiver is tried again (a 400 for a client
                // certificate it does not trust yet may pass once it is fixed there);
                // only our own mistakes are not.
                Err(e) if e.class.domain == ErrorDomain::User || attempt >= plan.attempts => {
                    return Err(StepError::new(
                        e.class,
                        format!("after {attempt} attempt(s): {}", e.message),
                    ));
                }
                Err(e) => {
                    let wait = plan.backoff.delay(attempt);
                    tracing::warn!(object = %rel, recipient = %recipient.name, attempt, error = %e.message, wait = ?wait, "delivery failed; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = ctx.cancel.cancelled() => return Err(StepError::external("interrupted while waiting to retry")),
                    }
                }
            }
        }
    }

    async fn send_once(&self, meta: &ObjectMeta, rel: &str) -> Result<(u64, u16), StepError> {
        let (plan, recipient, client, outbox) =
            (self.plan, self.recipient, &self.client, self.outbox);
        let got = outbox.reader().get(&meta.location).await?;
        let size = got.meta.size;
        let body = reqwest::Body::wrap_stream(got.into_stream());
        let url = target_url(recipient, rel)?;
        let mut req = client
            .request(recipient.method.clone(), url)
            .header(reqwest::header::CONTENT_LENGTH, size)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        if let PathIn::Header(h) = &recipient.path_in {
            req = req.header(h.as_str(), rel);
        }
        for (k, v) in &plan.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send().await.map_err(|e| {
            // Refused handshakes (an untrusted client certificate) and unreachable
            // receivers may pass later: retried, then quarantined with this reason.
            StepError::new(
                ErrorClass::EXTERNAL_RETRIABLE,
                format!("sending to `{}`: {}", recipient.name, chain(&e)),
            )
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok((size, status.as_u16()));
        }
        // The answer's text, tags and runs of whitespace dropped (nginx answers an
        // untrusted client certificate with an HTML page that says so).
        let body = resp.text().await.unwrap_or_default();
        let mut text = String::new();
        let mut in_tag = false;
        for c in body.chars() {
            match c {
                '<' => in_tag = true,
                '>' => {
                    in_tag = false;
                    text.push(' ');
                }
                c if !in_tag => text.push(c),
                _ => {}
            }
        }
        let text: String = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(300)
            .collect();
        let class = if status.is_server_error()
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        {
            ErrorClass::EXTERNAL_RETRIABLE
        } else {
            ErrorClass::EXTERNAL_FATAL
        };
        Err(StepError::new(
            class,
            crate::secret::redact(&format!(
                "`{}` answered HTTP {status}: {}",
                recipient.name,
                text.trim()
            )),
        ))
    }
}

/// The files' outcomes added up; the first error, if any.
fn tally(
    items: &[(ObjectMeta, String)],
    results: Vec<(usize, Result<Done, StepError>)>,
    recipient: &RecipientPlan,
) -> Result<StepReport, StepError> {
    let mut report = StepReport {
        objects_in: items.len() as u64,
        ..Default::default()
    };
    let mut first_error = None;
    for (i, r) in results {
        let rel = &items[i].1;
        match r {
            Ok(Done::Delivered { bytes, status }) => {
                report.objects_out += 1;
                report.bytes_in += bytes;
                report.bytes_out += bytes;
                tracing::info!(object = %rel, recipient = %recipient.name, status, "delivered");
            }
            Ok(Done::AlreadyDelivered) => {
                report.objects_skipped += 1;
                report.notes.push(format!(
                    "`{rel}` was delivered before an interruption; removed from the outbox"
                ));
            }
            Ok(Done::Quarantined { at }) => {
                report.quarantined += 1;
                report.notes.push(format!(
                    "not delivered to `{}`: `{rel}` quarantined, see {at}",
                    recipient.name
                ));
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// Which staging of a file this is: its version and when it was written, so the
/// same bytes staged again later (S3's ETag is their MD5) are a new file to send,
/// not one sent before.
fn staged_version(meta: &ObjectMeta) -> String {
    format!(
        "{}@{}",
        crate::store::version_of(meta),
        meta.last_modified.timestamp_micros()
    )
}

async fn remove(
    writer: &std::sync::Arc<dyn object_store::ObjectStore>,
    path: &object_store::path::Path,
) -> Result<(), StepError> {
    match writer.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(StepError::from(e).context("removing a delivered file from the outbox")),
    }
}
