//! The command step's plan: its spec checked against the file.

use super::config::CommandSpec;
use crate::plan::ctx::Ctx;

/// What runs: an argument vector, or a shell line where the file asked for one.
#[derive(Debug, Clone)]
pub enum Program {
    Argv(Vec<String>),
    Shell(String),
}

#[derive(Debug, Clone)]
pub struct CommandPlan {
    /// Templates, rendered per run.
    pub program: Program,
    /// Added environment (templates).
    pub env: Vec<(String, String)>,
    /// Working directory (template), relative to the pipeline file.
    pub dir: Option<String>,
    /// The program sees flowgate's environment (else only a few safe variables).
    pub inherit_env: bool,
    pub ok: Vec<i32>,
    pub retry: Vec<i32>,
    pub reject: Vec<i32>,
    /// A setup command and its key files.
    pub setup: Option<super::config::SetupSpec>,
    /// A dotenv file (template) whose variables the program gets.
    pub env_file: Option<String>,
    /// The name of a Secrets Manager secret (template) and a role to assume.
    pub secrets: Option<String>,
    pub role_arn: Option<String>,
    /// Every code neither `ok` nor `retry` means rejected (an import's target).
    pub reject_others: bool,
    /// Bytes of the end of stdout and of stderr kept in the run record.
    pub keep_output: usize,
    /// Staged inputs and outputs: (name, where).
    pub inputs: Vec<(String, Staged)>,
    pub outputs: Vec<(String, Staged)>,
}

/// Where a staged input comes from or an output goes.
#[derive(Debug, Clone)]
pub enum Staged {
    /// A part of the run's dataset (template).
    DatasetPart(String),
    /// A store location (prefix a template).
    At(crate::store::Location),
}

