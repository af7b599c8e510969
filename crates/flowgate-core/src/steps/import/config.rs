//! The `import` step as written in a pipeline file. Doc comments are the
//! reference documentation and become descriptions in `flowgate schema`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::model::EmailSpec;
use crate::steps::command::config::CommandSpec;

/// Import one version of a journal (a file of change records) into each target:
/// download it, check every record, keep the records this environment imports,
/// and hand the result to every target (a cluster) that does not hold this
/// version yet. Each (version, target) is imported at most once: a rerun or a
/// restart after a crash skips the targets that hold it.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportSpec {
    /// The journal: `store:path`, a template, e.g.
    /// `"artifacts:journals/{{ version }}/journal.jsonl.gz"`. JSON lines (`.jsonl`,
    /// `.ndjson`, `.json`) or CSV with a header (`.csv`), optionally `.gz` or `.zst`.
    pub journal: String,
    /// The version being imported (a template; default `"{{ trigger.value }}"`, the
    /// watched key's value). Letters, digits, `.`, `_`, `-` and `+`, starting with a
    /// letter or digit: it names folders and ledger entries. In the other
    /// templates of this step it is `{{ version }}`.
    #[serde(default)]
    pub version: Option<String>,
    /// The record field that names a change's kind (default `"kind"`).
    #[serde(default)]
    pub kind_field: Option<String>,
    /// The kinds a journal may hold. A record of another kind (or without one)
    /// stops the import before any target gets anything, naming its line.
    /// Empty: any kind.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Which records this environment imports: an expression over `record` (the
    /// change) and the run's data, e.g. `"record.mandator in vars.mandators"`.
    /// Default: every record.
    #[serde(default)]
    pub keep: Option<String>,
    /// Where a journal a target rejected goes, with an `error.json` saying why:
    /// `failed/<version>/` in the first of these stores this environment may
    /// write to, e.g. `["artifacts", "local_failed"]`.
    #[serde(default)]
    pub failed: Vec<String>,
    /// Where each import's outcome is recorded, one JSON line per target: a store,
    /// or `store:prefix` (a template; default prefix `audit`). Each attempt writes
    /// one object, `<prefix>/<version>/<time>-<run id>-<step>.jsonl`, so nothing
    /// is ever rewritten. Every outcome is also kept in the run record
    /// (`flowgate runs show`).
    #[serde(default)]
    pub audit: Option<String>,
    /// A table the outcomes are also appended to, one row each:
    /// `"store:table"` or `"store:schema.table"` of a SQL store (created from the
    /// records; one transaction per attempt, recorded in its `flowgate_loaded`).
    #[serde(default)]
    pub audit_table: Option<String>,
    /// The targets, each imported on its own: one failing or rejecting does not
    /// keep the others from their import.
    pub targets: Vec<TargetSpec>,
}

/// One target of an import, e.g. a cluster.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Its name, e.g. `"modelling"`: in the ledger, the audit and notices.
    /// Exactly one of `command`, `http` and `sql` says how it imports.
    pub name: String,
    /// Import by running a program (the cluster's own importer). It gets the
    /// filtered journal's path in `FLOWGATE_JOURNAL` (JSON lines), and
    /// `FLOWGATE_VERSION`, `FLOWGATE_TARGET` and `FLOWGATE_IMPORT_ID` (version and
    /// target: an importer that records it with its changes and skips an id it
    /// has applied makes a crash between its commit and flowgate's ledger
    /// harmless). Exit codes as for the `command` step: `ok` imported, `reject`
    /// (default: any code not listed) refused the journal, `retry` tries again.
    #[serde(default)]
    pub command: Option<CommandSpec>,
    /// Import by an HTTP POST of the filtered journal (JSON lines) to this URL,
    /// with an `Idempotency-Key` header (the import id): 2xx imported, 408/429/5xx
    /// tried again, any other status rejected with the response's body as the
    /// reason.
    #[serde(default)]
    pub http: Option<String>,
    /// Import by appending the kept records as rows to a table of a SQL store:
    /// `"store:table"` or `"store:schema.table"` (created from the records'
    /// fields, nested values as JSON text). One transaction per version that also
    /// records it in the table's own `flowgate_loaded` ledger: a crash leaves the
    /// version in the table with its record or neither. A table that refuses the
    /// rows rejects the journal.
    #[serde(default)]
    pub sql: Option<String>,
    /// Who owns the target: told when it rejects a journal or its import fails.
    #[serde(default)]
    pub owners: Option<OwnersSpec>,
}

/// Where a target's owners are told.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnersSpec {
    /// Slack-compatible webhook URL. Redacted in all output.
    #[serde(default)]
    pub webhook: Option<String>,
    /// Email through SMTP.
    #[serde(default)]
    pub email: Option<EmailSpec>,
}
