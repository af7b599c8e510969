//! Routing rows: what to do with the data an event points at. Rows come from the
//! pipeline file, a SQL table or DynamoDB; the rows whose match column equals the
//! event's key, or failing that its nearest parent folder, apply.

use serde_json::{Map, Value};

use crate::error::StepError;
use crate::plan::{RoutingPlan, RoutingSource};

pub type Row = Map<String, Value>;

/// The key, then each parent folder, longest first.
pub fn candidates(key: &str) -> Vec<String> {
    let mut k = key.trim_matches('/').to_string();
    let mut out = Vec::new();
    while !k.is_empty() {
        out.push(k.clone());
        match k.rfind('/') {
            Some(i) => k.truncate(i),
            None => k.clear(),
        }
    }
    out
}

impl RoutingPlan {
    /// The rows for `key`; an error when the routing table cannot be read (the
    /// event is then tried again later, never dropped).
    pub async fn lookup(&self, key: &str) -> Result<Vec<Row>, StepError> {
        for candidate in candidates(key) {
            let rows = match &self.source {
                RoutingSource::Inline(rows) => rows
                    .iter()
                    .filter(|r| {
                        r.get(&self.match_column)
                            .and_then(Value::as_str)
                            .is_some_and(|v| v.trim_matches('/') == candidate)
                    })
                    .cloned()
                    .collect(),
                RoutingSource::Sql { source, table } => source
                    .select_where(table, &self.match_column, &candidate)
                    .await
                    .map_err(|e| e.context(format!("reading routing rows from `{table}`")))?,
                #[cfg(feature = "aws")]
                RoutingSource::Dynamo(d) => dynamo::query(d, &self.match_column, &candidate)
                    .await
                    .map_err(|e| {
                        e.context(format!(
                            "reading routing rows from DynamoDB table `{}`",
                            d.table
                        ))
                    })?,
            };
            if !rows.is_empty() {
                return Ok(rows);
            }
        }
        Ok(Vec::new())
    }
}

#[cfg(feature = "aws")]
pub mod dynamo {
    use aws_sdk_dynamodb::types::AttributeValue;
    use serde_json::{Map, Value};

    use super::Row;
    use crate::error::{ErrorClass, StepError};
    use crate::plan::DynamoPlan;

    pub async fn client(d: &DynamoPlan) -> aws_sdk_dynamodb::Client {
        let conf = crate::aws::config(d.region.as_deref(), d.endpoint.as_deref()).await;
        aws_sdk_dynamodb::Client::new(&conf)
    }

    /// Every item whose partition key `column` is `value` (all pages).
    pub async fn query(d: &DynamoPlan, column: &str, value: &str) -> Result<Vec<Row>, StepError> {
        let client = client(d).await;
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let got = client
                .query()
                .table_name(&d.table)
                .key_condition_expression("#k = :v")
                .expression_attribute_names("#k", column)
                .expression_attribute_values(":v", AttributeValue::S(value.to_string()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| {
                    StepError::new(ErrorClass::EXTERNAL_RETRIABLE, crate::error::chain(&e))
                })?;
            for item in got.items() {
                out.push(
                    item.iter()
                        .map(|(k, v)| (k.clone(), to_json(v)))
                        .collect::<Map<String, Value>>(),
                );
            }
            match got.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(out),
            }
        }
    }

    fn to_json(v: &AttributeValue) -> Value {
        match v {
            AttributeValue::S(s) => Value::String(s.clone()),
            AttributeValue::N(n) => n
                .parse::<i64>()
                .map(Value::from)
                .or_else(|_| n.parse::<f64>().map(Value::from))
                .unwrap_or_else(|_| Value::String(n.clone())),
            AttributeValue::Bool(b) => Value::Bool(*b),
            AttributeValue::Null(_) => Value::Null,
            AttributeValue::L(l) => Value::Array(l.iter().map(to_json).collect()),
            AttributeValue::M(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
            }
            AttributeValue::Ss(s) => Value::from(s.clone()),
            AttributeValue::Ns(n) => Value::from(n.clone()),
            _ => Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_run_from_the_key_up_its_folders() {
        assert_eq!(
            candidates("/exports/sales/run1/"),
            ["exports/sales/run1", "exports/sales", "exports"]
        );
        assert!(candidates("").is_empty());
    }
}