/// The staged inputs or outputs of a command, checked.
pub(crate) fn staged(
    map: &std::collections::BTreeMap<String, String>,
    at: &str,
    output: bool,
    cx: &mut Ctx<'_>,
) -> Option<Vec<(String, Staged)>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (name, text) in map {
        let path = format!("{at}.{name}");
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            cx.key_error(&path, format!("`{name}` cannot name an input or output"), Some("letters, digits and `_`".into()));
            ok = false;
            continue;
        }
        if let Some(part) = text.strip_prefix("dataset:") {
            let dataset = cx.file().dataset.as_ref();
            let why = match dataset {
                None => Some("the pipeline has no [dataset]"),
                Some(d) if output && d.read.is_some() => Some("this pipeline reads its dataset (`read`), it cannot write to it"),
                _ => None,
            };
            if let Some(why) = why {
                cx.error(&path, format!("`{text}`: {why}"), None);
                ok = false;
            } else if part.trim().is_empty() || crate::template::check(part).is_err() {
                cx.error(&path, format!("`{text}` names no part"), Some("for example \"dataset:1b\"".into()));
                ok = false;
            } else {
                out.push((name.clone(), Staged::DatasetPart(part.to_string())));
            }
            continue;
        }
        let need = if output { crate::config::model::Access::Write } else { crate::config::model::Access::Read };
        let what = if output { "a command's output" } else { "a command's input" };
        ok &= cx.kind_is(&path, text, false, what);
        match cx.location(&path, text, need, what) {
            Some(loc) => out.push((name.clone(), Staged::At(loc))),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// What `keep_output` is when the file does not say.
const KEEP_OUTPUT: usize = 64 * 1024;

/// Plan a command step at `at` (`steps[0]`).
pub(crate) fn build(c: &CommandSpec, at: &str, _what: &str, cx: &mut Ctx<'_>) -> Option<CommandPlan> {
    let at = format!("{at}.command");
    let mut ok = true;
    let program = match (&c.argv, &c.shell) {
        (Some(argv), None) if argv.first().is_some_and(|p| !p.trim().is_empty()) => {
            Program::Argv(argv.clone())
        }
        (None, Some(line)) if !line.trim().is_empty() => Program::Shell(line.clone()),
        _ => {
            cx.error(
                &at,
                "a command needs exactly one of `argv` (a non-empty list) or `shell` (a line)",
                Some("for example: command = { argv = [\"./import.sh\", \"{{ params.version }}\"] }".into()),
            );
            return None;
        }
    };
    let templates: Vec<(String, &String)> = match &c.argv {
        Some(argv) => argv.iter().enumerate().map(|(i, a)| (format!("{at}.argv[{i}]"), a)).collect(),
        None => c.shell.iter().map(|s| (format!("{at}.shell"), s)).collect(),
    };
    let env_at = |k: &str| format!("{at}.env.{k}");
    let more = c.env.iter().map(|(k, v)| (env_at(k), v)).chain(c.dir.iter().map(|d| (format!("{at}.dir"), d)));
    for (path, t) in templates.into_iter().chain(more) {
        if let Err(e) = crate::template::check(t) {
            cx.error(&path, format!("not a template: {e}"), None);
            ok = false;
        }
    }
    for name in c.env.keys() {
        if name.is_empty() || name.contains(['=', '\0']) || name.starts_with("FLOWGATE_") {
            cx.key_error(
                &env_at(name),
                format!("`{name}` cannot be an environment variable's name here"),
                Some("names are non-empty, without `=`, and FLOWGATE_* is flowgate's own".into()),
            );
            ok = false;
        }
    }
    ok &= exit_codes_apart(c, &at, cx);
    let keep_output = match c.keep_output.as_deref().map(crate::units::parse_size) {
        None => KEEP_OUTPUT,
        Some(Ok(n)) => usize::try_from(n).unwrap_or(usize::MAX),
        Some(Err(e)) => {
            cx.error(&format!("{at}.keep_output"), e, Some("for example \"16KiB\"".into()));
            ok = false;
            KEEP_OUTPUT
        }
    };
    let secrets = match c.secrets.as_deref().map(|t| t.strip_prefix("aws-secrets:")) {
        None => None,
        Some(Some(name)) if !name.trim().is_empty() && crate::template::check(name).is_ok() => {
            if cfg!(not(feature = "aws")) {
                cx.error(&format!("{at}.secrets"), "this flowgate was built without the `aws` feature", None);
                ok = false;
            }
            Some(name.to_string())
        }
        Some(_) => {
            cx.error(
                &format!("{at}.secrets"),
                "secrets come from `aws-secrets:NAME` (AWS Secrets Manager)",
                Some("for example: secrets = \"aws-secrets:{{ params.tenant }}-scraper-secrets\"".into()),
            );
            ok = false;
            None
        }
    };
    if c.setup.as_ref().is_some_and(|s| s.argv.first().is_none_or(|p| p.trim().is_empty())) {
        cx.error(&format!("{at}.setup.argv"), "a setup needs a program", None);
        ok = false;
    }
    for (path, t) in [("env_file", &c.env_file), ("role_arn", &c.role_arn)] {
        if let Some(t) = t
            && let Err(e) = crate::template::check(t)
        {
            cx.error(&format!("{at}.{path}"), format!("not a template: {e}"), None);
            ok = false;
        }
    }
    let inputs = staged(&c.inputs, &format!("{at}.inputs"), false, cx);
    let outputs = staged(&c.outputs, &format!("{at}.outputs"), true, cx);
    ok &= inputs.is_some() && outputs.is_some();
    ok.then(|| CommandPlan {
        program,
        env: c.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        dir: c.dir.clone(),
        inherit_env: c.inherit_env.unwrap_or(true),
        ok: c.exit_codes.ok.clone().unwrap_or_else(|| vec![0]),
        retry: c.exit_codes.retry.clone(),
        reject: c.exit_codes.reject.clone(),
        setup: c.setup.clone(),
        env_file: c.env_file.clone(),
        secrets,
        role_arn: c.role_arn.clone(),
        reject_others: false,
        keep_output,
        inputs: inputs.unwrap_or_default(),
        outputs: outputs.unwrap_or_default(),
    })
}

/// An exit code means one thing: it is in at most one of `ok`, `retry`, `reject`.
fn exit_codes_apart(c: &CommandSpec, at: &str, cx: &mut Ctx<'_>) -> bool {
    let ok = c.exit_codes.ok.clone().unwrap_or_else(|| vec![0]);
    let classes = [("ok", &ok), ("retry", &c.exit_codes.retry), ("reject", &c.exit_codes.reject)];
    let mut fine = true;
    for (i, (a, codes_a)) in classes.iter().enumerate() {
        for (b, codes_b) in &classes[i + 1..] {
            if let Some(code) = codes_a.iter().find(|c| codes_b.contains(c)) {
                cx.error(
                    &format!("{at}.exit_codes.{b}"),
                    format!("exit code {code} is in both `{a}` and `{b}`"),
                    Some("give each exit code one meaning".into()),
                );
                fine = false;
            }
        }
    }
    fine
}
