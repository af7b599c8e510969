//! A Google service account's key file (the JSON a Secret mounts) and the
//! bearer tokens flowgate signs with it: self-signed JWTs with the API as
//! their audience, which Google's APIs take without an OAuth round trip
//! (<https://google.aip.dev/auth/4111>). The private key never leaves this
//! module; errors name the file, never its contents.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;

/// How long a signed token is good for (Google's limit is an hour).
const LIFETIME: Duration = Duration::from_secs(3600);
/// A token this close to its end is signed anew.
const MARGIN: Duration = Duration::from_secs(300);

/// A service account, ready to sign.
pub struct ServiceAccount {
    pub email: String,
    key_id: String,
    key: RsaKeyPair,
    file: PathBuf,
    cached: Option<(String, SystemTime)>,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("email", &self.email)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key_id: Option<String>,
    private_key: Option<String>,
}

impl ServiceAccount {
    /// Read a service-account key file (`"type": "service_account"`).
    pub fn from_file(path: &Path) -> Result<ServiceAccount, String> {
        let at = path.display();
        let text = std::fs::read(path).map_err(|e| format!("the credentials file {at}: {e}"))?;
        let k: KeyFile = serde_json::from_slice(&text).map_err(|e| {
            // serde_json's message names a line and column, never the text.
            format!("the credentials file {at} is not a service-account key (JSON): {e}")
        })?;
        if k.kind.as_deref() != Some("service_account") {
            return Err(format!(
                "the credentials file {at} is not a service-account key (its \"type\" is {}); \
                 create one with `gcloud iam service-accounts keys create`",
                k.kind.map_or("missing".into(), |t| format!("\"{t}\""))
            ));
        }
        let missing = |what: &str| format!("the credentials file {at} has no \"{what}\"");
        let email = k.client_email.ok_or_else(|| missing("client_email"))?;
        let pem = k.private_key.ok_or_else(|| missing("private_key"))?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| {
            format!("the credentials file {at}: its \"private_key\" is not a PKCS #8 PEM key")
        })?;
        let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).map_err(|e| {
            format!("the credentials file {at}: its \"private_key\" is not an RSA key ({e})")
        })?;
        Ok(ServiceAccount {
            email,
            key_id: k.private_key_id.unwrap_or_default(),
            key,
            file: path.to_path_buf(),
            cached: None,
        })
    }

    /// A bearer token for `audience` (`https://bigquery.googleapis.com/`),
    /// signed anew when the last one is near its end.
    pub fn token(&mut self, audience: &str) -> Result<String, String> {
        let now = SystemTime::now();
        if let Some((t, until)) = &self.cached
            && now + MARGIN < *until
        {
            return Ok(t.clone());
        }
        let t = self.sign(audience, now)?;
        self.cached = Some((t.clone(), now + LIFETIME));
        Ok(t)
    }

    fn sign(&self, audience: &str, now: SystemTime) -> Result<String, String> {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": self.key_id});
        let claims = serde_json::json!({
            "iss": self.email, "sub": self.email, "aud": audience,
            "iat": iat, "exp": iat + LIFETIME.as_secs(),
        });
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut sig = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signed.as_bytes(),
                &mut sig,
            )
            .map_err(|_| {
                format!(
                    "signing a token with the key of {} failed",
                    self.file.display()
                )
            })?;
        Ok(format!("{signed}.{}", b64(&sig)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

    #[test]
    fn tokens_are_jwts_signed_by_the_key_for_the_audience() {
        let dir = tempfile::tempdir().unwrap();
        let mut sa = ServiceAccount::from_file(&crate::testing::service_account_key(
            dir.path(),
            "loader@p.iam.gserviceaccount.com",
        ))
        .unwrap();
        let aud = "https://bigquery.googleapis.com/";
        let t = sa.token(aud).unwrap();
        assert_eq!(sa.token(aud).unwrap(), t, "reused until near its end");
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let dec = |s: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .unwrap()
        };
        let header: serde_json::Value = serde_json::from_slice(&dec(parts[0])).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&dec(parts[1])).unwrap();
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["kid"], "kid1");
        assert_eq!(claims["iss"], "loader@p.iam.gserviceaccount.com");
        assert_eq!(claims["aud"], aud);
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            3600
        );
        let public = UnparsedPublicKey::new(
            &RSA_PKCS1_2048_8192_SHA256,
            sa.key.public().as_ref().to_vec(),
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        public.verify(signed.as_bytes(), &dec(parts[2])).unwrap();
        assert!(
            public.verify(b"something else", &dec(parts[2])).is_err(),
            "the signature is of the token"
        );
    }

    #[test]
    fn a_wrong_file_says_what_is_wrong_without_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("user.json");
        std::fs::write(
            &f,
            r#"{"type": "authorized_user", "refresh_token": "very-secret"}"#,
        )
        .unwrap();
        let e = ServiceAccount::from_file(&f).unwrap_err();
        assert!(
            e.contains("not a service-account key") && e.contains("\"authorized_user\""),
            "{e}"
        );
        assert!(!e.contains("very-secret"));
        std::fs::write(
            &f,
            r#"{"type": "service_account", "client_email": "a@b", "private_key": "nope very-secret"}"#,
        )
        .unwrap();
        let e = ServiceAccount::from_file(&f).unwrap_err();
        assert!(
            e.contains("not a PKCS #8 PEM key") && !e.contains("very-secret"),
            "{e}"
        );
        let e = ServiceAccount::from_file(&dir.path().join("none.json")).unwrap_err();
        assert!(e.contains("none.json"), "{e}");
    }
}
