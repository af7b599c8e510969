//! The extract step's plan: its spec checked against the file.

use std::time::Duration;

use crate::config::model::{Access, ExtractSpec, NullCursors, Tables};
use crate::plan::ctx::Ctx;
use crate::store::Location;

#[derive(Debug, Clone)]
pub struct ExtractPlan {
    /// The SQL store.
    pub from: String,
    /// `None`: every table of the schema.
    pub tables: Option<Vec<String>>,
    pub schema: String,
    pub cursor: String,
    pub key: Option<Vec<String>>,
    pub lookback: Option<Duration>,
    pub nulls: NullCursors,
    pub to: Location,
    pub format: Option<crate::formats::Format>,
    pub batch_rows: usize,
    /// Connections a large snapshot read is split over.
    pub parallel: usize,
}

/// Plan an extract step at `at` (`steps[0]`).
pub(crate) fn build(
    e: &ExtractSpec,
    at: &str,
    what: &str,
    cx: &mut Ctx<'_>,
) -> Option<ExtractPlan> {
    let from_at = format!("{at}.extract.from");
    let ok_from = cx.store_ref(&from_at, &e.from, Access::Read, what)
        && cx.kind_is(&from_at, &e.from, true, what);
    let ok_to = cx.kind_is(&format!("{at}.extract.to"), &e.to, false, what);
    let to = cx.location(&format!("{at}.extract.to"), &e.to, Access::Write, what);
    let tables = match &e.tables {
        Tables::All(s) if s == "*" => None,
        Tables::All(s) => {
            cx.error(
                &format!("{at}.extract.tables"),
                format!("tables = \"{s}\": write a list (`[\"{s}\"]`) or \"*\""),
                None,
            );
            return None;
        }
        Tables::List(v) if v.is_empty() => {
            cx.error(
                &format!("{at}.extract.tables"),
                "tables is empty; list some or write \"*\"",
                None,
            );
            return None;
        }
        Tables::List(v) => Some(v.clone()),
    };
    let lookback = cx
        .duration(&format!("{at}.extract.lookback"), e.lookback.as_deref())
        .ok()?
        .filter(|l| !l.is_zero());
    (ok_from && ok_to).then_some(())?;
    Some(ExtractPlan {
        from: e.from.clone(),
        tables,
        schema: e.schema.clone().unwrap_or_else(|| "public".into()),
        cursor: e.cursor.clone(),
        key: e.key.clone(),
        lookback,
        nulls: e.nulls.unwrap_or_default(),
        to: to?,
        format: e.format,
        batch_rows: e.batch_rows.unwrap_or(65_536).max(1),
        parallel: e
            .parallel
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get().min(4))
                    .unwrap_or(1)
            })
            .max(1),
    })
}
