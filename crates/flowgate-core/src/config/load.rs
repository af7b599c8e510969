//! Reading a pipeline file: TOML with spans → overlay → interpolation → typed model.
//! Every problem is collected, none stops the others from being found.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use toml::de::{DeTable, DeValue};

use super::diagnostic::{Diagnostics, nearest};
use super::interpolate::{InterpolateError, Variables};
use super::model::PipelineFile;

/// Key and value spans of every path in the file (`steps[0].copy.from`).
#[derive(Debug, Default, Clone)]
pub struct SpanIndex {
    spans: HashMap<String, KeyValueSpan>,
}

/// Where a key and its value are in the file.
type KeyValueSpan = (Range<usize>, Range<usize>);

impl SpanIndex {
    /// Span of the value at `path`, or of the closest enclosing path that has one.
    pub fn value(&self, path: &str) -> Range<usize> {
        self.lookup(path).map(|(_, v)| v).unwrap_or(0..0)
    }
    /// Span of the key at `path` (falls back like [`SpanIndex::value`]).
    pub fn key(&self, path: &str) -> Range<usize> {
        self.lookup(path).map(|(k, _)| k).unwrap_or(0..0)
    }
    fn lookup(&self, path: &str) -> Option<KeyValueSpan> {
        let mut p = path.to_string();
        loop {
            if let Some(s) = self.spans.get(&p) {
                return Some(s.clone());
            }
            let cut = p.rfind(['.', '['])?;
            p.truncate(cut);
        }
    }
}

/// A loaded file: the model plus what is needed to point at places in it.
pub struct Loaded {
    pub file: PipelineFile,
    pub spans: SpanIndex,
    pub path: PathBuf,
    pub text: String,
    pub env: Option<String>,
    /// Problems found while loading; the parts they are in were left out of `file`,
    /// so later checks can still look at everything else.
    pub problems: Vec<super::Diagnostic>,
    /// Where each step of `file.steps` is in the file (`steps[2]`): broken steps are left out.
    pub step_paths: Vec<String>,
    /// Stores that were declared but could not be read; references to them are not reported again.
    pub broken_stores: Vec<String>,
}

/// How to load: which environment overlay and which variable sources.
#[derive(Debug, Default, Clone)]
pub struct LoadOptions {
    pub env: Option<String>,
    pub vars: Variables,
}

/// Load, overlay, interpolate and type-check a pipeline file. On failure, returns
/// every diagnostic found.
pub fn load_file(path: &Path, opts: &LoadOptions) -> Result<Loaded, Vec<super::Diagnostic>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return Err(vec![super::Diagnostic {
                file: path.to_path_buf(),
                line: 1,
                col: 1,
                message: format!("cannot read pipeline file: {e}"),
                hint: None,
                missing_variable: None,
            }]);
        }
    };
    load_file_text(path, text, opts)
}

/// [`load_file`] for the text a file at `path` had (a rerun's pipeline file as
/// it was): its `.env` and relative paths are those of `path`.
pub fn load_file_text(
    path: &Path,
    text: String,
    opts: &LoadOptions,
) -> Result<Loaded, Vec<super::Diagnostic>> {
    let mut vars = opts.vars.clone();
    let dotenv_path = path.parent().unwrap_or(Path::new(".")).join(".env");
    if dotenv_path.is_file() {
        let mut dotenv = HashMap::new();
        if let Ok(iter) = dotenvy::from_path_iter(&dotenv_path) {
            for (k, v) in iter.flatten() {
                dotenv.insert(k, v);
            }
        }
        let overrides = std::mem::take(&mut vars);
        vars = Variables::with_dotenv(dotenv);
        vars.merge_overrides(overrides);
    }
    load_str(path, text, opts.env.as_deref(), &vars)
}

impl Variables {
    fn merge_overrides(&mut self, other: Variables) {
        for (k, v) in other.overrides_iter() {
            self.set(k, v);
        }
    }
}

