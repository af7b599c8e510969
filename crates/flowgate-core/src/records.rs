//! Records in files: JSON lines or CSV with a header, optionally gzip or zstd,
//! read whole with the line each record came from (the import step's journals,
//! the test step's samples).

use std::io::Read;

use serde_json::{Map, Value};

/// Largest file read (decompressed): it is held in memory.
const MAX_FILE: u64 = 1 << 30;

/// Whether `path` names a file of records this module reads.
pub fn is_records_file(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    let inner = lower
        .strip_suffix(".gz")
        .or_else(|| lower.strip_suffix(".zst"))
        .unwrap_or(&lower);
    [".jsonl", ".ndjson", ".json", ".csv"]
        .iter()
        .any(|s| inner.ends_with(s))
}

/// The records of the file `path` holding `data`, each with its line number;
/// an error says what is wrong and on which line.
pub fn parse(path: &str, data: &[u8]) -> Result<Vec<(usize, Value)>, String> {
    let lower = path.to_ascii_lowercase();
    let (inner, text) = decompress(&lower, data).map_err(|e| format!("cannot be read: {e}"))?;
    if inner.ends_with(".csv") {
        csv_records(&text)
    } else if [".jsonl", ".ndjson", ".json"]
        .iter()
        .any(|s| inner.ends_with(s))
    {
        json_records(&text)
    } else {
        Err(format!(
            "`{path}` is neither JSON lines (.jsonl, .ndjson, .json) nor CSV (.csv), optionally .gz or .zst"
        ))
    }
}

/// The name without its compression suffix, and the text.
fn decompress(path: &str, data: &[u8]) -> Result<(String, String), String> {
    let mut out = Vec::new();
    let limit = |r: &mut dyn Read, out: &mut Vec<u8>| -> Result<(), String> {
        r.take(MAX_FILE + 1)
            .read_to_end(out)
            .map_err(|e| e.to_string())?;
        if out.len() as u64 > MAX_FILE {
            return Err(format!("it is larger than {MAX_FILE} bytes decompressed"));
        }
        Ok(())
    };
    let inner = if let Some(inner) = path.strip_suffix(".gz") {
        limit(&mut flate2::read::MultiGzDecoder::new(data), &mut out)
            .map_err(|e| format!("not gzip: {e}"))?;
        inner
    } else if let Some(inner) = path.strip_suffix(".zst") {
        let mut d = zstd::stream::read::Decoder::new(data).map_err(|e| e.to_string())?;
        limit(&mut d, &mut out).map_err(|e| format!("not zstd: {e}"))?;
        inner
    } else {
        out = data.to_vec();
        path
    };
    let text = String::from_utf8(out)
        .map_err(|e| format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))?;
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
        let obj: Map<String, Value> = header
            .iter()
            .zip(row.iter())
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        out.push((line, Value::Object(obj)));
    }
    Ok(out)
}
