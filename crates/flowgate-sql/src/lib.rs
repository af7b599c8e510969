//! SQL transforms: `.sql` models run with DataFusion over tables registered from
//! object-store data (JSON lines or Parquet). No knowledge of pipelines here:
//! flowgate-core decides which objects make which table and where results go.

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::ObjectStore;

/// Records of a JSON lines object read to infer its schema (first pass).
const JSON_INFER_RECORDS: usize = 100_000;

/// Errors of a transform.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("model `{model}`: {message}")]
    Model { model: String, message: String },
    #[error("table `{table}`: {message}")]
    Table { table: String, message: String },
    #[error("models directory {dir}: {message}")]
    Models { dir: String, message: String },
}

/// One model: a file `NAME.sql` whose query produces the table NAME.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub sql: String,
}

/// Read every `*.sql` in `dir`, sorted by name.
pub fn load_models(dir: &Path) -> Result<Vec<Model>, TransformError> {
    let err = |message: String| TransformError::Models {
        dir: dir.display().to_string(),
        message,
    };
    let mut models = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| err(e.to_string()))? {
        let path = entry.map_err(|e| err(e.to_string()))?.path();
        if path.extension().is_some_and(|e| e == "sql") {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let sql = std::fs::read_to_string(&path)
                .map_err(|e| err(format!("{}: {e}", path.display())))?;
            models.push(Model { name, sql });
        }
    }
    if models.is_empty() {
        return Err(err("has no .sql models".into()));
    }
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(models)
}

/// The kind of data files of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    JsonLines,
    Parquet,
}

/// A DataFusion session with flowgate's stores registered.
pub struct Session {
    ctx: SessionContext,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

fn store_url(store: &str) -> String {
    format!("flowgate://{store}/")
}

impl Session {
    pub fn new() -> Session {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_batch_size(8192);
        Session {
            ctx: SessionContext::new_with_config(config),
        }
    }

    /// Make `store` readable as `flowgate://NAME/…`.
    pub fn register_store(
        &self,
        name: &str,
        store: Arc<dyn ObjectStore>,
    ) -> Result<(), TransformError> {
        let url = url::Url::parse(&store_url(name)).map_err(|e| TransformError::Table {
            table: name.to_string(),
            message: e.to_string(),
        })?;
        self.ctx.register_object_store(&url, store);
        Ok(())
    }

    /// Register `table` over exactly these objects (paths inside the store). The
    /// first path gives the schema: pass the newest first, since schemas only grow.
    pub async fn register_files(
        &self,
        table: &str,
        store: &str,
        paths: &[String],
        kind: FileKind,
    ) -> Result<SchemaRef, TransformError> {
        let terr = |message: String| TransformError::Table {
            table: table.to_string(),
            message,
        };
        let urls = paths
            .iter()
            .map(|p| ListingTableUrl::parse(format!("{}{}", store_url(store), p)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| terr(e.to_string()))?;
        let infer = async |format: Arc<dyn FileFormat>| {
            ListingTableConfig::new_with_multi_paths(urls.clone())
                .with_listing_options(ListingOptions::new(format).with_file_extension(""))
                .infer_schema(&self.ctx.state())
                .await
                .map_err(|e| terr(e.to_string()))
        };
        let config = match kind {
            FileKind::Parquet => infer(Arc::new(ParquetFormat::default())).await?,
            FileKind::JsonLines => {
                // JSON lines carry no schema: it is inferred from the first
                // records. A column that is null in all of them (an optional field
                // set only in later rows) would be typed Null and fail on its first
                // value, so then the whole object is read to infer it.
                let sampled = infer(Arc::new(
                    JsonFormat::default().with_schema_infer_max_rec(JSON_INFER_RECORDS),
                ))
                .await?;
                let all_null = sampled.file_schema.as_ref().is_some_and(|s| {
                    s.fields()
                        .iter()
                        .any(|f| f.data_type() == &arrow::datatypes::DataType::Null)
                });
                if all_null {
                    infer(Arc::new(
                        JsonFormat::default().with_schema_infer_max_rec(usize::MAX),
                    ))
                    .await?
                } else {
                    sampled
                }
            }
        };
        let listing = ListingTable::try_new(config).map_err(|e| terr(e.to_string()))?;
        let schema = datafusion::datasource::TableProvider::schema(&listing);
        self.ctx
            .deregister_table(table)
            .map_err(|e| terr(e.to_string()))?;
        self.ctx
            .register_table(table, Arc::new(listing))
            .map_err(|e| terr(e.to_string()))?;
        Ok(schema)
    }

    /// Register an empty `table` with `schema` (no new objects this run).
    pub fn register_empty(&self, table: &str, schema: SchemaRef) -> Result<(), TransformError> {
        let terr = |message: String| TransformError::Table {
            table: table.to_string(),
            message,
        };
        let mem = MemTable::try_new(schema, vec![vec![]]).map_err(|e| terr(e.to_string()))?;
        self.ctx
            .deregister_table(table)
            .map_err(|e| terr(e.to_string()))?;
        self.ctx
            .register_table(table, Arc::new(mem))
            .map_err(|e| terr(e.to_string()))?;
        Ok(())
    }

    /// Plan and start a model; its result streams in batches.
    pub async fn run(&self, model: &Model) -> Result<SendableRecordBatchStream, TransformError> {
        let merr = |message: String| TransformError::Model {
            model: model.name.clone(),
            message,
        };
        let df = self
            .ctx
            .sql(&model.sql)
            .await
            .map_err(|e| merr(e.to_string()))?;
        df.execute_stream().await.map_err(|e| merr(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::{ObjectStoreExt, PutPayload, memory::InMemory, path::Path as ObjPath};

    /// An optional column that is null in every early row and set later is read
    /// with its values, not typed Null from the sample and refused on its first value.
    #[tokio::test]
    async fn a_json_column_null_in_every_sampled_row_is_typed_from_its_later_values() {
        let store = Arc::new(InMemory::new());
        let mut lines = String::new();
        for i in 0..JSON_INFER_RECORDS + 10 {
            lines.push_str(&format!("{{\"id\": {i}, \"purchase_order_id\": null}}\n"));
        }
        lines.push_str("{\"id\": -1, \"purchase_order_id\": 42}\n");
        store
            .put(&ObjPath::from("t/a.jsonl"), PutPayload::from(lines))
            .await
            .unwrap();
        let session = Session::new();
        session.register_store("landing", store).unwrap();
        session
            .register_files(
                "t",
                "landing",
                &["t/a.jsonl".to_string()],
                FileKind::JsonLines,
            )
            .await
            .unwrap();
        let model = Model {
            name: "m".into(),
            sql: "SELECT CAST(purchase_order_id AS BIGINT) AS p FROM t WHERE purchase_order_id IS NOT NULL".into(),
        };
        let batches: Vec<_> = session
            .run(&model)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let values: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(values, [42]);
    }
}