/// Load from text already in memory (`path` is only used in messages and for `.env`).
pub fn load_str(
    path: &Path,
    text: String,
    env: Option<&str>,
    vars: &Variables,
) -> Result<Loaded, Vec<super::Diagnostic>> {
    let mut diags = Diagnostics::new(path.to_path_buf(), &text);
    let (root, parse_errors) = DeTable::parse_recoverable(&text);
    for e in &parse_errors {
        diags.push(
            e.span().unwrap_or(0..0),
            format!("invalid TOML: {}", e.message().trim()),
            None,
        );
    }
    if !parse_errors.is_empty() {
        return Err(diags.items);
    }
    let mut spans = SpanIndex::default();
    let mut tree = table_to_json(root.get_ref(), "", &mut spans);

    // Overlay the selected environment, then drop every overlay from the tree.
    let overlays = match tree.remove("env") {
        Some(Value::Object(o)) => o,
        _ => Map::new(),
    };
    if let Some(name) = env {
        match overlays.get(name) {
            Some(Value::Object(overlay)) => {
                let prefix = format!("env.{name}");
                merge(&mut tree, overlay, "", &prefix, &mut spans);
            }
            _ => {
                let declared: Vec<&str> = overlays.keys().map(String::as_str).collect();
                let hint = if declared.is_empty() {
                    "this file declares no [env.NAME] overlays".to_string()
                } else {
                    format!("declared environments: {}", declared.join(", "))
                };
                diags.push(0..0, format!("unknown environment `{name}`"), Some(hint));
            }
        }
    }

    let mut tree = Value::Object(tree);
    interpolate(&mut tree, "", vars, &spans, &mut diags);
    let Some(typed) = typed(tree, &spans, &mut diags) else {
        return Err(diags.items);
    };
    let mut file = typed.file;
    file.env = overlays.into_iter().collect::<BTreeMap<_, _>>();
    let problems = diags.items;
    Ok(Loaded {
        file,
        spans,
        path: path.to_path_buf(),
        text,
        env: env.map(str::to_string),
        problems,
        step_paths: typed.step_paths,
        broken_stores: typed.broken_stores,
    })
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn table_to_json(table: &DeTable<'_>, prefix: &str, spans: &mut SpanIndex) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in table.iter() {
        let path = join(prefix, key.get_ref());
        spans.spans.insert(path.clone(), (key.span(), value.span()));
        out.insert(
            key.get_ref().to_string(),
            value_to_json(value.get_ref(), &path, spans),
        );
    }
    out
}

fn value_to_json(value: &DeValue<'_>, path: &str, spans: &mut SpanIndex) -> Value {
    match value {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(i.as_str().to_string())),
        DeValue::Float(f) => f
            .as_str()
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::String(d.to_string()),
        DeValue::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let p = format!("{path}[{i}]");
                    spans.spans.insert(p.clone(), (item.span(), item.span()));
                    value_to_json(item.get_ref(), &p, spans)
                })
                .collect(),
        ),
        DeValue::Table(t) => Value::Object(table_to_json(t, path, spans)),
    }
}

/// Deep-merge an overlay: tables merge key by key, anything else replaces.
/// Spans of replaced values point into the overlay.
fn merge(
    base: &mut Map<String, Value>,
    overlay: &Map<String, Value>,
    path: &str,
    from: &str,
    spans: &mut SpanIndex,
) {
    for (key, value) in overlay {
        let here = join(path, key);
        let there = join(from, key);
        match (base.get_mut(key), value) {
            (Some(Value::Object(b)), Value::Object(o)) => merge(b, o, &here, &there, spans),
            _ => {
                let moved: Vec<(String, KeyValueSpan)> = spans
                    .spans
                    .iter()
                    .filter(|(p, _)| {
                        *p == &there
                            || p.starts_with(&format!("{there}."))
                            || p.starts_with(&format!("{there}["))
                    })
                    .map(|(p, s)| (format!("{here}{}", &p[there.len()..]), s.clone()))
                    .collect();
                spans.spans.extend(moved);
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

fn interpolate(
    value: &mut Value,
    path: &str,
    vars: &Variables,
    spans: &SpanIndex,
    diags: &mut Diagnostics<'_>,
) {
    match value {
        Value::String(s) => match vars.expand(s) {
            Ok(expanded) => *s = expanded,
            Err(InterpolateError::Missing { name }) => {
                diags.missing_variable(spans.value(path), &name)
            }
            Err(InterpolateError::Unclosed) => diags.push(
                spans.value(path),
                "unclosed `${` in value",
                Some("write `$${` for a literal `${`".into()),
            ),
            Err(InterpolateError::BadName { name }) => diags.push(
                spans.value(path),
                format!("`{name}` is not a variable name"),
                Some(
                    "variable names use letters, digits and `_`: ${NAME} or ${NAME:-default}"
                        .into(),
                ),
            ),
        },
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate(item, &format!("{path}[{i}]"), vars, spans, diags);
            }
        }
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                interpolate(v, &join(path, k), vars, spans, diags);
            }
        }
        _ => {}
    }
}

