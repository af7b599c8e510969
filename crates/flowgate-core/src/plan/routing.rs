//! Routing: one run per matching row of a table (inline, SQL or DynamoDB).

use super::ctx::Ctx;
use super::{RoutingPlan, RoutingSource};
use crate::config::model::RoutingSpec;

pub(super) fn plan(cx: &mut Ctx<'_>) -> Option<RoutingPlan> {
    let r = cx.file().routing.as_ref()?;
    let key = r
        .key
        .clone()
        .unwrap_or_else(|| "{{ trigger.prefix }}".into());
    if let Err(e) = crate::template::check(&key) {
        cx.error("routing.key", format!("bad template: {e}"), None);
    }
    let match_column = r
        .match_column
        .clone()
        .unwrap_or_else(|| "source_prefix".into());
    let id_column = r
        .id_column
        .clone()
        .unwrap_or_else(|| "pipeline_name".into());
    rows(cx, r, &match_column, &id_column);
    let kinds = usize::from(!r.rows.is_empty())
        + usize::from(r.table.is_some())
        + usize::from(r.dynamodb.is_some());
    if kinds != 1 {
        cx.key_error(
            "routing",
            "routing needs exactly one of: rows = [...], table = \"store:table\", dynamodb = { table = \"…\" }",
            None,
        );
    }
    Some(RoutingPlan {
        key,
        match_column,
        id_column,
        source: source(cx, r),
    })
}

/// Inline rows: each names its match and id columns, and no two share both.
fn rows(cx: &mut Ctx<'_>, r: &RoutingSpec, match_column: &str, id_column: &str) {
    let mut seen = std::collections::HashSet::new();
    for (i, row) in r.rows.iter().enumerate() {
        for col in [match_column, id_column] {
            if !row.get(col).is_some_and(|v| v.is_string()) {
                cx.key_error(
                    &format!("routing.rows[{i}]"),
                    format!("routing row {} has no text `{col}`", i + 1),
                    None,
                );
            }
        }
        let id = (
            row.get(match_column).map(|v| v.to_string()),
            row.get(id_column).map(|v| v.to_string()),
        );
        if !seen.insert(id) {
            cx.key_error(
                &format!("routing.rows[{i}]"),
                format!(
                    "routing row {} repeats the ({match_column}, {id_column}) of an earlier row",
                    i + 1
                ),
                Some(
                    "a second transfer for one prefix needs its own name, e.g. `pipeline_name#sft`"
                        .into(),
                ),
            );
        }
    }
}

fn source(cx: &mut Ctx<'_>, r: &RoutingSpec) -> RoutingSource {
    if let Some(t) = &r.table {
        let (store, table) = t.split_once(':').unwrap_or(("", t.as_str()));
        return match cx.file().stores.get(store) {
            Some(s) if crate::sql::is_sql_url(&s.url) => {
                match crate::sql::SqlSource::open(&s.url, &cx.dir) {
                    Ok(source) => RoutingSource::Sql {
                        source,
                        table: table.to_string(),
                    },
                    Err(e) => {
                        cx.error("routing.table", e, None);
                        RoutingSource::Inline(Vec::new())
                    }
                }
            }
            _ => {
                cx.error(
                    "routing.table",
                    format!("`{t}` does not name a SQL store and table"),
                    Some("write \"store:table\" with a postgres:// or sqlite:// store".into()),
                );
                RoutingSource::Inline(Vec::new())
            }
        };
    }
    if let Some(dy) = &r.dynamodb {
        #[cfg(feature = "aws")]
        return RoutingSource::Dynamo(super::DynamoPlan {
            table: dy.table.clone(),
            endpoint: dy.endpoint.clone().filter(|e| !e.trim().is_empty()),
            region: dy.region.clone().filter(|e| !e.trim().is_empty()),
        });
        #[cfg(not(feature = "aws"))]
        {
            let _ = dy;
            cx.key_error(
                "routing.dynamodb",
                "this flowgate was built without DynamoDB support (cargo feature `aws`)",
                None,
            );
            return RoutingSource::Inline(Vec::new());
        }
    }
    RoutingSource::Inline(
        r.rows
            .iter()
            .map(|row| row.clone().into_iter().collect())
            .collect(),
    )
}
