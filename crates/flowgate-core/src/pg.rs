//! Connecting to PostgreSQL as libpq users expect, over rustls: the URL's
//! `sslmode` (`disable`, `allow`, `prefer` — the default —, `require`,
//! `verify-ca`, `verify-full`) and `sslrootcert` (a PEM file of CA certificates,
//! or `system` for the machine's store) mean what they mean to `psql`:
//!
//! - `prefer`/`allow`: TLS when the server offers it, plain otherwise;
//! - `require`: TLS or no connection;
//! - neither checks who the server is unless `sslrootcert` is given (then the
//!   chain is checked, as libpq does when it finds a root certificate);
//! - `verify-ca`: the chain must lead to a trusted CA (`sslrootcert`, else the
//!   system store);
//! - `verify-full`: and the certificate must name the host.
//!
//! Both the URL form (`postgres://u@h/db?sslmode=verify-full&sslrootcert=ca.pem`)
//! and the key-value form (`host=h sslmode=require`) are read.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;

pub use tokio_postgres_rustls::MakeRustlsConnect;

/// What is wrong with a connection URL's TLS settings; says what to write instead.
#[derive(Debug, thiserror::Error)]
pub enum PgUrlError {
    #[error("sslmode `{0}` is not one of disable, allow, prefer, require, verify-ca, verify-full")]
    SslMode(String),
    #[error("sslrootcert `{path}`: {reason}")]
    RootCert { path: String, reason: String },
    #[error("`{0}` (a client certificate) is not supported yet; connect with a password")]
    ClientCert(String),
    #[error("invalid connection URL: {0}")]
    Url(String),
    #[error("TLS set-up: {0}")]
    Tls(String),
}

/// Advice to append to a connection error that a certificate check caused.
pub fn advice(message: &str) -> &'static str {
    if message.contains("not valid for name") {
        "; connect by a name the certificate holds (hostaddr= can give the address), \
         or check only the CA with sslmode=verify-ca"
    } else if message.contains("invalid peer certificate") {
        "; the server's certificate did not pass the check sslmode asks for: set sslrootcert \
         to the CA that signed it (or sslmode=require to encrypt without checking)"
    } else {
        ""
    }
}

/// How to check the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Encrypt, but do not check who answers (libpq's `require` without a root file).
    Nothing,
    /// The chain must lead to a trusted CA; any host name.
    Chain,
    /// The chain, and the host name.
    Full,
}

/// The client configuration and TLS connector for `url`.
pub fn connect_params(
    url: &str,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect), PgUrlError> {
    let (rest, mut opts) = take_tls_options(url)?;
    let mut config: tokio_postgres::Config = rest.parse().map_err(|e: tokio_postgres::Error| {
        PgUrlError::Url(crate::secret::redact(&e.to_string()))
    })?;
    let mode = opts.remove("sslmode").unwrap_or_else(|| "prefer".into());
    let root = opts.remove("sslrootcert");
    let (ssl, check) = match mode.as_str() {
        "disable" => (SslMode::Disable, Check::Nothing),
        "allow" | "prefer" | "require" => (
            if mode == "require" {
                SslMode::Require
            } else {
                SslMode::Prefer
            },
            if root.is_some() {
                Check::Chain
            } else {
                Check::Nothing
            },
        ),
        "verify-ca" => (SslMode::Require, Check::Chain),
        "verify-full" => (SslMode::Require, Check::Full),
        other => return Err(PgUrlError::SslMode(other.to_string())),
    };
    config.ssl_mode(ssl);
    let tls = client_config(check, root.as_deref())?;
    Ok((config, MakeRustlsConnect::new(tls)))
}

fn client_config(check: Check, root: Option<&str>) -> Result<rustls::ClientConfig, PgUrlError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PgUrlError::Tls(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::Nothing => Arc::new(Lenient {
            provider,
            chain: None,
        }),
        Check::Chain | Check::Full => {
            let roots = Arc::new(roots(root)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| PgUrlError::Tls(e.to_string()))?;
            if check == Check::Full {
                webpki
            } else {
                Arc::new(Lenient {
                    provider,
                    chain: Some(webpki),
                })
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The CAs to trust: the PEM file `sslrootcert`, or the system's store.
fn roots(root: Option<&str>) -> Result<RootCertStore, PgUrlError> {
    let mut store = RootCertStore::empty();
    let bad = |path: &str, reason: String| PgUrlError::RootCert {
        path: path.to_string(),
        reason,
    };
    match root {
        Some(path) if path != "system" => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(path, e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(path, e.to_string()))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(bad(path, "no CA certificate in it (PEM expected)".into()));
            }
        }
        _ => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(bad(
                    "system",
                    "the system has no CA certificates; set sslrootcert to a PEM file".into(),
                ));
            }
        }
    }
    Ok(store)
}

