//! Who is told what (notifications) and where deliveries go (recipients).

use std::collections::BTreeMap;
use std::time::Duration;

use super::ctx::Ctx;
use super::{NotifyPlan, PathIn, Pem, RecipientPlan};
use crate::config::model::{NotifyEvent, RecipientSpec};
use crate::units::parse_duration;

pub(super) fn plan(cx: &mut Ctx<'_>) -> NotifyPlan {
    let n = &cx.file().notify;
    let webhook = n.webhook.clone().filter(|w| !w.trim().is_empty());
    if let Some(w) = &webhook
        && url::Url::parse(w).is_err()
    {
        cx.error("notify.webhook", "notify.webhook is not a URL", None);
    }
    if let Some(e) = &n.email
        && !["smtp://", "smtps://", "smtp+starttls://"]
            .iter()
            .any(|s| e.smtp.starts_with(s))
    {
        cx.error(
            "notify.email.smtp",
            "notify.email.smtp must be smtp://, smtps:// or smtp+starttls://",
            None,
        );
    }
    NotifyPlan {
        on: n.on.clone().unwrap_or_else(|| {
            vec![
                NotifyEvent::Failure,
                NotifyEvent::Recovery,
                NotifyEvent::Partial,
                NotifyEvent::Stale,
                NotifyEvent::Skipped,
            ]
        }),
        stale_after: stale_after(cx),
        webhook,
        email: n.email.clone(),
    }
}

/// The freshness threshold (default 30m; `off` turns it off).
fn stale_after(cx: &mut Ctx<'_>) -> Option<Duration> {
    let hint = || Some("write a duration such as \"30m\", or \"off\"".to_string());
    match cx.file().notify.stale_after.as_deref().map(str::trim) {
        None => Some(Duration::from_secs(30 * 60)),
        Some("off" | "never") => None,
        Some(text) => match parse_duration(text) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                cx.error(
                    "notify.stale_after",
                    "notify.stale_after must be longer than zero",
                    hint(),
                );
                None
            }
            Err(e) => {
                cx.error("notify.stale_after", e, hint());
                None
            }
        },
    }
}

pub(super) fn recipients(cx: &mut Ctx<'_>) -> BTreeMap<String, RecipientPlan> {
    let mut out = BTreeMap::new();
    for (name, r) in &cx.file().recipients {
        if let Some(plan) = recipient(cx, name, r) {
            out.insert(name.clone(), plan);
        }
    }
    out
}

fn recipient(cx: &mut Ctx<'_>, name: &str, r: &RecipientSpec) -> Option<RecipientPlan> {
    let at = format!("recipients.{name}");
    crate::secret::register_url_password(&r.url);
    let url = match url::Url::parse(&r.url) {
        Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && r.allow_http) => Some(u),
        Ok(u) => {
            cx.error(
                &format!("{at}.url"),
                format!("recipient `{name}`: `{}` URLs are not allowed", u.scheme()),
                Some("deliveries go over https:// (allow_http = true is for local stubs)".into()),
            );
            None
        }
        Err(e) => {
            cx.error(
                &format!("{at}.url"),
                format!("recipient `{name}`: not a URL: {e}"),
                None,
            );
            None
        }
    };
    let method = match r.method.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("PUT") => reqwest::Method::PUT,
        Some("POST") => reqwest::Method::POST,
        Some(other) => {
            cx.error(
                &format!("{at}.method"),
                format!("method must be PUT or POST, not `{other}`"),
                None,
            );
            reqwest::Method::PUT
        }
    };
    let path_in = match r.path.as_deref() {
        None | Some("url") => PathIn::Url,
        Some(h) if h.starts_with("header:") && h.len() > 7 => PathIn::Header(h[7..].to_string()),
        Some(other) => {
            cx.error(
                &format!("{at}.path"),
                format!("path must be `url` or `header:NAME`, not `{other}`"),
                None,
            );
            PathIn::Url
        }
    };
    if r.client_cert.is_some() != r.client_key.is_some() {
        cx.key_error(
            &at,
            format!("recipient `{name}` has a client certificate without its key, or a key without its certificate"),
            Some("set both client_cert and client_key".into()),
        );
    }
    let timeout = cx
        .duration(&format!("{at}.timeout"), r.timeout.as_deref())
        .ok()
        .flatten()
        .unwrap_or(Duration::from_secs(600));
    let url = url?;
    let mut shown = url.clone();
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    shown.set_query(None);
    let pem = |t: &Option<String>| t.as_deref().map(|t| Pem::parse(t, &cx.dir));
    Some(RecipientPlan {
        name: name.to_string(),
        url_display: shown.to_string(),
        url,
        method,
        path_in,
        client_cert: pem(&r.client_cert),
        client_key: pem(&r.client_key),
        ca: pem(&r.ca),
        timeout,
        allow_http: r.allow_http,
    })
}
