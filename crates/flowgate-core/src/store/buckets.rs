//! A store's bucket found by prefix when a run starts (`bucket_prefix`): the
//! environment's bucket is `scraper-prod-7f3a…`, and only its prefix is known.

use std::path::Path;

use crate::config::model::StoreSpec;

use super::StoreError;

/// The bucket of store `name` whose name starts with `prefix`: an S3
/// endpoint's buckets for an `s3://` URL, the folders before the template for
/// a `file://` one. None or several are an error that lists what there is.
pub async fn find(
    name: &str,
    spec: &StoreSpec,
    prefix: &str,
    base: &Path,
) -> Result<String, StoreError> {
    let names = list(name, spec, base).await?;
    // A full name is its own prefix, whatever else starts with it.
    if names.iter().any(|n| n == prefix) {
        return Ok(prefix.to_string());
    }
    let matching: Vec<&String> = names.iter().filter(|n| n.starts_with(prefix)).collect();
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(super::bad_url(
            name,
            spec,
            format!(
                "no bucket starts with `{prefix}` (there are {}); create it, or set the prefix (bucket_prefix)",
                shown(&names)
            ),
        )),
        many => Err(super::bad_url(
            name,
            spec,
            format!(
                "{} buckets start with `{prefix}` ({}); make the prefix longer",
                many.len(),
                shown(&many.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            ),
        )),
    }
}

fn shown(names: &[String]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    let mut s = names
        .iter()
        .take(10)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > 10 {
        s.push_str(&format!(" and {} more", names.len() - 10));
    }
    s
}

async fn list(name: &str, spec: &StoreSpec, base: &Path) -> Result<Vec<String>, StoreError> {
    let before = spec.url.split("{{").next().unwrap_or_default();
    if let Some(rest) = before.strip_prefix("file://") {
        let dir = base.join(rest);
        let entries = std::fs::read_dir(&dir).map_err(|source| StoreError::Dir {
            store: name.to_string(),
            dir: dir.display().to_string(),
            source,
        })?;
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        return Ok(names);
    }
    if before == "s3://" {
        return s3_buckets(name, spec).await;
    }
    Err(super::bad_url(
        name,
        spec,
        "bucket_prefix needs `s3://{{ buckets.NAME }}` or `file://DIR/{{ buckets.NAME }}`".into(),
    ))
}

#[cfg(feature = "aws")]
async fn s3_buckets(name: &str, spec: &StoreSpec) -> Result<Vec<String>, StoreError> {
    let (_, info) = super::open_s3(name, spec, "flowgate-bucket-list", Default::default())?;
    let out = super::server_side::client(&info)
        .await
        .list_buckets()
        .send()
        .await
        .map_err(|e| {
            super::bad_url(
                name,
                spec,
                format!(
                    "listing the buckets to find one by prefix: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                ),
            )
        })?;
    let mut names: Vec<String> = out
        .buckets()
        .iter()
        .filter_map(|b| b.name().map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(not(feature = "aws"))]
async fn s3_buckets(name: &str, spec: &StoreSpec) -> Result<Vec<String>, StoreError> {
    Err(super::bad_url(
        name,
        spec,
        "finding an S3 bucket by prefix needs flowgate built with the `aws` feature".into(),
    ))
}
