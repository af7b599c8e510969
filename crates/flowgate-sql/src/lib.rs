//! SQL transforms: `.sql` models run with DataFusion over tables registered from
//! object-store data (JSON lines or Parquet). No knowledge of pipelines here:
//! flowgate-core decides which objects make which table and where results go.

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef};
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

/// Records of a JSON lines object read to infer its schema (first pass); DuckDB
/// samples as many. flowgate's own landing objects write every key in every
/// record, integers and fractions distinctly, so the sample sees every column
/// and type; a column still Null after it is typed by reading on.
const JSON_INFER_RECORDS: usize = 20_480;

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

fn object_url(store: &str, path: &str) -> Result<ListingTableUrl, String> {
    ListingTableUrl::parse(format!("{}{}", store_url(store), path)).map_err(|e| e.to_string())
}

/// A schema that still lacks types: a Null column, or no columns at all (an
/// empty object).
fn untyped(schema: &Schema) -> bool {
    schema.fields().is_empty()
        || schema
            .fields()
            .iter()
            .any(|f| f.data_type() == &DataType::Null)
}

/// `newer` with what `older` knows: types for its Null columns, integers widened
/// to floats where older objects hold fractions, and columns only older objects
/// have (nullable, after the rest). Any other disagreement keeps the newer type,
/// so reading the older value fails loudly rather than bending it.
fn widen(newer: &Schema, older: &Schema) -> Schema {
    let mut fields: Vec<arrow::datatypes::FieldRef> = newer.fields().iter().cloned().collect();
    for theirs in older.fields() {
        match fields.iter_mut().find(|f| f.name() == theirs.name()) {
            Some(ours) => {
                let wider = match (ours.data_type(), theirs.data_type()) {
                    (DataType::Null, t) => Some(t.clone()),
                    (DataType::Int64, DataType::Float64) => Some(DataType::Float64),
                    _ => None,
                };
                if let Some(t) = wider {
                    *ours = Arc::new(ours.as_ref().clone().with_data_type(t).with_nullable(true));
                }
            }
            None => fields.push(Arc::new(theirs.as_ref().clone().with_nullable(true))),
        }
    }
    Schema::new(fields)
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

    /// The schema of a table over these objects (paths inside the store), newest
    /// first since schemas only grow: the newest object gives it.
    ///
    /// JSON lines carry no schema: it is inferred from an object's first records.
    /// A column null in all of them (an optional field set only in later rows) would
    /// be typed Null and fail on its first value, so then the whole object is read,
    /// and while a column is still Null (an object where it is never set), the
    /// objects before it, until every column has a type.
    pub async fn infer_schema(
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
        let infer = async |path: &String, format: Arc<dyn FileFormat>| {
            let url = object_url(store, path).map_err(terr)?;
            ListingTableConfig::new(url)
                .with_listing_options(ListingOptions::new(format).with_file_extension(""))
                .infer_schema(&self.ctx.state())
                .await
                .map_err(|e| terr(format!("`{path}`: {e}")))?
                .file_schema
                .ok_or_else(|| terr(format!("`{path}`: no schema")))
        };
        let Some(newest) = paths.first() else {
            return Err(terr("no objects".into()));
        };
        if kind == FileKind::Parquet {
            return infer(newest, Arc::new(ParquetFormat::default())).await;
        }
        let json = |records| Arc::new(JsonFormat::default().with_schema_infer_max_rec(records));
        let mut schema = infer(newest, json(JSON_INFER_RECORDS)).await?;
        if untyped(&schema) {
            schema = infer(newest, json(usize::MAX)).await?;
        }
        for older in &paths[1..] {
            if !untyped(&schema) {
                break;
            }
            let theirs = infer(older, json(usize::MAX)).await?;
            schema = Arc::new(widen(&schema, &theirs));
        }
        Ok(schema)
    }

    /// Register `table` over exactly these objects (paths inside the store), read
    /// with `schema` (from [`Session::infer_schema`]).
    pub fn register_files(
        &self,
        table: &str,
        store: &str,
        paths: &[String],
        kind: FileKind,
        schema: SchemaRef,
    ) -> Result<(), TransformError> {
        let terr = |message: String| TransformError::Table {
            table: table.to_string(),
            message,
        };
        let urls = paths
            .iter()
            .map(|p| object_url(store, p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(terr)?;
        let format: Arc<dyn FileFormat> = match kind {
            FileKind::Parquet => Arc::new(ParquetFormat::default()),
            FileKind::JsonLines => Arc::new(JsonFormat::default()),
        };
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(ListingOptions::new(format).with_file_extension(""))
            .with_schema(schema);
        let listing = ListingTable::try_new(config).map_err(|e| terr(e.to_string()))?;
        self.ctx
            .deregister_table(table)
            .map_err(|e| terr(e.to_string()))?;
        self.ctx
            .register_table(table, Arc::new(listing))
            .map_err(|e| terr(e.to_string()))?;
        Ok(())
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

    /// A session over an in-memory store holding these JSON lines objects, with
    /// table `t` over all of them, newest (last given) first.
    async fn table_over(objects: &[(&str, String)]) -> Session {
        let store = Arc::new(InMemory::new());
        for (key, lines) in objects {
            store
                .put(&ObjPath::from(*key), PutPayload::from(lines.clone()))
                .await
                .unwrap();
        }
        let session = Session::new();
        session.register_store("landing", store).unwrap();
        let paths: Vec<String> = objects.iter().rev().map(|o| o.0.to_string()).collect();
        let kind = FileKind::JsonLines;
        let schema = session
            .infer_schema("t", "landing", &paths, kind)
            .await
            .unwrap();
        session
            .register_files("t", "landing", &paths, kind, schema)
            .unwrap();
        session
    }

    async fn int_column(session: &Session, sql: &str) -> Vec<i64> {
        let model = Model {
            name: "m".into(),
            sql: sql.into(),
        };
        let batches: Vec<_> = session
            .run(&model)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    /// An optional column that is null in every early row and set later is read
    /// with its values, not typed Null from the sample and refused on its first value.
    #[tokio::test]
    async fn a_json_column_null_in_every_sampled_row_is_typed_from_its_later_values() {
        let mut lines = String::new();
        for i in 0..JSON_INFER_RECORDS + 10 {
            lines.push_str(&format!("{{\"id\": {i}, \"purchase_order_id\": null}}\n"));
        }
        lines.push_str("{\"id\": -1, \"purchase_order_id\": 42}\n");
        let session = table_over(&[("t/a.jsonl", lines)]).await;
        let sql =
            "SELECT CAST(purchase_order_id AS BIGINT) FROM t WHERE purchase_order_id IS NOT NULL";
        assert_eq!(int_column(&session, sql).await, [42]);
    }

    /// The newest object never sets a column the older ones do (a small batch of
    /// sales transactions has no purchase order): the older values still read,
    /// fractions in older objects are not cut to the newest's integers, and a
    /// column only older objects have is still there.
    #[tokio::test]
    async fn a_json_column_null_in_the_whole_newest_object_is_typed_from_older_ones() {
        let older = "{\"id\": 1, \"purchase_order_id\": 7, \"amount\": 5.5, \"legacy\": 9}\n\
                     {\"id\": 2, \"purchase_order_id\": null, \"amount\": 1.5, \"legacy\": null}\n";
        let newest =
            "{\"id\": 3, \"purchase_order_id\": null, \"amount\": 3, \"note\": \"new column\"}\n";
        let session = table_over(&[
            ("t/1.jsonl", older.to_string()),
            ("t/2.jsonl", newest.to_string()),
        ])
        .await;
        let sql =
            "SELECT CAST(purchase_order_id AS BIGINT) FROM t WHERE purchase_order_id IS NOT NULL";
        assert_eq!(int_column(&session, sql).await, [7]);
        let sql = "SELECT id FROM t WHERE note IS NULL ORDER BY id";
        assert_eq!(int_column(&session, sql).await, [1, 2]);
        let sql = "SELECT CAST(amount * 10 AS BIGINT) FROM t ORDER BY id";
        assert_eq!(int_column(&session, sql).await, [55, 15, 30]);
        let sql = "SELECT CAST(legacy AS BIGINT) FROM t WHERE legacy IS NOT NULL";
        assert_eq!(int_column(&session, sql).await, [9]);
    }

    /// An empty newest object (zero bytes) has no columns; older ones give them.
    #[tokio::test]
    async fn an_empty_newest_object_takes_the_schema_of_older_ones() {
        let session = table_over(&[
            ("t/1.jsonl", "{\"id\": 1}\n".to_string()),
            ("t/2.jsonl", String::new()),
        ])
        .await;
        assert_eq!(int_column(&session, "SELECT id FROM t").await, [1]);
    }
}
