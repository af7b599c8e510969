//! The import step's plan: its spec checked against the file.

use super::config::{ImportSpec, OwnersSpec, TargetSpec};
use crate::config::model::{Access, NotifyEvent};
use crate::plan::NotifyPlan;
use crate::plan::ctx::Ctx;
use crate::steps::command::plan::CommandPlan;
use crate::store::Location;

#[derive(Debug, Clone)]
pub struct ImportPlan {
    pub journal: Location,
    pub version: String,
    pub kind_field: String,
    pub kinds: Vec<String>,
    pub keep: Option<String>,
    /// The store a rejected journal goes to (the first of `failed` this
    /// environment may write), if any.
    pub failed: Option<String>,
    pub audit: Option<Location>,
    pub audit_table: Option<super::sql::SqlTarget>,
    pub targets: Vec<TargetPlan>,
}

#[derive(Debug, Clone)]
pub struct TargetPlan {
    pub name: String,
    pub how: How,
    pub owners: Option<NotifyPlan>,
}

#[derive(Debug, Clone)]
pub enum How {
    Command(Box<CommandPlan>),
    Http(url::Url),
    Sql(super::sql::SqlTarget),
}

/// Plan an import step at `at` (`steps[0]`).
pub(crate) fn build(s: &ImportSpec, at: &str, what: &str, cx: &mut Ctx<'_>) -> Option<ImportPlan> {
    let at = format!("{at}.import");
    let mut ok = cx.kind_is(&format!("{at}.journal"), &s.journal, false, what);
    let journal = cx.location(&format!("{at}.journal"), &s.journal, Access::Read, what);
    let audit = s.audit.as_ref().and_then(|a| {
        let a = if a.contains(':') { a.clone() } else { format!("{a}:audit") };
        ok &= cx.kind_is(&format!("{at}.audit"), &a, false, what);
        cx.location(&format!("{at}.audit"), &a, Access::Write, what)
    });
    ok &= audit.is_some() == s.audit.is_some();
    let version = s.version.clone().unwrap_or_else(|| "{{ trigger.value }}".into());
    for (path, t) in [(format!("{at}.version"), &version)] {
        if let Err(e) = crate::template::check(t) {
            cx.error(&path, format!("not a template: {e}"), None);
            ok = false;
        }
    }
    if let Some(k) = &s.keep
        && let Err(e) = crate::template::check_expression(k)
    {
        cx.error(
            &format!("{at}.keep"),
            format!("`keep` is not an expression: {e}"),
            Some("for example: keep = \"record.mandator in vars.mandators\"".into()),
        );
        ok = false;
    }
    let audit_table = s.audit_table.as_ref().map(|t| sql_target(t, &format!("{at}.audit_table"), cx));
    ok &= audit_table.as_ref().is_none_or(Option::is_some);
    let failed = failed_store(s, &at, what, cx);
    if s.targets.is_empty() {
        cx.error(&format!("{at}.targets"), "an import needs at least one target", Some("[[steps.import.targets]] with a name and a command or http".into()));
        ok = false;
    }
    let mut targets = Vec::new();
    for (i, t) in s.targets.iter().enumerate() {
        let t_at = format!("{at}.targets[{i}]");
        if s.targets[..i].iter().any(|o| o.name == t.name) || !super::safe_name(&t.name) {
            cx.error(&format!("{t_at}.name"), format!("target name `{}` is empty, not unique, or not a plain name", t.name), Some("letters, digits, `.`, `_`, `-`".into()));
            ok = false;
        }
        match target(t, &t_at, cx) {
            Some(p) => targets.push(p),
            None => ok = false,
        }
    }
    ok.then_some(())?;
    Some(ImportPlan {
        journal: journal?,
        version,
        kind_field: s.kind_field.clone().unwrap_or_else(|| "kind".into()),
        kinds: s.kinds.clone(),
        keep: s.keep.clone(),
        failed: failed.ok()?,
        audit,
        audit_table: audit_table.flatten(),
        targets,
    })
}

