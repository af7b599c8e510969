//! The deliver step's plan: its spec checked against the file and its recipients.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::diagnostic::nearest;
use crate::config::model::{Access, DeliverSpec};
use crate::plan::ctx::Ctx;
use crate::store::Location;
use crate::units::Backoff;

#[derive(Debug, Clone)]
pub struct DeliverPlan {
    pub from: Location,
    /// Template naming a `[recipients]` entry.
    pub recipient: String,
    pub attempts: u32,
    pub backoff: Backoff,
    pub concurrency: usize,
    pub headers: BTreeMap<String, String>,
}

/// Plan a deliver step at `at` (`steps[0]`).
pub(crate) fn build(
    dl: &DeliverSpec,
    at: &str,
    what: &str,
    cx: &mut Ctx<'_>,
) -> Option<DeliverPlan> {
    let ok = cx.kind_is(&format!("{at}.deliver.from"), &dl.from, false, what);
    let from = cx.location(
        &format!("{at}.deliver.from"),
        &dl.from,
        Access::ReadWrite,
        what,
    );
    let recipients = &cx.file().recipients;
    if let Err(e) = crate::template::check(&dl.recipient) {
        cx.error(
            &format!("{at}.deliver.recipient"),
            format!("bad template: {e}"),
            None,
        );
    } else if !dl.recipient.contains("{{") && !recipients.contains_key(&dl.recipient) {
        let hint = match nearest(&dl.recipient, recipients.keys().map(String::as_str)) {
            Some(n) => format!("did you mean `{n}`?"),
            None => "declare it under [recipients.NAME] with a url".into(),
        };
        cx.error(
            &format!("{at}.deliver.recipient"),
            format!("unknown recipient `{}`", dl.recipient),
            Some(hint),
        );
    }
    let default = Backoff {
        min: Duration::from_secs(1),
        max: Duration::from_secs(30),
    };
    let backoff = match dl.backoff.as_deref().map(Backoff::parse).transpose() {
        Ok(b) => b.unwrap_or(default),
        Err(e) => {
            cx.error(&format!("{at}.deliver.backoff"), e, None);
            default
        }
    };
    ok.then_some(())?;
    Some(DeliverPlan {
        from: from?,
        recipient: dl.recipient.clone(),
        attempts: dl.attempts.unwrap_or(5).max(1),
        backoff,
        concurrency: dl.concurrency.unwrap_or(4).clamp(1, 64),
        headers: dl.headers.clone(),
    })
}
