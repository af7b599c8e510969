//! Notifications: Slack-compatible webhooks and SMTP email.

use std::time::Duration;

use serde_json::json;

use crate::config::model::NotifyEvent;
use crate::plan::NotifyPlan;
use crate::state::RunRecord;

/// A message about a run.
#[derive(Debug, Clone)]
pub struct Notice {
    pub event: NotifyEvent,
    pub title: String,
    pub text: String,
}

impl Notice {
    pub fn for_run(event: NotifyEvent, run: &RunRecord) -> Notice {
        let what = match event {
            NotifyEvent::Failure => "failed",
            NotifyEvent::Recovery => "recovered",
            NotifyEvent::Partial => "finished with quarantined input",
            NotifyEvent::Success => "succeeded",
            NotifyEvent::Stale => "is stale",
            NotifyEvent::Skipped => "skipped trigger events",
        };
        let title = format!("flowgate: pipeline `{}` {what}", run.pipeline);
        let mut text = format!(
            "{title}\nrun {} ({}, trigger {}), status {}",
            run.id,
            run.env.as_deref().unwrap_or("default env"),
            run.trigger,
            run.status
        );
        // Which of a matrix's combinations, or which routing row, this run was.
        for key in ["matrix", "route"] {
            if let Some(v) = run.params.get(key).filter(|v| !v.is_null()) {
                text.push_str(&format!("\n{key}: {v}"));
            }
        }
        if let Some(e) = &run.error {
            text.push_str(&format!("\nerror: {e}"));
        }
        for s in &run.steps {
            text.push_str(&format!(
                "\n- {}: {} ({} objects out, {} skipped, {} quarantined){}",
                s.step,
                s.status,
                s.objects_out,
                s.objects_skipped,
                s.quarantined,
                s.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
            // What was set aside, and where: the reader acts on it.
            if s.quarantined > 0 {
                for n in &s.notes {
                    text.push_str(&format!("\n  {n}"));
                }
            }
        }
        Notice {
            event,
            title: crate::secret::redact(&title),
            text: crate::secret::redact(&text),
        }
    }
}

impl Notice {
    /// Freshness passed its threshold (`stale`) or came back under it.
    pub fn freshness(
        pipeline: &str,
        stale: bool,
        age: Duration,
        threshold: Duration,
        newest: chrono::DateTime<chrono::Utc>,
    ) -> Notice {
        let age = humantime::format_duration(Duration::from_secs(age.as_secs()));
        let threshold = humantime::format_duration(threshold);
        let newest = newest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let (title, text) = if stale {
            let title = format!("flowgate: pipeline `{pipeline}` is stale");
            let text = format!(
                "{title}\nthe newest source change visible in the warehouse is from {newest}, {age} ago (threshold {threshold}).\nCheck `flowgate runs --pipeline {pipeline}` for failing or missing runs."
            );
            (title, text)
        } else {
            let title = format!("flowgate: pipeline `{pipeline}` is fresh again");
            let text = format!(
                "{title}\nthe newest source change visible in the warehouse is from {newest}, {age} ago (threshold {threshold})."
            );
            (title, text)
        };
        Notice {
            event: NotifyEvent::Stale,
            title: crate::secret::redact(&title),
            text: crate::secret::redact(&text),
        }
    }
}

/// Send a notice to every configured channel. Failures to notify are returned for
/// logging; they never change the run's outcome.
pub async fn send(plan: &NotifyPlan, notice: &Notice) -> Vec<String> {
    let mut problems = Vec::new();
    if !plan.on.contains(&notice.event) {
        return problems;
    }
    if let Some(url) = &plan.webhook
        && let Err(e) = webhook(url, notice).await
    {
        problems.push(crate::secret::redact(&format!("webhook: {e}")));
    }
    if let Some(spec) = &plan.email
        && let Err(e) = email(spec, notice).await
    {
        problems.push(crate::secret::redact(&format!(
            "email to {}: {e}",
            spec.to.join(", ")
        )));
    }
    problems
}

/// Send by SMTP. `smtp://` is plain, `smtps://` is TLS from the start,
/// `smtp+starttls://` upgrades with STARTTLS; credentials come from the URL.
async fn email(spec: &crate::config::model::EmailSpec, notice: &Notice) -> Result<(), String> {
    use lettre::message::header::ContentType;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    crate::secret::register_url_password(&spec.smtp);
    // lettre's URL form: smtp+starttls://h → smtp://h?tls=required.
    let url = match spec.smtp.strip_prefix("smtp+starttls://") {
        Some(rest) => format!(
            "smtp://{rest}{}tls=required",
            if rest.contains('?') { "&" } else { "?" }
        ),
        None => spec.smtp.clone(),
    };
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&url)
        .map_err(|e| format!("bad SMTP URL: {e}"))?
        .timeout(Some(Duration::from_secs(15)))
        .build();
    let mut builder = Message::builder()
        .from(
            spec.from
                .parse()
                .map_err(|e| format!("sender `{}`: {e}", spec.from))?,
        )
        .subject(notice.title.clone())
        .header(ContentType::TEXT_PLAIN);
    for to in &spec.to {
        builder = builder.to(to.parse().map_err(|e| format!("recipient `{to}`: {e}"))?);
    }
    let message = builder
        .body(notice.text.clone())
        .map_err(|e| e.to_string())?;
    transport
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn webhook(url: &str, notice: &Notice) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let body = json!({ "text": notice.text });
    let mut last = String::new();
    for attempt in 0..3u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
        match client.post(url).json(&body).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) => last = e.without_url().to_string(),
        }
    }
    Err(last)
}
