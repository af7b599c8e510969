//! A journal read whole: decompressed, parsed (JSON lines or CSV), every record
//! checked, and the records this environment keeps.

use std::collections::BTreeSet;

use bytes::Bytes;
use serde_json::Value;

use super::plan::ImportPlan;
use crate::error::StepError;

pub(super) struct Journal {
    /// The journal as downloaded (set aside as is when rejected).
    pub original: Bytes,
    pub file_name: String,
    /// sha256 of `original`.
    pub digest: String,
    pub bytes: u64,
    pub records: usize,
    pub kept: Vec<Value>,
    /// The kept records as JSON lines.
    pub kept_jsonl: Vec<u8>,
    pub kinds_kept: Vec<String>,
}

/// Parse and check `original` (from `source`, whose key is `path`).
pub(super) fn parse(
    source: &str,
    path: &str,
    original: Bytes,
    plan: &ImportPlan,
    template: &Value,
) -> Result<Journal, StepError> {
    use sha2::Digest;
    let bad = |what: String| StepError::user(format!("journal `{source}`: {what}; nothing was imported"));
    let records = crate::records::parse(path, &original).map_err(bad)?;
    let expr = plan.keep.as_deref();
    let mut ctx = template.clone();
    let mut kept = Vec::new();
    let mut kinds = BTreeSet::new();
    for (line, record) in &records {
        let kind = record.get(&plan.kind_field).and_then(Value::as_str);
        match kind {
            Some(k) if plan.kinds.is_empty() || plan.kinds.iter().any(|x| x == k) => {}
            Some(k) => {
                return Err(bad(format!(
                    "line {line}: unknown kind `{k}` in field `{}` (known: {})",
                    plan.kind_field,
                    plan.kinds.join(", ")
                )));
            }
            None if plan.kinds.is_empty() => {}
            None => {
                return Err(bad(format!("line {line}: no `{}` field naming the change's kind", plan.kind_field)));
            }
        }
        ctx["record"] = record.clone();
        let keep = match expr {
            None => true,
            Some(e) => crate::template::truthy(e, &ctx).map_err(|m| bad(format!("line {line}: `keep` could not be evaluated: {m}")))?,
        };
        if keep {
            if let Some(k) = kind {
                kinds.insert(k.to_string());
            }
            kept.push(record.clone());
        }
    }
    let mut kept_jsonl = Vec::new();
    for r in &kept {
        serde_json::to_writer(&mut kept_jsonl, r).map_err(|e| StepError::internal(e.to_string()))?;
        kept_jsonl.push(b'\n');
    }
    Ok(Journal {
        digest: hex::encode(sha2::Sha256::digest(&original)),
        bytes: original.len() as u64,
        file_name: path.rsplit('/').next().unwrap_or(path).to_string(),
        original,
        records: records.len(),
        kept,
        kept_jsonl,
        kinds_kept: kinds.into_iter().collect(),
    })
}

