//! One template language for paths and parameters (minijinja), with `strftime`.

use std::sync::OnceLock;

use minijinja::{Environment, UndefinedBehavior, Value};

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.add_filter("strftime", strftime);
        env.add_filter("strip_suffix", strip_suffix);
        env.add_function("getenv", env_var);
        env
    })
}

/// The pipeline's `.env` values that `getenv("NAME")` sees after the process
/// environment (set by whoever loaded the pipeline: `serve`, `validate`).
fn dotenv() -> &'static std::sync::RwLock<std::collections::HashMap<String, String>> {
    static DOTENV: OnceLock<std::sync::RwLock<std::collections::HashMap<String, String>>> =
        OnceLock::new();
    DOTENV.get_or_init(Default::default)
}

/// Make the `.env` file at `path` (when there is one) what `getenv()` falls back to.
pub fn use_dotenv(path: &std::path::Path) -> Result<(), String> {
    if !path.is_file() {
        return Ok(());
    }
    let iter = dotenvy::from_path_iter(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut map = std::collections::HashMap::new();
    for item in iter {
        let (k, v) = item.map_err(|e| format!("{}: {e}", path.display()))?;
        map.insert(k, v);
    }
    if let Ok(mut d) = dotenv().write() {
        *d = map;
    }
    Ok(())
}

/// `{{ getenv("BQ_TABLE_" ~ params.domain) }}`: a variable of the environment, else
/// of the pipeline's `.env`; a missing one is an error that names it, unless a
/// default is given (`getenv("WAREHOUSE_URL", "")`).
fn env_var(name: String, default: Option<String>) -> Result<String, minijinja::Error> {
    let value = std::env::var(&name)
        .ok()
        .or_else(|| dotenv().read().ok().and_then(|d| d.get(&name).cloned()))
        .or(default);
    match value {
        Some(v) => {
            if crate::secret::name_looks_secret(&name) {
                crate::secret::register(&v);
            }
            Ok(v)
        }
        None => Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!(
                "the variable `{name}` is not set (neither in the environment nor in the pipeline's .env)"
            ),
        )),
    }
}

/// `{{ "cat-be-dev" | strip_suffix("-dev") }}` → `cat-be`: the suffix removed
/// once, when the value ends with it (`cat-be-dev-dev` → `cat-be-dev`).
fn strip_suffix(value: String, suffix: String) -> String {
    match value.strip_suffix(suffix.as_str()) {
        Some(rest) => rest.to_string(),
        None => value,
    }
}

/// `{{ run.started | strftime("%Y%m%d_%H%M%S") }}`: formats an RFC 3339 timestamp (UTC).
fn strftime(value: String, format: String) -> Result<String, minijinja::Error> {
    let parsed = chrono::DateTime::parse_from_rfc3339(&value).map_err(|e| {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("strftime: `{value}` is not a timestamp: {e}"),
        )
    })?;
    let mut out = String::new();
    use std::fmt::Write;
    write!(
        out,
        "{}",
        parsed.with_timezone(&chrono::Utc).format(&format)
    )
    .map_err(|_| {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("strftime: `{format}` is not a valid format"),
        )
    })?;
    Ok(out)
}

/// Check a template compiles; returns the error text when it does not.
pub fn check(source: &str) -> Result<(), String> {
    env()
        .template_from_str(source)
        .map(|_| ())
        .map_err(|e| describe(&e))
}

/// The top-level names a template reads (`run` for `{{ run.id }}`); none for
/// a template that does not compile.
pub fn variables(source: &str) -> std::collections::HashSet<String> {
    env()
        .template_from_str(source)
        .map(|t| t.undeclared_variables(false))
        .unwrap_or_default()
}

/// Render a template with a context (a serializable value).
pub fn render(source: &str, ctx: &serde_json::Value) -> Result<String, String> {
    if !source.contains("{{") && !source.contains("{%") {
        return Ok(source.to_string());
    }
    let tmpl = env().template_from_str(source).map_err(|e| describe(&e))?;
    tmpl.render(Value::from_serialize(ctx))
        .map_err(|e| format!("template `{source}`: {}", describe(&e)))
}

/// Check an expression (a step's `when`) compiles.
pub fn check_expression(source: &str) -> Result<(), String> {
    env()
        .compile_expression(source)
        .map(|_| ())
        .map_err(|e| describe(&e))
}

/// Evaluate an expression for its truth.
pub fn truthy(source: &str, ctx: &serde_json::Value) -> Result<bool, String> {
    let expr = env().compile_expression(source).map_err(|e| describe(&e))?;
    expr.eval(Value::from_serialize(ctx))
        .map(|v| v.is_true())
        .map_err(|e| format!("`{source}`: {}", describe(&e)))
}

fn describe(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_strftime_and_filters() {
        let ctx = serde_json::json!({"run": {"started": "2026-11-23T16:21:05Z"}, "matrix": {"tenant": "ACME"}});
        assert_eq!(
            render("{{ matrix.tenant | lower }}/datasets/{{ run.started | strftime('%Y%m%d_%H%M%S') }}_utc", &ctx).unwrap(),
            "acme/datasets/20261123_162105_utc"
        );
        assert!(render("{{ nope.x }}", &ctx).is_err());
        assert!(check("{{ unclosed").is_err());
    }

    #[test]
    fn getenv_names_a_missing_variable_unless_given_a_default() {
        let ctx = serde_json::json!({});
        let e = render("{{ getenv('FG_TEST_SURELY_UNSET') }}", &ctx).unwrap_err();
        assert!(e.contains("`FG_TEST_SURELY_UNSET` is not set"), "{e}");
        assert_eq!(
            render("{{ getenv('FG_TEST_SURELY_UNSET', 'bigquery:') }}", &ctx).unwrap(),
            "bigquery:"
        );
    }

    #[test]
    fn tenant_names_lower_case_without_one_dev_suffix() {
        let name = |dir: &str| {
            render(
                "{{ d | lower | strip_suffix('-dev') }}",
                &serde_json::json!({ "d": dir }),
            )
            .unwrap()
        };
        assert_eq!(name("CAT-BE-DEV"), "cat-be");
        assert_eq!(name("cat-be-dev-dev"), "cat-be-dev");
        assert_eq!(name("X-DEV-Y"), "x-dev-y");
        assert_eq!(name("CAT-BE"), "cat-be");
    }
}
