//! A small HTTPS receiver for the data-egress demo: it demands a client
//! certificate from its own demo CA and stores what is PUT (or POSTed) under a
//! folder, keeping relative paths. Certificates are made on the spot.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::put;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// PEM files written for the demo: the CA, the receiver's own certificate, and a
/// client certificate and key for flowgate.
pub struct DemoTls {
    pub ca_pem: PathBuf,
    pub client_pem: PathBuf,
    pub client_key: PathBuf,
    server: (CertificateDer<'static>, PrivateKeyDer<'static>),
    ca_der: CertificateDer<'static>,
}

/// Make a demo CA, a certificate for 127.0.0.1 and a client certificate under `dir`.
pub fn make_tls(dir: &Path) -> Result<DemoTls> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        SanType,
    };
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "flowgate demo CA");
    let ca_cert = ca.self_signed(&ca_key)?;

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec!["localhost".to_string()])?;
    server
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key)?;

    let client_key = KeyPair::generate()?;
    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client
        .distinguished_name
        .push(DnType::CommonName, "flowgate demo client");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &ca_cert, &ca_key)?;

    let tls = DemoTls {
        ca_pem: dir.join("ca.pem"),
        client_pem: dir.join("client.pem"),
        client_key: dir.join("client.key"),
        server: (
            server_cert.der().clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        ),
        ca_der: ca_cert.der().clone(),
    };
    std::fs::write(&tls.ca_pem, ca_cert.pem())?;
    std::fs::write(&tls.client_pem, client_cert.pem())?;
    std::fs::write(&tls.client_key, client_key.serialize_pem())?;
    Ok(tls)
}

#[derive(Clone)]
struct Inbox {
    root: PathBuf,
}

/// Serve HTTPS on 127.0.0.1 (a free port) until the task is dropped; every
/// request must present a client certificate from the demo CA. Returns the
/// address and the task.
pub async fn start(
    tls: &DemoTls,
    root: PathBuf,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(tls.ca_der.clone())?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![tls.server.0.clone()], tls.server.1.clone_key())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let app = Router::new()
        .route("/inbound/{*path}", put(receive).post(receive))
        .with_state(Inbox { root });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the demo receiver")?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A refused handshake (no or an untrusted certificate) ends here.
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    Ok((addr, task))
}

async fn receive(
    State(inbox): State<Inbox>,
    UrlPath(path): UrlPath<String>,
    _headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    // Keep what arrives inside the inbox.
    if path
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == ".." || s.chars().any(char::is_control))
    {
        return StatusCode::BAD_REQUEST;
    }
    let target = inbox.root.join(&path);
    if let Some(dir) = target.parent()
        && std::fs::create_dir_all(dir).is_err()
    {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    match std::fs::write(&target, &body) {
        Ok(()) => StatusCode::CREATED,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