/// Deserialize one part of the tree, reporting a failure at its exact place.
pub(crate) fn section<T: DeserializeOwned>(
    value: Value,
    path: &str,
    spans: &SpanIndex,
    diags: &mut Diagnostics<'_>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(err) => {
            let inner = err.inner().to_string();
            let sub = err.path().to_string();
            let full = if sub == "." || sub.is_empty() {
                path.to_string()
            } else if sub.starts_with('[') || path.is_empty() {
                format!("{path}{sub}")
            } else {
                format!("{path}.{sub}")
            };
            if let Some(rest) = inner.strip_prefix("unknown field `") {
                let field = rest.split('`').next().unwrap_or_default();
                let expected: Vec<&str> = rest
                    .split('`')
                    .skip(1)
                    .enumerate()
                    .filter(|(i, _)| i % 2 == 1)
                    .map(|(_, s)| s)
                    .collect();
                let hint = match nearest(field, expected.iter().copied()) {
                    Some(n) => Some(format!(
                        "did you mean `{n}`? valid keys here: {}",
                        expected.join(", ")
                    )),
                    None if expected.is_empty() => None,
                    None => Some(format!("valid keys here: {}", expected.join(", "))),
                };
                let key_path = if full.ends_with(field) {
                    full.clone()
                } else {
                    join(&full, field)
                };
                diags.push(spans.key(&key_path), format!("unknown key `{field}`"), hint);
            } else if inner.starts_with("missing field") {
                diags.push(
                    spans.key(&full),
                    format!("{}: {inner}", display_path(&full)),
                    None,
                );
            } else {
                diags.push(
                    spans.value(&full),
                    format!("{}: {inner}", display_path(&full)),
                    None,
                );
            }
            None
        }
    }
}

fn display_path(path: &str) -> &str {
    if path.is_empty() { "pipeline" } else { path }
}

struct Typed {
    file: PipelineFile,
    step_paths: Vec<String>,
    broken_stores: Vec<String>,
}

/// Type-check the tree section by section so that one bad step does not hide
/// another; broken sections are reported and left out.
fn typed(tree: Value, spans: &SpanIndex, diags: &mut Diagnostics<'_>) -> Option<Typed> {
    let Value::Object(mut map) = tree else {
        return None;
    };
    let mut step_paths = Vec::new();
    let mut broken_stores = Vec::new();
    let steps = match map.remove("steps") {
        Some(Value::Array(items)) => {
            let mut checked = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                let p = format!("steps[{i}]");
                if let Some(s) = section::<super::model::StepSpec>(item, &p, spans, diags) {
                    checked.push(serde_json::to_value(s).ok()?);
                    step_paths.push(p);
                }
            }
            Some(Value::Array(checked))
        }
        other => other,
    };
    let stores = match map.remove("stores") {
        Some(Value::Object(entries)) => {
            let mut checked = Map::new();
            for (name, item) in entries {
                let p = format!("stores.{name}");
                match section::<super::model::StoreSpec>(item, &p, spans, diags) {
                    Some(s) => {
                        checked.insert(name, serde_json::to_value(s).ok()?);
                    }
                    None => broken_stores.push(name),
                }
            }
            Some(Value::Object(checked))
        }
        other => other,
    };
    // Every other top-level key on its own.
    let mut rest = Map::new();
    for (key, value) in map {
        if key == "name" {
            rest.insert(key, value);
            continue;
        }
        let mut probe = Map::new();
        probe.insert("name".into(), Value::String(String::new()));
        probe.insert(key.clone(), value.clone());
        if section::<PipelineFile>(Value::Object(probe), "", spans, diags).is_some() {
            rest.insert(key, value);
        }
    }
    if let Some(s) = steps {
        rest.insert("steps".into(), s);
    }
    if let Some(s) = stores {
        rest.insert("stores".into(), s);
    }
    let file = section::<PipelineFile>(Value::Object(rest), "", spans, diags)?;
    Some(Typed {
        file,
        step_paths,
        broken_stores,
    })
}
