//! AWS Secrets Manager: a secret holding a JSON object, fetched whole and handed
//! to a command as environment variables. Every value is registered with the
//! redactor before it is returned, so nothing flowgate prints or keeps shows it,
//! whatever the command prints. Requests are signed with the SDK's own SigV4
//! signer and credential chain (a role assumed through STS when asked); the
//! endpoint is `AWS_ENDPOINT_URL_SECRETS_MANAGER`, else `AWS_ENDPOINT_URL`,
//! else AWS's.

use std::collections::BTreeMap;
use std::time::SystemTime;

use aws_credential_types::provider::ProvideCredentials;

use crate::error::StepError;

/// The secret `id`'s JSON object as name → value (non-string values as JSON
/// text), every value registered as a secret. `role`: a role ARN to assume.
pub async fn fetch(id: &str, role: Option<&str>) -> Result<BTreeMap<String, String>, StepError> {
    let fail = |what: String| {
        StepError::external(format!("secret `{id}` from AWS Secrets Manager: {what}"))
    };
    let conf = crate::aws::config(None, None).await;
    let region = conf
        .region()
        .map(ToString::to_string)
        .unwrap_or_else(|| "us-east-1".into());
    let creds = match role {
        Some(arn) => {
            aws_config::sts::AssumeRoleProvider::builder(arn)
                .session_name("flowgate")
                .configure(&conf)
                .build()
                .await
                .provide_credentials()
                .await
        }
        None => match conf.credentials_provider() {
            Some(p) => p.provide_credentials().await,
            None => return Err(fail("no AWS credentials are configured".into())),
        },
    }
    .map_err(|e| fail(format!("credentials: {}", crate::error::chain(&e))))?;
    let endpoint = std::env::var("AWS_ENDPOINT_URL_SECRETS_MANAGER")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|_| format!("https://secretsmanager.{region}.amazonaws.com"));
    let body = serde_json::to_vec(&serde_json::json!({ "SecretId": id }))
        .map_err(|e| StepError::internal(e.to_string()))?;
    let headers = [
        ("content-type", "application/x-amz-json-1.1"),
        ("x-amz-target", "secretsmanager.GetSecretValue"),
    ];
    let identity = creds.into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(&region)
        .name("secretsmanager")
        .time(SystemTime::now())
        .settings(aws_sigv4::http_request::SigningSettings::default())
        .build()
        .map_err(|e| fail(format!("signing: {e}")))?
        .into();
    let signable = aws_sigv4::http_request::SignableRequest::new(
        "POST",
        &endpoint,
        headers.iter().copied(),
        aws_sigv4::http_request::SignableBody::Bytes(&body),
    )
    .map_err(|e| fail(format!("signing: {e}")))?;
    let (instructions, _) = aws_sigv4::http_request::sign(signable, &params)
        .map_err(|e| fail(format!("signing: {e}")))?
        .into_parts();
    let mut req = reqwest::Client::new().post(&endpoint).body(body.clone());
    for (k, v) in headers.iter().copied().chain(instructions.headers()) {
        req = req.header(k, v);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| fail(crate::error::chain(&e)))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| fail(crate::error::chain(&e)))?;
    if !status.is_success() {
        let error = if status.is_server_error() {
            StepError::external
        } else {
            StepError::user
        };
        return Err(error(format!(
            "secret `{id}` from AWS Secrets Manager: HTTP {status}: {}",
            text.chars().take(300).collect::<String>()
        )));
    }
    let answer: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| fail(format!("an answer that is not JSON: {e}")))?;
    let Some(secret) = answer["SecretString"].as_str() else {
        return Err(StepError::user(format!(
            "secret `{id}` has no SecretString (a binary secret is not read)"
        )));
    };
    // Registered before anything else can show it.
    crate::secret::register(secret);
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(secret).map_err(|_| {
            StepError::user(format!(
                "secret `{id}` is not a JSON object of names and values"
            ))
        })?;
    let mut out = BTreeMap::new();
    for (k, v) in object {
        let v = match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        crate::secret::register(&v);
        out.insert(k, v);
    }
    Ok(out)
}
