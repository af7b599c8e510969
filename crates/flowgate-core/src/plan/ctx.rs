//! What every planner shares: the loaded file, the diagnostics every problem goes
//! to (with its position), and the checks of store references each part makes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::config::Loaded;
use crate::config::diagnostic::{Diagnostics, nearest};
use crate::config::model::{Access, PipelineFile};
use crate::store::Location;
use crate::units::parse_duration;

/// A plan being built: each planner reads the file through it and reports to it.
pub struct Ctx<'a> {
    pub loaded: &'a Loaded,
    pub d: Diagnostics<'a>,
    /// Directory of the pipeline file: relative paths start here.
    pub dir: PathBuf,
}

impl<'a> Ctx<'a> {
    pub fn new(loaded: &'a Loaded) -> Self {
        let mut d = Diagnostics::new(loaded.path.clone(), &loaded.text);
        d.items.extend(loaded.problems.iter().cloned());
        let dir = loaded
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ctx { loaded, d, dir }
    }

    pub fn file(&self) -> &'a PipelineFile {
        &self.loaded.file
    }

    /// A problem with the value at `path` (`steps[0].copy.from`).
    pub fn error(&mut self, path: &str, message: impl Into<String>, hint: Option<String>) {
        let span = self.loaded.spans.value(path);
        self.d.push(span, message, hint);
    }

    /// A problem with the key at `path` (the whole table it names).
    pub fn key_error(&mut self, path: &str, message: impl Into<String>, hint: Option<String>) {
        let span = self.loaded.spans.key(path);
        self.d.push(span, message, hint);
    }

    /// An optional duration at `path`: `Err` (reported) when it does not parse.
    pub fn duration(&mut self, path: &str, text: Option<&str>) -> Result<Option<Duration>, ()> {
        text.map(parse_duration).transpose().map_err(|e| {
            self.error(path, e, None);
        })
    }

    fn declared(&self) -> String {
        let names: Vec<&str> = self.file().stores.keys().map(String::as_str).collect();
        if names.is_empty() {
            "no stores are declared; add one under [stores]".to_string()
        } else {
            format!("declared stores: {}", names.join(", "))
        }
    }

    /// Is `name` a declared store that allows `need`? Reported at `at` if not.
    pub fn store_ref(&mut self, at: &str, name: &str, need: Access, what: &str) -> bool {
        let file = self.file();
        let Some(s) = file.stores.get(name) else {
            if self.loaded.broken_stores.iter().any(|b| b == name) {
                return false;
            }
            let hint = match nearest(name, file.stores.keys().map(String::as_str)) {
                Some(n) => format!("did you mean `{n}`? {}", self.declared()),
                None => self.declared(),
            };
            self.error(at, format!("unknown store `{name}`"), Some(hint));
            return false;
        };
        if need.can_write() && !s.access.can_write() {
            self.error(
                at,
                format!("{what} writes to store `{name}`, which is read-only"),
                Some(format!("set access = \"read-write\" (or \"write\") on [stores.{name}] if writing there is intended")),
            );
            return false;
        }
        if need.can_read() && !s.access.can_read() {
            self.error(
                at,
                format!("{what} reads from store `{name}`, which is write-only"),
                Some(format!("set access = \"read-write\" on [stores.{name}]")),
            );
            return false;
        }
        true
    }

    /// A `store:prefix` location at `at`, its template checked and its store allowing `need`.
    pub fn location(&mut self, at: &str, text: &str, need: Access, what: &str) -> Option<Location> {
        match Location::parse(text) {
            Ok(loc) => {
                if let Err(e) = crate::template::check(&loc.prefix) {
                    self.error(at, format!("bad template in `{text}`: {e}"), None);
                }
                self.store_ref(at, &loc.store, need, what).then_some(loc)
            }
            Err(e) => {
                self.error(at, e, None);
                None
            }
        }
    }

    /// Is the store `text` names (`store` or `store:prefix`) of the right kind, SQL
    /// or object? Unknown stores are reported elsewhere.
    pub fn kind_is(&mut self, at: &str, text: &str, sql: bool, what: &str) -> bool {
        let name = text.split_once(':').map(|(s, _)| s).unwrap_or(text);
        let Some(spec) = self.file().stores.get(name) else {
            return true;
        };
        if crate::sql::is_sql_url(&spec.url) == sql {
            return true;
        }
        let (want, got) = if sql {
            ("a SQL store (postgres:// or sqlite://)", "an object store")
        } else {
            ("an object store", "a SQL store")
        };
        self.error(
            at,
            format!("{what} needs {want} here, but `{name}` is {got}"),
            None,
        );
        false
    }

    /// The glob patterns at `path`, compiled (each bad one reported).
    pub fn glob_set(&mut self, patterns: &[String], path: &str) -> Option<GlobSet> {
        if patterns.is_empty() {
            return None;
        }
        let mut b = GlobSetBuilder::new();
        for (i, p) in patterns.iter().enumerate() {
            match Glob::new(p) {
                Ok(g) => {
                    b.add(g);
                }
                Err(e) => self.error(
                    &format!("{path}[{i}]"),
                    format!("bad glob `{p}`: {e}"),
                    None,
                ),
            }
        }
        b.build().ok()
    }
}
