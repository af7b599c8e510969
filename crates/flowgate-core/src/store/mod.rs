//! Object stores through the `object_store` crate: `file://`, `s3://`, `gs://`,
//! `az://`, `memory://`. A store carries its access mode; writes to a store that is
//! not writable are refused before any I/O.

use std::collections::HashMap;
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use object_store::path::Path;
use object_store::{ObjectStore, RetryConfig};

use crate::config::model::{Access, StoreSpec};

pub mod buckets;
#[cfg(feature = "aws")]
pub mod server_side;

/// Where an S3 store lives: for the calls object_store does not make (a
/// server-side copy across buckets).
#[derive(Clone, PartialEq, Eq)]
pub struct S3Info {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    pub access_key_id: Option<String>,
    secret_access_key: Option<String>,
}

impl std::fmt::Debug for S3Info {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Info({}, {:?})", self.bucket, self.endpoint)
    }
}

/// Errors opening or using a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store `{store}`: `{url}` is not a URL flowgate can open ({reason})")]
    BadUrl {
        store: String,
        url: String,
        reason: String,
    },
    #[error(
        "store `{store}` is {access}, so {what} cannot write to it; set access = \"read-write\" (or \"write\") on [stores.{store}]"
    )]
    ReadOnly {
        store: String,
        access: &'static str,
        what: String,
    },
    #[error("store `{store}`: {source}")]
    Open {
        store: String,
        source: object_store::Error,
    },
    #[error("store `{store}`: cannot create directory {dir}: {source}")]
    Dir {
        store: String,
        dir: String,
        source: std::io::Error,
    },
}

/// An open store.
#[derive(Clone)]
pub struct StoreHandle {
    pub name: String,
    /// The URL, without credentials.
    pub url: String,
    pub access: Access,
    inner: Arc<dyn ObjectStore>,
    /// Prefix inside the store that the URL points at (`s3://bucket/this/prefix`).
    root: Path,
    /// Set for `s3://` stores.
    pub s3: Option<S3Info>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StoreHandle({} = {}, {:?})",
            self.name, self.url, self.access
        )
    }
}

fn memory_stores() -> &'static Mutex<HashMap<String, Arc<dyn ObjectStore>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

fn access_name(a: Access) -> &'static str {
    match a {
        Access::Read => "read-only",
        Access::Write => "write-only",
        Access::ReadWrite => "read-write",
    }
}

/// Which URL schemes are object stores.
pub fn is_object_store_url(url: &str) -> bool {
    [
        "file://",
        "s3://",
        "s3a://",
        "gs://",
        "az://",
        "abfs://",
        "memory://",
    ]
    .iter()
    .any(|s| url.starts_with(s))
}

fn bad_url(name: &str, spec: &StoreSpec, reason: String) -> StoreError {
    StoreError::BadUrl {
        store: name.to_string(),
        url: crate::secret::redact(&spec.url),
        reason,
    }
}

/// A `file://` store: the directory (relative to `base`), created when the store
/// is written and missing; its canonical URL.
fn open_file(
    name: &str,
    spec: &StoreSpec,
    rest: &str,
    base: &FsPath,
) -> Result<(object_store::local::LocalFileSystem, String), StoreError> {
    let dir = if rest.starts_with('/') {
        FsPath::new(rest).to_path_buf()
    } else {
        base.join(rest)
    };
    if !dir.exists() {
        if spec.access.can_write() {
            std::fs::create_dir_all(&dir).map_err(|source| StoreError::Dir {
                store: name.to_string(),
                dir: dir.display().to_string(),
                source,
            })?;
        } else {
            return Err(bad_url(
                name,
                spec,
                format!("directory {} does not exist", dir.display()),
            ));
        }
    }
    let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|source| {
        StoreError::Open {
            store: name.to_string(),
            source,
        }
    })?;
    let url = format!(
        "file://{}",
        dir.canonicalize().unwrap_or(dir.clone()).display()
    );
    Ok((fs, url))
}

/// An `s3://` store: endpoint, style, region and credentials from the spec, else
/// the environment. Refused when an endpoint is set and no credentials are (the
/// client would ask the EC2 metadata service instead).
fn open_s3(
    name: &str,
    spec: &StoreSpec,
    bucket: &str,
    retry: RetryConfig,
) -> Result<(object_store::aws::AmazonS3, S3Info), StoreError> {
    let mut b = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry);
    let endpoint = spec
        .endpoint
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
    if let Some(ep) = &endpoint {
        b = b.with_endpoint(ep);
        b = b.with_virtual_hosted_style_request(!spec.path_style.unwrap_or(true));
        b = b.with_allow_http(spec.allow_http.unwrap_or(ep.starts_with("http://")));
    } else if let Some(path_style) = spec.path_style {
        b = b.with_virtual_hosted_style_request(!path_style);
    }
    if let Some(allow) = spec.allow_http {
        b = b.with_allow_http(allow);
    }
    let region = spec
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .unwrap_or_else(|| "us-east-1".into());
    b = b.with_region(&region);
    if let Some(k) = &spec.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(s) = &spec.secret_access_key {
        crate::secret::register(s);
        b = b.with_secret_access_key(s);
    }
    if let Ok(s) = std::env::var("AWS_SECRET_ACCESS_KEY") {
        crate::secret::register(&s);
    }
    let has_credentials = spec.access_key_id.is_some()
        || [
            "AWS_ACCESS_KEY_ID",
            "AWS_PROFILE",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if endpoint.is_some() && !has_credentials {
        return Err(bad_url(
            name,
            spec,
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or access_key_id and secret_access_key on the store".into(),
        ));
    }
    let store = b.build().map_err(|source| StoreError::Open {
        store: name.to_string(),
        source,
    })?;
    let info = S3Info {
        bucket: bucket.to_string(),
        path_style: spec.path_style.unwrap_or(endpoint.is_some()),
        endpoint,
        region,
        access_key_id: spec.access_key_id.clone(),
        secret_access_key: spec.secret_access_key.clone(),
    };
    Ok((store, info))
}

