//! The load step's plan: its spec checked against the file.

use crate::config::model::{Access, LoadSpec};
use crate::plan::ctx::Ctx;
use crate::sql::target::{LoadMode, LoadTarget};
use crate::store::Location;

#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub from: Location,
    /// The SQL store.
    pub into: String,
    /// (folder under `from`, or `None` for `from` itself; where it goes).
    pub targets: Vec<(Option<String>, LoadTarget)>,
    pub batch_rows: usize,
}

/// Plan a load step at `at` (`steps[0]`).
pub(crate) fn build(l: &LoadSpec, at: &str, what: &str, cx: &mut Ctx<'_>) -> Option<LoadPlan> {
    let into_at = format!("{at}.load.into");
    let ok_into = cx.store_ref(&into_at, &l.into, Access::Write, what)
        && cx.kind_is(&into_at, &l.into, true, what);
    let ok_from = cx.kind_is(&format!("{at}.load.from"), &l.from, false, what);
    let from = cx.location(&format!("{at}.load.from"), &l.from, Access::Read, what);
    let schema = l.schema.clone().unwrap_or_else(|| "public".into());
    let targets = match (&l.table, &l.tables) {
        (Some(t), None) => vec![(
            None,
            target(
                cx,
                &schema,
                t,
                (l.mode, &l.key, &l.version),
                &format!("{at}.load"),
            )?,
        )],
        (None, Some(map)) if !map.is_empty() => {
            let mut out = Vec::new();
            for (name, t) in map {
                let at = format!("{at}.load.tables.{name}");
                out.push((
                    Some(name.clone()),
                    target(cx, &schema, name, (t.mode, &t.key, &t.version), &at)?,
                ));
            }
            out
        }
        _ => {
            cx.error(
                &format!("{at}.load"),
                "load needs either `table = \"name\"` or `tables = { name = { key = [...] }, ... }`",
                None,
            );
            return None;
        }
    };
    (ok_into && ok_from).then_some(())?;
    Some(LoadPlan {
        from: from?,
        into: l.into.clone(),
        targets,
        batch_rows: l.batch_rows.unwrap_or(65_536).max(1),
    })
}

/// One target table: its mode with the key and version column the mode needs.
fn target(
    cx: &mut Ctx<'_>,
    schema: &str,
    table: &str,
    (mode, key, version): (Option<LoadMode>, &Option<Vec<String>>, &Option<String>),
    at: &str,
) -> Option<LoadTarget> {
    let mode = mode.unwrap_or(LoadMode::Upsert);
    let key = key.clone().unwrap_or_default();
    if matches!(mode, LoadMode::Upsert | LoadMode::AppendVersions) && key.is_empty() {
        cx.error(
            at,
            format!("table `{table}`: load mode {mode:?} needs `key = [\"column\", …]`"),
            None,
        );
        return None;
    }
    if mode == LoadMode::AppendVersions && version.is_none() {
        cx.error(
            at,
            format!("table `{table}`: load mode append-versions needs `version = \"column\"`"),
            None,
        );
        return None;
    }
    Some(LoadTarget {
        schema: schema.to_string(),
        table: table.to_string(),
        mode,
        key,
        version: version.clone(),
    })
}
