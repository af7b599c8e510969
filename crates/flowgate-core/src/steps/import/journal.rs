//! A journal read whole: decompressed, parsed (JSON lines or CSV), every record
//! checked, and the records this environment keeps.

use std::collections::BTreeSet;
use std::io::Read;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::plan::ImportPlan;
use crate::error::StepError;

/// Largest journal read (decompressed): it is held in memory.
const MAX_JOURNAL: u64 = 1 << 30;

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
    let lower = path.to_ascii_lowercase();
    let (inner, text) = decompress(&lower, &original).map_err(|e| bad(format!("cannot be read: {e}")))?;
    let records = if inner.ends_with(".csv") {
        csv_records(&text).map_err(bad)?
    } else if [".jsonl", ".ndjson", ".json"].iter().any(|s| inner.ends_with(s)) {
        json_records(&text).map_err(bad)?
    } else {
        return Err(bad(format!(
            "`{path}` is neither JSON lines (.jsonl, .ndjson, .json) nor CSV (.csv), optionally .gz or .zst"
        )));
    };
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

/// The name without its compression suffix, and the text.
fn decompress(path: &str, data: &[u8]) -> Result<(String, String), String> {
    let mut out = Vec::new();
    let limit = |r: &mut dyn Read, out: &mut Vec<u8>| -> Result<(), String> {
        r.take(MAX_JOURNAL + 1).read_to_end(out).map_err(|e| e.to_string())?;
        if out.len() as u64 > MAX_JOURNAL {
            return Err(format!("it is larger than {MAX_JOURNAL} bytes decompressed"));
        }
        Ok(())
    };
    let inner = if let Some(inner) = path.strip_suffix(".gz") {
        limit(&mut flate2::read::MultiGzDecoder::new(data), &mut out).map_err(|e| format!("not gzip: {e}"))?;
        inner
    } else if let Some(inner) = path.strip_suffix(".zst") {
        let mut d = zstd::stream::read::Decoder::new(data).map_err(|e| e.to_string())?;
        limit(&mut d, &mut out).map_err(|e| format!("not zstd: {e}"))?;
        inner
    } else {
        out = data.to_vec();
        path
    };
    let text = String::from_utf8(out).map_err(|e| format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))?;
    Ok((inner.to_string(), text))
}

/// JSON lines: each non-blank line one object, with its line number.
fn json_records(text: &str) -> Result<Vec<(usize, Value)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(v @ Value::Object(_)) => out.push((i + 1, v)),
            Ok(_) => return Err(format!("line {}: not a JSON object", i + 1)),
            Err(e) => return Err(format!("line {}: not JSON: {e}", i + 1)),
        }
    }
    Ok(out)
}

/// CSV with a header: each row an object of strings, with its line number.
fn csv_records(text: &str) -> Result<Vec<(usize, Value)>, String> {
    let mut r = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let header = r.headers().map_err(|e| format!("its header: {e}"))?.clone();
    let mut out = Vec::new();
    for row in r.records() {
        let row = row.map_err(|e| match e.position() {
            Some(p) => format!("line {}: {e}", p.line()),
            None => e.to_string(),
        })?;
        let line = row.position().map_or(0, |p| p.line() as usize);
        let obj: Map<String, Value> = header.iter().zip(row.iter()).map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect();
        out.push((line, Value::Object(obj)));
    }
    Ok(out)
}
