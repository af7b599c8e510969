//! Secret values and their redaction.
//!
//! Every value that came from a `${secret:NAME}` reference, from a variable whose name
//! says it is a secret, or from the password part of a URL is registered here. Logs,
//! error texts, run records and `validate` output pass through [`redact`] before they
//! leave the process or reach the state store.

use std::sync::{OnceLock, RwLock};

const MASK: &str = "***";
/// Values this short are too likely to appear by chance to be masked everywhere.
const MIN_SECRET_LEN: usize = 4;

fn registry() -> &'static RwLock<Vec<String>> {
    static REGISTRY: OnceLock<RwLock<Vec<String>>> = OnceLock::new();
    REGISTRY.get_or_init(|| RwLock::new(Vec::new()))
}

/// Remember a value as secret. Longer secrets are replaced first, so a secret that
/// contains another is masked whole.
pub fn register(value: &str) {
    if value.len() < MIN_SECRET_LEN {
        return;
    }
    let mut reg = registry().write().unwrap_or_else(|p| p.into_inner());
    if !reg.iter().any(|v| v == value) {
        reg.push(value.to_string());
        reg.sort_by_key(|v| std::cmp::Reverse(v.len()));
        // URL-encoded forms leak through error messages of HTTP clients.
        let encoded = url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>();
        if encoded != value && !reg.contains(&encoded) {
            reg.push(encoded);
            reg.sort_by_key(|v| std::cmp::Reverse(v.len()));
        }
    }
}

/// Does the variable name say it holds a secret?
pub fn name_looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "API_KEY",
        "PRIVATE_KEY",
        "WEBHOOK",
        "CREDENTIAL",
    ]
    .iter()
    .any(|marker| upper.contains(marker))
}

/// Register the password of a URL (`scheme://user:password@host`) as a secret.
///
/// Read from the text, not through a URL parser: PostgreSQL URLs the `url` crate
/// refuses (`postgres://u:pw@/db?host=/run/pg`, several hosts with ports) still
/// carry a password, and so may a `password=` parameter.
pub fn register_url_password(raw: &str) {
    let Some(parts) = UrlParts::of(raw) else {
        return;
    };
    let (userinfo, query) = (parts.userinfo, parts.query);
    let mut found: Vec<&str> = Vec::new();
    if let Some((_, pw)) = userinfo.and_then(|u| u.split_once(':')) {
        found.push(pw);
    }
    found.extend(
        query
            .split('&')
            .filter_map(|pair| pair.strip_prefix("password="))
            .filter(|v| !v.is_empty()),
    );
    for pw in found {
        register(pw);
        if let Ok(decoded) = percent_decode(pw) {
            register(&decoded);
        }
    }
}

/// A URL's parts, read from the text: also for connection URLs the `url` crate
/// refuses (`postgres://u:pw@/db?host=/run/pg`, several hosts with ports).
pub(crate) struct UrlParts<'a> {
    pub scheme: &'a str,
    /// `user:password`, as written.
    pub userinfo: Option<&'a str>,
    /// Hosts, ports and path: where, without who.
    pub place: &'a str,
    pub query: &'a str,
}

impl<'a> UrlParts<'a> {
    pub(crate) fn of(raw: &'a str) -> Option<UrlParts<'a>> {
        let (scheme, rest) = raw.split_once("://")?;
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (userinfo, place) = match before_query.rsplit_once('@') {
            Some((u, p)) => (Some(u), p),
            None => (None, before_query),
        };
        Some(UrlParts {
            scheme,
            userinfo,
            place,
            query,
        })
    }
}

fn percent_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes: Vec<u8> = url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned().into_bytes())
        .unwrap_or_default();
    String::from_utf8(bytes)
}

/// Replace every registered secret in `text` with `***`.
pub fn redact(text: &str) -> String {
    let reg = registry().read().unwrap_or_else(|p| p.into_inner());
    if reg.is_empty() {
        return text.to_string();
    }
    let mut out = text.to_string();
    for secret in reg.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), MASK);
        }
    }
    out
}

/// A writer that redacts secrets line by line; used under the log subscriber.
pub struct RedactingWriter<W: std::io::Write> {
    inner: W,
}

impl<W: std::io::Write> RedactingWriter<W> {
    pub fn new(inner: W) -> Self {
        RedactingWriter { inner }
    }
}

impl<W: std::io::Write> std::io::Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.inner.write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_secrets_are_masked_longest_first() {
        register("hunter2-secret");
        register("hunter2-secret-and-more");
        assert_eq!(redact("token=hunter2-secret-and-more!"), "token=***!");
        assert_eq!(redact("a hunter2-secret b"), "a *** b");
    }

    #[test]
    fn url_passwords_are_masked() {
        register_url_password("postgres://app:s3cr%2Fet@db:5432/x");
        assert_eq!(
            redact("failed to reach postgres://app:s3cr%2Fet@db"),
            "failed to reach postgres://app:***@db"
        );
        assert_eq!(redact("password s3cr/et"), "password ***");
        // URLs the url crate cannot parse, and a password given as a parameter.
        register_url_password("postgres://app:sock-pw-1@/x?host=/run/postgresql");
        register_url_password("postgres://app:multi-pw-2@h1:5432,h2:5433/x");
        register_url_password("postgres://app@h/x?sslmode=require&password=param-pw-3");
        assert_eq!(redact("sock-pw-1 multi-pw-2 param-pw-3"), "*** *** ***");
    }
}
