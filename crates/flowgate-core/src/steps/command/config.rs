//! The `command` step as written in a pipeline file. Doc comments are the
//! reference documentation and become descriptions in `flowgate schema`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Run a program: its arguments as given (no shell unless `shell` is used), with
/// its environment and working directory; its exit code says what happened.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// The program and its arguments, each a template, e.g.
    /// `["./import.sh", "--version", "{{ params.version }}"]`. A program with a `/`
    /// is relative to `dir`; otherwise it is looked up on `PATH`. No shell sees it,
    /// so nothing in run data is ever interpreted as shell syntax.
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// A shell command line instead of `argv` (a template), run as `sh -c`: only
    /// for pipes, redirections or globs. Values from run data are exposed as
    /// environment variables (`env`), never pasted into the line.
    #[serde(default)]
    pub shell: Option<String>,
    /// Environment variables added to flowgate's own (templates), e.g.
    /// `{ API_TOKEN = "${secret:IMPORT_TOKEN}", VERSION = "{{ params.version }}" }`.
    /// Secrets are masked in everything flowgate prints and keeps, the command's
    /// captured output included. `FLOWGATE_PIPELINE`, `FLOWGATE_RUN_ID` and
    /// `FLOWGATE_STEP` are always set.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A dotenv file whose variables the program gets (a template, relative to
    /// the pipeline's folder), e.g. the tenant's `"Project/{{ params.project }}/.env_gha"`:
    /// kept beside the scripts, never in the pipeline file. `env` wins over it;
    /// values of names that look secret (`…TOKEN`, `…PASSWORD`, `…SECRET`, `…KEY`)
    /// are masked.
    #[serde(default)]
    pub env_file: Option<String>,
    /// Secrets the program gets as environment variables, from a secret holding
    /// a JSON object: `"aws-secrets:NAME"` (AWS Secrets Manager; a template, e.g.
    /// `"aws-secrets:{{ tenant }}-scraper-secrets"`). Every value is masked in all
    /// flowgate prints and keeps, the command's own output included.
    #[serde(default)]
    pub secrets: Option<String>,
    /// A role to assume through STS for `secrets` (a template, e.g.
    /// `"${PROD_ROLE_ARN:-}"`; empty: the credentials as they are).
    #[serde(default)]
    pub role_arn: Option<String>,
    /// A command that prepares the working directory (e.g. a virtualenv from
    /// `Pipfile.lock`), run first and then only again when the content of its
    /// `key` files (or the command) changed: its hash is kept in
    /// `<dir>/.flowgate-setup` once the setup succeeded.
    #[serde(default)]
    pub setup: Option<SetupSpec>,
    /// Whether the program sees flowgate's own environment (default true). With
    /// `false` it gets only `PATH`, `HOME`, `LANG`, `TZ`, the `FLOWGATE_*` ones and
    /// `env`: nothing of flowgate's credentials reaches a script that does not
    /// need them.
    #[serde(default)]
    pub inherit_env: Option<bool>,
    /// Working directory (a template), relative to the pipeline file's folder
    /// (default: that folder).
    #[serde(default)]
    pub dir: Option<String>,
    /// What exit codes mean. Codes not listed (and a death by signal) fail the step
    /// without a retry: running a command again is only safe where you say so.
    #[serde(default)]
    pub exit_codes: ExitCodesSpec,
    /// Files the program reads, put in a fresh folder before it starts, its
    /// path in `$FLOWGATE_IN_<NAME>` (upper case): `NAME = "dataset:PART"` (a part
    /// of the run's dataset, e.g. written by an earlier step of this run) or
    /// `NAME = "store:prefix"` (templates).
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// Folders the program fills, empty when it starts, their paths in
    /// `$FLOWGATE_OUT_<NAME>`, uploaded after it succeeded (and only then):
    /// `NAME = "dataset:PART"` (a part of the dataset this run makes, published
    /// by a `publish` step) or `NAME = "store:prefix"`.
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    /// How much of stdout and of stderr the run record keeps, the end of each,
    /// e.g. `"16KiB"` (default 64 KiB). Every line also goes to the log as it comes.
    #[serde(default)]
    pub keep_output: Option<String>,
}

/// Exit codes sorted into what they mean.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExitCodesSpec {
    /// Success (default `[0]`).
    #[serde(default)]
    pub ok: Option<Vec<i32>>,
    /// A transient failure: the step is tried again under its retry policy, e.g. `[75]`.
    #[serde(default)]
    pub retry: Vec<i32>,
    /// The command refused its input (an import rejected): the step fails as
    /// rejected, with the end of stderr as the reason, and is not retried.
    #[serde(default)]
    pub reject: Vec<i32>,
}

/// A setup command, cached by the content of its key files.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupSpec {
    /// The program and its arguments (no shell), run in the step's directory
    /// with the step's environment.
    pub argv: Vec<String>,
    /// Files (relative to the step's directory) whose content decides whether
    /// the setup runs again, e.g. `["Pipfile.lock"]`.
    pub key: Vec<String>,
}