impl StoreHandle {
    /// Open a store. `base` is the directory relative `file://` paths start from.
    pub fn open(name: &str, spec: &StoreSpec, base: &FsPath) -> Result<StoreHandle, StoreError> {
        let bad = |reason: String| bad_url(name, spec, reason);
        let open = |source| StoreError::Open {
            store: name.to_string(),
            source,
        };
        let retry = RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        let (scheme, rest) = spec
            .url
            .split_once("://")
            .ok_or_else(|| bad("no scheme".into()))?;
        let mut s3 = None;
        let (inner, root, url): (Arc<dyn ObjectStore>, Path, String) = match scheme {
            "file" => {
                let (fs, url) = open_file(name, spec, rest, base)?;
                (Arc::new(fs), Path::default(), url)
            }
            "memory" => {
                let mut stores = memory_stores().lock().unwrap_or_else(|p| p.into_inner());
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let store = stores
                    .entry(bucket.to_string())
                    .or_insert_with(|| Arc::new(object_store::memory::InMemory::new()))
                    .clone();
                (
                    store,
                    Path::parse(prefix).map_err(|e| bad(e.to_string()))?,
                    format!("memory://{rest}"),
                )
            }
            "s3" | "s3a" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let (store, info) = open_s3(name, spec, bucket, retry)?;
                s3 = Some(info);
                (
                    Arc::new(store),
                    Path::parse(prefix).map_err(|e| bad(e.to_string()))?,
                    format!("s3://{rest}"),
                )
            }
            "gs" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry)
                    .build()
                    .map_err(open)?;
                (
                    Arc::new(store),
                    Path::parse(prefix).map_err(|e| bad(e.to_string()))?,
                    format!("gs://{rest}"),
                )
            }
            "az" | "abfs" => {
                let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let store = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .with_retry(retry)
                    .build()
                    .map_err(open)?;
                (
                    Arc::new(store),
                    Path::parse(prefix).map_err(|e| bad(e.to_string()))?,
                    format!("az://{rest}"),
                )
            }
            other => {
                return Err(bad(format!(
                    "unknown scheme `{other}`; use file, s3, gs, az or memory"
                )));
            }
        };
        Ok(StoreHandle {
            name: name.to_string(),
            url: crate::secret::redact(&url),
            access: spec.access,
            inner,
            root,
            s3,
        })
    }

    /// The store for reading.
    pub fn reader(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// The store for writing, or an error saying why it may not be written.
    pub fn writer(&self, what: &str) -> Result<&Arc<dyn ObjectStore>, StoreError> {
        if self.access.can_write() {
            Ok(&self.inner)
        } else {
            Err(StoreError::ReadOnly {
                store: self.name.clone(),
                access: access_name(self.access),
                what: what.to_string(),
            })
        }
    }

    /// The full path of `relative` (a `/`-separated key) inside this store.
    pub fn path(&self, relative: &str) -> Result<Path, String> {
        let rel = relative.trim_matches('/');
        let mut parts: Vec<String> = self.root.parts().map(|p| p.as_ref().to_string()).collect();
        if !rel.is_empty() {
            for seg in rel.split('/') {
                if seg.is_empty() || seg == "." || seg == ".." || seg.chars().any(char::is_control)
                {
                    return Err(format!(
                        "key `{}` has an empty, `.`, `..` or control-character segment and would leave its prefix",
                        relative.escape_debug()
                    ));
                }
                parts.push(seg.to_string());
            }
        }
        Path::parse(parts.join("/")).map_err(|e| format!("key `{}`: {e}", relative.escape_debug()))
    }

    /// `relative` written as `store:key` for messages.
    pub fn display(&self, relative: &str) -> String {
        format!("{}:{}", self.name, relative)
    }

    /// Every object under `prefix`, with its key relative to it (never empty),
    /// sorted by that key.
    pub async fn list_under(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, object_store::ObjectMeta)>, crate::error::StepError> {
        use futures::TryStreamExt;
        let base = self.path(prefix).map_err(crate::error::StepError::user)?;
        let listed: Vec<object_store::ObjectMeta> = self
            .inner
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|e| {
                crate::error::StepError::from(e)
                    .context(format!("listing {}", self.display(prefix)))
            })?;
        let mut out: Vec<_> = listed
            .into_iter()
            .filter_map(|m| {
                let rel = Self::relative_to(&base, &m.location)?;
                (!rel.is_empty()).then_some((rel, m))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The key of `path` relative to `base` (a path from [`StoreHandle::path`]).
    pub fn relative_to(base: &Path, path: &Path) -> Option<String> {
        path.prefix_match(base).map(|parts| {
            parts
                .map(|p| p.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/")
        })
    }
}

/// `prefix/rest`, or `rest` when the prefix is empty (slashes around the prefix dropped).
pub fn join_key(prefix: &str, rest: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        rest.to_string()
    } else {
        format!("{p}/{rest}")
    }
}

/// What identifies one version of an object: its etag (with its size), or its
/// size and modification time where the store gives no etag.
pub fn version_of(meta: &object_store::ObjectMeta) -> String {
    match &meta.e_tag {
        Some(e) => format!("{e}:{}", meta.size),
        None => format!("{}:{}", meta.size, meta.last_modified.timestamp_millis()),
    }
}

/// Stream `chunks` into `dest` as a multipart upload of `part_size` parts (at
/// most four in flight), so memory stays near `4 × part_size` whatever the
/// object's size; `each` sees every chunk before it is written. On a failure the
/// upload is aborted: no half-written object, no parts left behind. Returns the
/// bytes written.
pub async fn put_stream<S>(
    writer: &Arc<dyn ObjectStore>,
    dest: &Path,
    part_size: usize,
    mut chunks: S,
    mut each: impl FnMut(&bytes::Bytes),
) -> Result<u64, crate::error::StepError>
where
    S: futures::Stream<Item = Result<bytes::Bytes, crate::error::StepError>> + Unpin,
{
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let mut out =
        object_store::buffered::BufWriter::with_capacity(writer.clone(), dest.clone(), part_size)
            .with_max_concurrency(4);
    let mut bytes = 0u64;
    let written: Result<(), crate::error::StepError> = async {
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            each(&chunk);
            bytes += chunk.len() as u64;
            out.write_all(&chunk).await.map_err(io_error)?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = written {
        // Only before shutdown: BufWriter refuses to abort once shutdown has begun.
        let _ = out.abort().await;
        return Err(e);
    }
    out.shutdown().await.map_err(io_error)?;
    Ok(bytes)
}

/// An I/O error from a store writer or reader, classified by the object_store
/// error inside it (retriable unless it says otherwise).
pub fn io_error(e: std::io::Error) -> crate::error::StepError {
    use crate::error::{Classify, ErrorClass, StepError};
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<object_store::Error>())
    {
        Some(os) => StepError::new(os.class(), e.to_string()),
        None => StepError::new(ErrorClass::EXTERNAL_RETRIABLE, e.to_string()),
    }
}

/// A location written as `store:prefix` in pipeline files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub store: String,
    /// A template; empty means the store's root.
    pub prefix: String,
}

impl Location {
    pub fn parse(text: &str) -> Result<Location, String> {
        match text.split_once(':') {
            Some((store, prefix)) if !store.is_empty() && !prefix.starts_with("//") => {
                Ok(Location {
                    store: store.trim().to_string(),
                    prefix: prefix.trim().to_string(),
                })
            }
            _ => Err(format!(
                "`{text}` is not a location; write `store:prefix`, e.g. `landing:{{{{ trigger.prefix }}}}`"
            )),
        }
    }
}

#[cfg(test)]
mod conformance;

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str, access: Access) -> StoreSpec {
        StoreSpec::at(url, access)
    }

    #[test]
    fn read_only_stores_refuse_writers() {
        let s = StoreHandle::open(
            "src",
            &spec("memory://ro-test", Access::Read),
            FsPath::new("."),
        )
        .unwrap();
        let err = s.writer("step `copy`").unwrap_err().to_string();
        assert!(err.contains("store `src` is read-only"), "{err}");
        assert!(err.contains("access = \"read-write\""), "{err}");
    }

    #[test]
    fn paths_stay_inside_the_root() {
        let s = StoreHandle::open(
            "d",
            &spec("memory://paths/base/dir", Access::ReadWrite),
            FsPath::new("."),
        )
        .unwrap();
        assert_eq!(s.path("a/b.txt").unwrap().as_ref(), "base/dir/a/b.txt");
        assert!(s.path("../etc/passwd").is_err());
        assert!(s.path("a//b").is_err());
        let base = s.path("").unwrap();
        assert_eq!(
            StoreHandle::relative_to(&base, &s.path("x/y").unwrap()).as_deref(),
            Some("x/y")
        );
    }

    #[test]
    fn locations_parse() {
        assert_eq!(
            Location::parse("landing:a/{{ x }}").unwrap(),
            Location {
                store: "landing".into(),
                prefix: "a/{{ x }}".into()
            }
        );
        assert!(Location::parse("s3://bucket/x").is_err());
        assert!(Location::parse("nocolon").is_err());
    }
}
