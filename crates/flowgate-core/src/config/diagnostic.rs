//! `file:line:col: message` diagnostics for pipeline files.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// One problem found in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The variable this diagnostic says is missing, if that is what it says.
    #[serde(skip)]
    pub missing_variable: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n    hint: {hint}")?;
        }
        Ok(())
    }
}

/// Turns byte offsets of one file into line and column (both 1-based, columns in characters).
pub struct LineIndex<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, line_starts }
    }

    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset) - 1;
        let start = self.line_starts[line];
        let col = self
            .text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(offset - start);
        (line + 1, col + 1)
    }
}

/// Collects diagnostics for one file.
pub struct Diagnostics<'a> {
    pub file: PathBuf,
    index: LineIndex<'a>,
    pub items: Vec<Diagnostic>,
}

impl<'a> Diagnostics<'a> {
    pub fn new(file: PathBuf, text: &'a str) -> Self {
        Diagnostics {
            file,
            index: LineIndex::new(text),
            items: Vec::new(),
        }
    }

    pub fn push(&mut self, span: Range<usize>, message: impl Into<String>, hint: Option<String>) {
        let (line, col) = self.index.position(span.start);
        let message = crate::secret::redact(&message.into());
        let hint = hint.map(|h| crate::secret::redact(&h));
        let d = Diagnostic {
            file: self.file.clone(),
            line,
            col,
            message,
            hint,
            missing_variable: None,
        };
        if !self.items.contains(&d) {
            self.items.push(d);
        }
    }

    /// Report that variable `name` is not set.
    pub fn missing_variable(&mut self, span: Range<usize>, name: &str) {
        self.push(
            span,
            format!("variable `{name}` is not set"),
            Some(format!(
                "set {name} in the environment or in a .env file beside the pipeline, or give a default: ${{{name}:-value}}"
            )),
        );
        if let Some(last) = self.items.last_mut() {
            last.missing_variable = Some(name.to_string());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The closest candidate to `word`, if it is close enough to be a likely typo.
pub fn nearest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|c| (c, strsim::damerau_levenshtein(word, c)))
        .filter(|(c, d)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(_, d)| *d)
        .map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let idx = LineIndex::new("a = 1\nbé = 2\n");
        assert_eq!(idx.position(0), (1, 1));
        assert_eq!(idx.position(6), (2, 1));
        assert_eq!(idx.position(10), (2, 4));
    }

    #[test]
    fn nearest_finds_typos_only() {
        assert_eq!(nearest("fro", ["from", "to"]), Some("from"));
        assert_eq!(nearest("sechdule", ["schedule", "watch"]), Some("schedule"));
        assert_eq!(nearest("zzzzzz", ["from", "to"]), None);
    }
}