/// Pull `sslmode`, `sslrootcert` (and the unsupported client-certificate
/// options) out of a connection string, so the rest parses as tokio-postgres
/// expects. Values of these options are not quoted in the key-value form.
fn take_tls_options(
    url: &str,
) -> Result<(String, std::collections::HashMap<String, String>), PgUrlError> {
    const OURS: [&str; 2] = ["sslmode", "sslrootcert"];
    const REFUSED: [&str; 2] = ["sslcert", "sslkey"];
    let mut taken = std::collections::HashMap::new();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let mut parsed = url::Url::parse(url).map_err(|e| PgUrlError::Url(e.to_string()))?;
        let mut kept = Vec::new();
        for (k, v) in parsed.query_pairs() {
            if REFUSED.contains(&k.as_ref()) {
                return Err(PgUrlError::ClientCert(k.into_owned()));
            }
            if OURS.contains(&k.as_ref()) {
                taken.insert(k.into_owned(), v.into_owned());
            } else {
                kept.push((k.into_owned(), v.into_owned()));
            }
        }
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        return Ok((parsed.to_string(), taken));
    }
    let mut kept = Vec::new();
    let mut words = url.split_whitespace().peekable();
    while let Some(word) = words.next() {
        // `key=value`, `key = value` or `key =value`.
        let (key, value) = match word.split_once('=') {
            Some((k, v)) if !v.is_empty() => (k.to_string(), Some(v.to_string())),
            Some((k, _)) => (k.to_string(), None),
            None if words.peek().is_some_and(|w| w.starts_with('=')) => {
                let eq = words.next().unwrap_or_default();
                let v = eq.trim_start_matches('=');
                (word.to_string(), (!v.is_empty()).then(|| v.to_string()))
            }
            None => (word.to_string(), None),
        };
        let ours = OURS.contains(&key.as_str());
        if REFUSED.contains(&key.as_str()) {
            return Err(PgUrlError::ClientCert(key));
        }
        if !ours {
            kept.push(word.to_string());
            continue;
        }
        let value = match value {
            Some(v) => v,
            None => words.next().unwrap_or_default().to_string(),
        };
        taken.insert(key, value.trim_matches('\'').to_string());
    }
    Ok((kept.join(" "), taken))
}

/// libpq's `require` without a root certificate (`chain: None`): encrypted, the
/// server not checked; and `verify-ca` (`chain: Some`): the full WebPKI check
/// except the host name. Handshake signatures are verified either way, so the
/// session key is the certificate holder's.
#[derive(Debug)]
struct Lenient {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(url: &str) -> (String, Vec<(String, String)>) {
        let (rest, opts) = take_tls_options(url).unwrap();
        let mut opts: Vec<_> = opts.into_iter().collect();
        opts.sort();
        (rest, opts)
    }

    #[test]
    fn tls_options_are_taken_out_of_both_forms() {
        assert_eq!(
            taken(
                "postgres://u:p@h:5433/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fca.pem"
            ),
            (
                "postgres://u:p@h:5433/db?application_name=x".to_string(),
                vec![
                    ("sslmode".to_string(), "verify-full".to_string()),
                    ("sslrootcert".to_string(), "/ca.pem".to_string())
                ]
            )
        );
        assert_eq!(
            taken("postgresql://h/db?sslmode=require").0,
            "postgresql://h/db"
        );
        assert_eq!(
            taken("host=h sslmode = verify-ca user=u sslrootcert='/etc/ca.pem' dbname=d"),
            (
                "host=h user=u dbname=d".to_string(),
                vec![
                    ("sslmode".to_string(), "verify-ca".to_string()),
                    ("sslrootcert".to_string(), "/etc/ca.pem".to_string())
                ]
            )
        );
    }

    #[test]
    fn unknown_modes_and_client_certificates_are_refused_with_the_choices() {
        let refused = |url: &str| match connect_params(url) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{url} was accepted"),
        };
        let e = refused("postgres://h/db?sslmode=verify");
        assert!(e.contains("verify-ca, verify-full"), "{e}");
        let e = refused("host=h sslcert=/c.pem");
        assert!(e.contains("not supported"), "{e}");
        let e = refused("postgres://h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem");
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
