//! One suite for every object store flowgate opens: local files, memory and a
//! real S3 server (s3s-fs from `scripts/services.sh`).

use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::{ObjectStoreExt, PutPayload};
use tokio::io::AsyncWriteExt;

use super::*;
use crate::error::{Classify, ErrorDomain};

async fn suite(store: StoreHandle) {
    let w = store.writer("the suite").unwrap().clone();
    // Round trip under nested keys.
    for (k, body) in [
        ("a/one.txt", "1"),
        ("a/b/two.txt", "22"),
        ("c/three.txt", "333"),
    ] {
        w.put(
            &store.path(k).unwrap(),
            PutPayload::from(body.as_bytes().to_vec()),
        )
        .await
        .unwrap();
    }
    let got = store
        .reader()
        .get(&store.path("a/b/two.txt").unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], b"22");
    assert_eq!(
        store
            .reader()
            .head(&store.path("c/three.txt").unwrap())
            .await
            .unwrap()
            .size,
        3
    );

    // Listing under a prefix, keys relative to it.
    let base = store.path("a").unwrap();
    let mut keys: Vec<String> = store
        .reader()
        .list(Some(&base))
        .map_ok(|m| StoreHandle::relative_to(&base, &m.location).unwrap())
        .try_collect()
        .await
        .unwrap();
    keys.sort();
    assert_eq!(keys, ["b/two.txt", "one.txt"]);

    // A multipart write (three 5 MiB parts and a tail) reads back identically.
    let big: Vec<u8> = (0..(16 * 1024 * 1024 + 123))
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut out = BufWriter::with_capacity(
        w.clone(),
        store.path("big/blob.bin").unwrap(),
        5 * 1024 * 1024,
    );
    for chunk in big.chunks(1024 * 1024 + 7) {
        out.write_all(chunk).await.unwrap();
    }
    out.shutdown().await.unwrap();
    let mut back = Vec::new();
    let mut s = store
        .reader()
        .get(&store.path("big/blob.bin").unwrap())
        .await
        .unwrap()
        .into_stream();
    while let Some(c) = s.next().await {
        back.extend_from_slice(&c.unwrap());
    }
    assert!(back == big, "multipart object differs after the round trip");

    // A missing object is a user error that retrying cannot fix.
    let err = store
        .reader()
        .get(&store.path("nope/missing.bin").unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.class().domain, ErrorDomain::User, "{err}");
    assert!(!err.class().retriable);

    // Keys cannot leave the store's prefix.
    assert!(store.path("../outside").is_err());
    assert!(store.path("a/\u{1}b").is_err());

    // The same store, read-only, refuses writers.
    let mut ro = store.clone();
    ro.access = Access::Read;
    assert!(
        ro.writer("a step")
            .unwrap_err()
            .to_string()
            .contains("read-only")
    );
}

#[tokio::test]
async fn local_files_pass_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let spec = StoreSpec::at("file://./data/root", Access::ReadWrite);
    let store = StoreHandle::open("local", &spec, dir.path()).unwrap();
    suite(store).await;
    assert!(
        dir.path().join("data/root/a/b/two.txt").is_file(),
        "relative file:// paths start beside the pipeline"
    );
}

#[tokio::test]
async fn memory_passes_the_suite() {
    let spec = StoreSpec::at("memory://conformance/under/prefix", Access::ReadWrite);
    suite(StoreHandle::open("mem", &spec, std::path::Path::new(".")).unwrap()).await;
}

#[tokio::test]
async fn s3_server_passes_the_suite() {
    let (bucket, endpoint) = crate::testing::fresh_s3_bucket();
    let mut spec = StoreSpec::at(&format!("s3://{bucket}/some/prefix"), Access::ReadWrite);
    spec.endpoint = Some(endpoint);
    spec.access_key_id = Some(crate::testing::service_var("FLOWGATE_TEST_S3_ACCESS_KEY"));
    spec.secret_access_key = Some(crate::testing::service_var("FLOWGATE_TEST_S3_SECRET_KEY"));
    let store = StoreHandle::open("s3", &spec, std::path::Path::new(".")).unwrap();
    suite(store).await;
    let root = std::path::PathBuf::from(crate::testing::service_var("FLOWGATE_TEST_S3_ROOT"));
    assert!(
        root.join(&bucket).join("some/prefix/a/b/two.txt").is_file(),
        "the URL's prefix is honoured"
    );
}

#[tokio::test]
async fn wrong_s3_credentials_are_an_external_error() {
    let (bucket, endpoint) = crate::testing::fresh_s3_bucket();
    let mut spec = StoreSpec::at(&format!("s3://{bucket}"), Access::ReadWrite);
    spec.endpoint = Some(endpoint);
    spec.access_key_id = Some("flowgate-test".into());
    spec.secret_access_key = Some("not-the-secret".into());
    let store = StoreHandle::open("s3", &spec, std::path::Path::new(".")).unwrap();
    let err = store
        .writer("x")
        .unwrap()
        .put(&store.path("k").unwrap(), PutPayload::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.class().domain, ErrorDomain::External, "{err}");
    assert!(!crate::secret::redact(&err.to_string()).contains("not-the-secret"));
}
