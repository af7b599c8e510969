//! The built-in KV of the state store (SQLite or PostgreSQL), as a [`KvStore`]:
//! it keeps every revision until `flowgate state prune` drops old ones.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{History, KvEntry, KvError, KvStore};
use crate::state::StateStore;

/// Revisions read at once from the built-in KV's history.
const HISTORY_LIMIT: usize = 10_000;

pub struct Builtin {
    state: Arc<dyn StateStore>,
}

impl Builtin {
    pub fn new(state: Arc<dyn StateStore>) -> Self {
        Builtin { state }
    }
}

fn failed(e: crate::state::StateError) -> KvError {
    KvError::Unavailable {
        store: "the state store's KV".into(),
        message: e.to_string(),
    }
}

#[async_trait]
impl KvStore for Builtin {
    fn describe(&self) -> String {
        "the state store's KV".into()
    }

    async fn get(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        self.state.kv_get(key).await.map_err(failed)
    }

    async fn set(&self, key: &str, value: &str) -> Result<i64, KvError> {
        self.state.kv_set(key, value).await.map_err(failed)
    }

    async fn history(&self, key: &str, after: i64) -> Result<History, KvError> {
        let seen = self
            .state
            .kv_history(key, after, HISTORY_LIMIT)
            .await
            .map_err(failed)?;
        Ok(History::Complete(seen))
    }

    async fn wait(
        &self,
        key: &str,
        after: i64,
        timeout: Duration,
    ) -> Result<Option<KvEntry>, KvError> {
        crate::state::kv_wait(self.state.as_ref(), key, after, timeout)
            .await
            .map_err(failed)
    }
}
