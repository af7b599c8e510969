//! `${VAR}`, `${VAR:-default}` and `${secret:VAR}` in pipeline files.

use std::collections::HashMap;

/// Where variables come from: the process environment first, then `.env` beside the file.
#[derive(Debug, Default, Clone)]
pub struct Variables {
    dotenv: HashMap<String, String>,
    overrides: HashMap<String, String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum InterpolateError {
    Missing { name: String },
    Unclosed,
    BadName { name: String },
}

impl Variables {
    pub fn with_dotenv(dotenv: HashMap<String, String>) -> Self {
        Variables {
            dotenv,
            overrides: HashMap::new(),
        }
    }

    /// Values that win over the environment (used by tests and embedded demos).
    pub fn set(&mut self, name: &str, value: &str) {
        self.overrides.insert(name.to_string(), value.to_string());
    }

    pub(crate) fn overrides_iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.overrides.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn get(&self, name: &str) -> Option<String> {
        self.overrides
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
            .or_else(|| self.dotenv.get(name).cloned())
    }

    /// Expand every reference in `input`; secrets are registered for redaction.
    pub fn expand(&self, input: &str) -> Result<String, InterpolateError> {
        if !input.contains('$') {
            return Ok(input.to_string());
        }
        let mut out = String::with_capacity(input.len());
        let mut rest = input;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(stripped) = after.strip_prefix('$') {
                out.push('$');
                rest = stripped;
                continue;
            }
            let Some(body_and_rest) = after.strip_prefix('{') else {
                out.push('$');
                rest = after;
                continue;
            };
            let end = closing_brace(body_and_rest).ok_or(InterpolateError::Unclosed)?;
            let body = &body_and_rest[..end];
            rest = &body_and_rest[end + 1..];
            let (secret, body) = match body.strip_prefix("secret:") {
                Some(b) => (true, b),
                None => (false, body),
            };
            let (name, default) = match body.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (body, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(InterpolateError::BadName {
                    name: name.to_string(),
                });
            }
            let value = match self.get(name) {
                Some(v) => v,
                None => match default {
                    Some(d) => d.to_string(),
                    None => {
                        return Err(InterpolateError::Missing {
                            name: name.to_string(),
                        });
                    }
                },
            };
            if secret || crate::secret::name_looks_secret(name) {
                crate::secret::register(&value);
            }
            crate::secret::register_url_password(&value);
            out.push_str(&value);
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// Where the `}` that closes a `${` is: braces inside (a default holding a
/// template, `${URL:-s3://{{ params.bucket }}}`) are skipped in pairs.
fn closing_brace(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_defaults_escapes_and_reports_missing() {
        let mut v = Variables::default();
        v.set("FG_TEST_A", "alpha");
        assert_eq!(v.expand("x-${FG_TEST_A}-y").unwrap(), "x-alpha-y");
        assert_eq!(
            v.expand("${FG_TEST_NOPE:-file://./d}").unwrap(),
            "file://./d"
        );
        assert_eq!(v.expand("cost $$5 and $x").unwrap(), "cost $5 and $x");
        assert_eq!(
            v.expand("${FG_TEST_NOPE}"),
            Err(InterpolateError::Missing {
                name: "FG_TEST_NOPE".into()
            })
        );
        assert_eq!(v.expand("${FG_TEST_A"), Err(InterpolateError::Unclosed));
        assert_eq!(
            v.expand("${FG_TEST_NOPE:-s3://{{ params.b }}/x}/y")
                .unwrap(),
            "s3://{{ params.b }}/x/y",
            "a default may hold a template"
        );
        assert_eq!(
            v.expand("${FG_TEST_NOPE:-{{ x }}"),
            Err(InterpolateError::Unclosed)
        );
    }

    #[test]
    fn secret_references_are_registered() {
        let mut v = Variables::default();
        v.set("FG_TEST_HOOK_VALUE", "https://hooks.example/abc123");
        let out = v.expand("${secret:FG_TEST_HOOK_VALUE}").unwrap();
        assert_eq!(crate::secret::redact(&out), "***");
    }
}
