//! Connecting to PostgreSQL as libpq users expect, over rustls: the URL's
//! `sslmode` (`disable`, `allow`, `prefer` — the default —, `require`,
//! `verify-ca`, `verify-full`) and `sslrootcert` (a PEM file of CA certificates,
//! or `system` for the machine's store) mean what they mean to `psql`:
//!
//! - `prefer`/`allow`: TLS when the server offers it, plain otherwise;
//! - `require`: TLS or no connection;
//! - neither checks who the server is unless a root certificate is given
//!   (`sslrootcert`, or libpq's default `~/.postgresql/root.crt` when it exists):
//!   then the chain is checked, as libpq does;
//! - `verify-ca`: the chain must lead to the root certificate;
//! - `verify-full`: and the certificate must name the host.
//!
//! As in libpq, `verify-ca`/`verify-full` without a root certificate is an error,
//! and `sslrootcert=system` makes `verify-full` the default and refuses weaker
//! modes (any public certificate would pass a check without the name).
//! Unlike libpq, a TLS handshake that fails under `prefer`/`allow` is not retried
//! in plain text.
//!
//! Only the URL form is read (`postgres://u@h/db?sslmode=verify-full&sslrootcert=ca.pem`);
//! its other parameters reach tokio-postgres exactly as written.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

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
    #[error(
        "sslmode={0} checks the server's certificate, but no CA is given: set sslrootcert to \
         the CA's PEM file (~/.postgresql/root.crt is read when it exists), or \
         sslrootcert=system with sslmode=verify-full, or sslmode=require to encrypt without checking"
    )]
    NoRoot(String),
    #[error(
        "sslrootcert=system needs sslmode=verify-full (the default with it): any publicly \
         trusted certificate would pass sslmode={0}"
    )]
    SystemRoots(String),
    #[error("TLS set-up: {0}")]
    Tls(String),
}

/// Advice to append to a connection error that a certificate check caused,
/// found by the rustls error in its chain of causes (never by its text).
pub fn advice(e: &(dyn std::error::Error + 'static)) -> &'static str {
    use rustls::CertificateError as C;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let tls = c.downcast_ref::<rustls::Error>().or_else(|| {
            c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        match tls {
            Some(rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            )) => {
                return "; connect by a name the certificate holds (hostaddr= can give the address), \
                        or check only the CA with sslmode=verify-ca";
            }
            Some(rustls::Error::InvalidCertificate(_)) => {
                return "; the server's certificate did not pass the check sslmode asks for: set sslrootcert \
                        to the CA that signed it (or sslmode=require to encrypt without checking)";
            }
            _ => cause = c.source(),
        }
    }
    ""
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

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the database URL: {0}")]
    Url(#[from] PgUrlError),
    #[error(transparent)]
    Connect(#[from] tokio_postgres::Error),
}

/// A client for `url` (its TLS options honoured); the connection runs on a task
/// of its own, logged (as `what`) when it ends in an error.
pub async fn connect(
    url: &str,
    what: &'static str,
) -> Result<tokio_postgres::Client, ConnectError> {
    let (config, tls) = connect_params(url)?;
    let (client, conn) = config.connect(tls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "{what} connection closed");
        }
    });
    Ok(client)
}

/// Arbitrary constant: the advisory lock under which flowgate creates its own
/// tables (the state store's migrations have their own).
const CREATE_LOCK: i64 = 0x666c_6f77_6764_646c;

/// Run `ddl` (`CREATE … IF NOT EXISTS` statements) so that instances doing it
/// at the same moment all succeed. PostgreSQL's IF NOT EXISTS does not hold
/// against a concurrent creator: the loser gets "type … already exists" or a
/// unique violation in the catalog. One simple query is one transaction, so
/// the advisory lock taken first serialises the creators until each commits.
pub async fn create_if_absent(
    client: &tokio_postgres::Client,
    ddl: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "SELECT pg_advisory_xact_lock({CREATE_LOCK}); {ddl}"
        ))
        .await
}

/// The client configuration and TLS connector for `url`.
pub fn connect_params(url: &str) -> Result<(tokio_postgres::Config, Connector), PgUrlError> {
    let (rest, mut opts) = take_tls_options(url)?;
    let mut config: tokio_postgres::Config = rest.parse().map_err(|e: tokio_postgres::Error| {
        PgUrlError::Url(crate::secret::redact(&e.to_string()))
    })?;
    let default_root = std::env::var_os("HOME")
        .map(|h| std::path::Path::new(&h).join(".postgresql/root.crt"))
        .filter(|p| p.is_file())
        .map(|p| p.to_string_lossy().into_owned());
    let (mode, root) = mode_and_root(
        opts.remove("sslmode"),
        opts.remove("sslrootcert"),
        default_root,
    )?;
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
    Ok((config, Connector(MakeRustlsConnect::new(tls))))
}

/// The sslmode and root certificate libpq would use, or why it would not connect.
fn mode_and_root(
    mode: Option<String>,
    root: Option<String>,
    default_root: Option<String>,
) -> Result<(String, Option<String>), PgUrlError> {
    let system = root.as_deref() == Some("system");
    let mode = mode.unwrap_or_else(|| if system { "verify-full" } else { "prefer" }.into());
    if system && mode != "verify-full" {
        return Err(PgUrlError::SystemRoots(mode));
    }
    let root = root.or(default_root);
    if root.is_none() && (mode == "verify-ca" || mode == "verify-full") {
        return Err(PgUrlError::NoRoot(mode));
    }
    Ok((mode, root))
}