/// The first store of `failed` this environment may write; an error when it
/// names stores and may write none.
fn failed_store(s: &ImportSpec, at: &str, what: &str, cx: &mut Ctx<'_>) -> Result<Option<String>, ()> {
    let at = format!("{at}.failed");
    for name in &s.failed {
        if !cx.kind_is(&at, name, false, what) || !cx.store_ref(&at, name, Access::Read, what) {
            return Err(());
        }
    }
    let writable = s.failed.iter().find(|n| cx.file().stores.get(*n).is_some_and(|st| st.access.can_write()));
    match (s.failed.is_empty(), writable) {
        (true, _) => Ok(None),
        (false, Some(n)) => Ok(Some(n.clone())),
        (false, None) => {
            cx.error(
                &at,
                format!("{what}: none of the stores {:?} may be written in this environment", s.failed),
                Some("give one of them access = \"read-write\" (or \"write\"), e.g. a local folder".into()),
            );
            Err(())
        }
    }
}

fn target(t: &TargetSpec, at: &str, cx: &mut Ctx<'_>) -> Option<TargetPlan> {
    let how = match (&t.command, &t.http, &t.sql) {
        (Some(c), None, None) => {
            if !c.inputs.is_empty() || !c.outputs.is_empty() {
                cx.error(
                    &format!("{at}.command"),
                    "an import's command gets the journal in $FLOWGATE_JOURNAL; it has no `inputs` or `outputs`",
                    None,
                );
                return None;
            }
            let mut plan = crate::steps::command::plan::build(c, at, "", cx)?;
            plan.reject_others = c.exit_codes.reject.is_empty();
            How::Command(Box::new(plan))
        }
        (None, Some(u), None) => match url::Url::parse(u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => How::Http(url),
            _ => {
                cx.error(&format!("{at}.http"), format!("`{u}` is not an http(s) URL"), None);
                return None;
            }
        },
        (None, None, Some(text)) => How::Sql(sql_target(text, &format!("{at}.sql"), cx)?),
        _ => {
            cx.error(
                at,
                format!("target `{}` needs exactly one of `command`, `http` or `sql`", t.name),
                None,
            );
            return None;
        }
    };
    let owners = t.owners.as_ref().map(|o| owners(o, &format!("{at}.owners"), cx));
    Some(TargetPlan {
        name: t.name.clone(),
        how,
        owners,
    })
}

fn owners(o: &OwnersSpec, at: &str, cx: &mut Ctx<'_>) -> NotifyPlan {
    let webhook = o.webhook.clone().filter(|w| !w.trim().is_empty());
    if let Some(w) = &webhook
        && url::Url::parse(w).is_err()
    {
        cx.error(&format!("{at}.webhook"), "not a URL", None);
    }
    NotifyPlan {
        on: vec![NotifyEvent::Failure],
        stale_after: None,
        webhook,
        email: o.email.clone(),
    }
}

/// `store:table` or `store:schema.table` of a SQL store this environment may write.
fn sql_target(text: &str, at: &str, cx: &mut Ctx<'_>) -> Option<super::sql::SqlTarget> {
    let what = "an import's table";
    let Some((store, table)) = text.split_once(':').filter(|(s, t)| !s.is_empty() && !t.is_empty()) else {
        cx.error(at, format!("`{text}` is not `store:table`"), Some("for example: sql = \"warehouse:public.journal\"".into()));
        return None;
    };
    if !cx.kind_is(at, text, true, what) || !cx.store_ref(at, store, Access::Write, what) {
        return None;
    }
    let (schema, table) = match table.split_once('.') {
        Some((s, t)) => (s.to_string(), t.to_string()),
        None => ("public".to_string(), table.to_string()),
    };
    Some(super::sql::SqlTarget { store: store.to_string(), schema, table })
}
