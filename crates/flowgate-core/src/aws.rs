//! One AWS SDK configuration per (region, endpoint), loaded once per process:
//! loading reads the environment and profile files and sets up the credential
//! chain, which a trigger pass every second must not redo.

use std::collections::HashMap;
use std::sync::LazyLock;

use aws_config::SdkConfig;

/// (region, endpoint)
type ConfigKey = (String, Option<String>);

static CONFIGS: LazyLock<tokio::sync::Mutex<HashMap<ConfigKey, SdkConfig>>> =
    LazyLock::new(Default::default);

/// The SDK configuration for `region` (default `AWS_REGION`, else us-east-1) and
/// an optional endpoint of an AWS-compatible server.
pub async fn config(region: Option<&str>, endpoint: Option<&str>) -> SdkConfig {
    let region = region
        .map(str::to_string)
        .or_else(|| std::env::var("AWS_REGION").ok())
        .unwrap_or_else(|| "us-east-1".into());
    let key = (region, endpoint.map(str::to_string));
    let mut cache = CONFIGS.lock().await;
    if let Some(c) = cache.get(&key) {
        return c.clone();
    }
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(key.0.clone()));
    if let Some(e) = &key.1 {
        loader = loader.endpoint_url(e);
    }
    let conf = loader.load().await;
    cache.insert(key, conf.clone());
    conf
}