/// rustls's connector, usable over a Unix socket too: tokio-postgres asks for a
/// connector with an empty host name there (and never starts TLS on a socket),
/// which rustls would refuse as a server name.
#[derive(Clone)]
pub struct Connector(MakeRustlsConnect);

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, hostname: &str) -> Result<Self::TlsConnect, Self::Error> {
        let name = if hostname.is_empty() {
            "localhost"
        } else {
            hostname
        };
        MakeTlsConnect::<S>::make_tls_connect(&mut self.0, name)
    }
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
            let roots = Arc::new(roots(root.unwrap_or("system"))?);
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
fn roots(root: &str) -> Result<RootCertStore, PgUrlError> {
    let mut store = RootCertStore::empty();
    let bad = |path: &str, reason: String| PgUrlError::RootCert {
        path: path.to_string(),
        reason,
    };
    match root {
        path if path != "system" => {
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
/// options) out of a connection URL, so the rest parses as tokio-postgres
/// expects. The other parameters are kept byte for byte: tokio-postgres
/// percent-decodes them itself (and does not read `+` as a space).
fn take_tls_options(
    url: &str,
) -> Result<(String, std::collections::HashMap<String, String>), PgUrlError> {
    const OURS: [&str; 2] = ["sslmode", "sslrootcert"];
    const REFUSED: [&str; 2] = ["sslcert", "sslkey"];
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(PgUrlError::Url(
            "write it as postgres://user@host:port/database?sslmode=…".into(),
        ));
    }
    let mut taken = std::collections::HashMap::new();
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), taken));
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|e| PgUrlError::Url(format!("a query parameter is not UTF-8: {e}")))
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k)?;
        if REFUSED.contains(&key.as_str()) {
            return Err(PgUrlError::ClientCert(key));
        }
        if OURS.contains(&key.as_str()) {
            taken.insert(key, decode(v)?);
        } else {
            kept.push(pair);
        }
    }
    Ok(if kept.is_empty() {
        (base.to_string(), taken)
    } else {
        (format!("{base}?{}", kept.join("&")), taken)
    })
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
    fn tls_options_are_taken_out_and_the_rest_is_kept_as_written() {
        assert_eq!(
            taken(
                "postgres://u:p@h:5433/db?sslmode=verify-full&application_name=my%20app&sslrootcert=%2Fca.pem&options=-c%20search_path%3Dx"
            ),
            (
                "postgres://u:p@h:5433/db?application_name=my%20app&options=-c%20search_path%3Dx"
                    .to_string(),
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
        // Several hosts with ports, and a socket directory: tokio-postgres reads them.
        let multi = "postgres://u@h1:5432,h2:5433/db?target_session_attrs=read-write";
        assert_eq!(taken(multi).0, multi);
        let (rest, _) = taken("postgres://u@/db?host=%2Fvar%2Frun%2Fpostgresql&sslmode=disable");
        assert_eq!(rest, "postgres://u@/db?host=%2Fvar%2Frun%2Fpostgresql");
        assert!(rest.parse::<tokio_postgres::Config>().is_ok());
    }

    #[test]
    fn unknown_modes_and_client_certificates_are_refused_with_the_choices() {
        let refused = |url: &str| match connect_params(url) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{url} was accepted"),
        };
        let e = refused("postgres://h/db?sslmode=verify");
        assert!(e.contains("verify-ca, verify-full"), "{e}");
        let e = refused("postgres://h/db?sslcert=/c.pem");
        assert!(e.contains("not supported"), "{e}");
        let e = refused("postgres://h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem");
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let e = refused("host=h password=secret sslmode=require");
        assert!(e.contains("postgres://") && !e.contains("secret"), "{e}");
    }

    /// A check of the chain without the host name is only as strong as the CAs
    /// trusted: with the system's, any public certificate would pass.
    #[test]
    fn modes_need_the_root_certificate_libpq_would_need() {
        let s = |v: &str| Some(v.to_string());
        let resolved = |mode: Option<&str>, root: Option<&str>, default: Option<&str>| {
            mode_and_root(
                mode.map(Into::into),
                root.map(Into::into),
                default.map(Into::into),
            )
            .map_err(|e| e.to_string())
        };
        assert_eq!(resolved(None, None, None).unwrap(), ("prefer".into(), None));
        assert_eq!(
            resolved(None, Some("system"), None).unwrap(),
            ("verify-full".into(), s("system"))
        );
        for weaker in ["verify-ca", "require", "prefer"] {
            let e = resolved(Some(weaker), Some("system"), None).unwrap_err();
            assert!(e.contains("needs sslmode=verify-full"), "{e}");
        }
        for checking in ["verify-ca", "verify-full"] {
            let e = resolved(Some(checking), None, None).unwrap_err();
            assert!(
                e.contains("no CA is given") && e.contains("sslrootcert"),
                "{e}"
            );
            assert_eq!(
                resolved(Some(checking), None, Some("/home/u/.postgresql/root.crt")).unwrap(),
                (checking.into(), s("/home/u/.postgresql/root.crt"))
            );
        }
        // A given file wins over the default one.
        assert_eq!(
            resolved(Some("require"), Some("/ca.pem"), Some("/d.crt"))
                .unwrap()
                .1,
            s("/ca.pem")
        );
    }
}
