//! Writing Arrow batches to an object store as JSON lines (optionally gzip or
//! zstd) or Parquet, streaming: memory stays around one batch plus the upload's
//! part buffer, whatever the size of the object.

use std::io::Write;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use object_store::ObjectStore;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tokio::io::AsyncWriteExt;

use crate::error::{ErrorClass, StepError};

/// An output format.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
pub enum Format {
    #[serde(rename = "jsonl")]
    Jsonl,
    #[serde(rename = "jsonl.gz")]
    JsonlGz,
    #[serde(rename = "jsonl.zst")]
    JsonlZst,
    #[serde(rename = "parquet")]
    Parquet,
}

impl Format {
    /// The format a key's extension names.
    pub fn from_key(key: &str) -> Option<Format> {
        let k = key.to_ascii_lowercase();
        if k.ends_with(".jsonl.gz") || k.ends_with(".json.gz") {
            Some(Format::JsonlGz)
        } else if k.ends_with(".jsonl.zst") || k.ends_with(".json.zst") {
            Some(Format::JsonlZst)
        } else if k.ends_with(".jsonl") || k.ends_with(".json") || k.ends_with(".ndjson") {
            Some(Format::Jsonl)
        } else if k.ends_with(".parquet") {
            Some(Format::Parquet)
        } else {
            None
        }
    }
}

enum Compressor {
    None(Vec<u8>),
    Gz(flate2::write::GzEncoder<Vec<u8>>),
    Zst(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Compressor {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Compressor::None(v) => Write::write_all(v, data),
            Compressor::Gz(e) => Write::write_all(e, data),
            Compressor::Zst(e) => Write::write_all(e, data),
        }
    }
    /// Compressed bytes produced so far (taken out of the buffer).
    fn take(&mut self) -> Vec<u8> {
        match self {
            Compressor::None(v) => std::mem::take(v),
            Compressor::Gz(e) => std::mem::take(e.get_mut()),
            Compressor::Zst(e) => std::mem::take(e.get_mut()),
        }
    }
    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Compressor::None(v) => Ok(v),
            Compressor::Gz(e) => e.finish(),
            Compressor::Zst(e) => e.finish(),
        }
    }
}

#[allow(
    clippy::large_enum_variant,
    reason = "one writer per object; sizes vary with features"
)]
enum Inner {
    Json { out: BufWriter, comp: Compressor },
    Parquet(AsyncArrowWriter<BufWriter>),
}

/// A streaming writer of batches to one object.
pub struct BatchWriter {
    inner: Inner,
    pub rows: u64,
    pub bytes: u64,
}

fn io(e: impl std::fmt::Display) -> StepError {
    StepError::new(ErrorClass::EXTERNAL_RETRIABLE, e.to_string())
}

impl BatchWriter {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        path: Path,
        format: Format,
        schema: arrow::datatypes::SchemaRef,
        part_size: usize,
    ) -> Result<BatchWriter, StepError> {
        let out = BufWriter::with_capacity(store, path, part_size).with_max_concurrency(4);
        let inner = match format {
            Format::Parquet => {
                // zstd 1 compresses about as well as 3 here at half the cost; a
                // dictionary stops at 128 KiB, so a column of unique values (keys,
                // timestamps) soon falls back to plain encoding instead of hashing
                // every value.
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).map_err(io)?))
                    .set_dictionary_page_size_limit(128 * 1024)
                    .set_max_row_group_row_count(Some(256 * 1024))
                    .build();
                Inner::Parquet(AsyncArrowWriter::try_new(out, schema, Some(props)).map_err(io)?)
            }
            Format::Jsonl => Inner::Json {
                out,
                comp: Compressor::None(Vec::new()),
            },
            Format::JsonlGz => Inner::Json {
                out,
                comp: Compressor::Gz(flate2::write::GzEncoder::new(
                    Vec::new(),
                    flate2::Compression::fast(),
                )),
            },
            Format::JsonlZst => Inner::Json {
                out,
                comp: Compressor::Zst(
                    zstd::stream::write::Encoder::new(Vec::new(), 3).map_err(io)?,
                ),
            },
        };
        Ok(BatchWriter {
            inner,
            rows: 0,
            bytes: 0,
        })
    }

    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), StepError> {
        self.rows += batch.num_rows() as u64;
        match &mut self.inner {
            Inner::Parquet(w) => w.write(batch).await.map_err(io)?,
            Inner::Json { out, comp } => {
                // Explicit nulls: a column that is NULL in every row must still be there.
                let mut lines = arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, arrow::json::writer::LineDelimited>(Vec::new());
                lines
                    .write(batch)
                    .map_err(|e| StepError::internal(e.to_string()))?;
                lines
                    .finish()
                    .map_err(|e| StepError::internal(e.to_string()))?;
                comp.write(&lines.into_inner()).map_err(io)?;
                let chunk = comp.take();
                self.bytes += chunk.len() as u64;
                out.write_all(&chunk).await.map_err(io)?;
            }
        }
        Ok(())
    }

    /// Complete the object: once this returns, the object is durable and whole.
    pub async fn finish(self) -> Result<u64, StepError> {
        match self.inner {
            Inner::Parquet(w) => {
                let meta = w.close().await.map_err(io)?;
                // Data bytes (compressed row groups; the small footer aside).
                Ok(meta
                    .row_groups()
                    .iter()
                    .map(|rg| u64::try_from(rg.compressed_size()).unwrap_or(0))
                    .sum())
            }
            Inner::Json { mut out, comp } => {
                let rest = comp.finish().map_err(io)?;
                out.write_all(&rest).await.map_err(io)?;
                out.shutdown().await.map_err(io)?;
                Ok(self.bytes + rest.len() as u64)
            }
        }
    }

    /// Give up: nothing becomes visible.
    pub async fn abort(self) {
        match self.inner {
            Inner::Json { mut out, .. } => {
                let _ = out.abort().await;
            }
            Inner::Parquet(w) => drop(w),
        }
    }
}

/// A writer that creates its object at the first non-empty batch: no rows, no
/// object. Until then nothing touches the store.
pub struct LazyWriter {
    store: Arc<dyn ObjectStore>,
    path: Path,
    format: Format,
    part_size: usize,
    inner: Option<BatchWriter>,
    schema: Option<arrow::datatypes::SchemaRef>,
}

impl LazyWriter {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        path: Path,
        format: Format,
        part_size: usize,
    ) -> LazyWriter {
        LazyWriter {
            store,
            path,
            format,
            part_size,
            inner: None,
            schema: None,
        }
    }

    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), StepError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.inner.is_none() {
            let w = BatchWriter::new(
                self.store.clone(),
                self.path.clone(),
                self.format,
                batch.schema(),
                self.part_size,
            )?;
            self.inner = Some(w);
            self.schema = Some(batch.schema());
        }
        match self.inner.as_mut() {
            Some(w) => w.write(batch).await,
            None => Ok(()),
        }
    }

    /// `finish` will write an object.
    pub fn started(&self) -> bool {
        self.inner.is_some()
    }

    /// Write the object even if no batch had rows: an empty object of `schema`
    /// (a result that is empty now is news, e.g. for a table that is replaced).
    pub fn keep_when_empty(
        &mut self,
        schema: arrow::datatypes::SchemaRef,
    ) -> Result<(), StepError> {
        if self.inner.is_none() {
            self.inner = Some(BatchWriter::new(
                self.store.clone(),
                self.path.clone(),
                self.format,
                schema.clone(),
                self.part_size,
            )?);
            self.schema = Some(schema);
        }
        Ok(())
    }

    /// Complete the object: (rows, bytes), or `None` when there was nothing to write.
    /// A JSON-lines object gets its Arrow schema beside it first (see
    /// [`schema_path`]), so a reader takes its columns and types from it.
    pub async fn finish(self) -> Result<Option<(u64, u64)>, StepError> {
        use object_store::ObjectStoreExt;
        if let (Some(schema), true) = (&self.schema, self.format != Format::Parquet) {
            self.store
                .put(
                    &schema_path(&self.path),
                    object_store::PutPayload::from(encode_schema(schema)),
                )
                .await
                .map_err(|e| StepError::from(e).context("writing the object's schema"))?;
        }
        match self.inner {
            Some(w) => {
                let rows = w.rows;
                Ok(Some((rows, w.finish().await?)))
            }
            None => Ok(None),
        }
    }

    pub async fn abort(self) {
        if let Some(w) = self.inner {
            w.abort().await;
        }
    }
}

/// Where the Arrow schema of a JSON-lines object flowgate wrote is kept: beside
/// it, as `<key>.schema` (a name no input listing takes for data).
pub fn schema_path(object: &Path) -> Path {
    Path::from(format!("{object}.schema"))
}

/// An Arrow schema as JSON: each field's name, type (as Arrow prints it) and nullability.
pub fn encode_schema(schema: &arrow::datatypes::Schema) -> Vec<u8> {
    let fields: Vec<serde_json::Value> = schema
        .fields()
        .iter()
        .map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string(), "nullable": f.is_nullable()}))
        .collect();
    serde_json::to_vec(&serde_json::json!({ "fields": fields })).unwrap_or_default()
}

/// The schema [`encode_schema`] wrote.
pub fn decode_schema(bytes: &[u8]) -> Result<arrow::datatypes::Schema, String> {
    #[derive(serde::Deserialize)]
    struct F {
        name: String,
        #[serde(rename = "type")]
        data_type: String,
        nullable: bool,
    }
    #[derive(serde::Deserialize)]
    struct S {
        fields: Vec<F>,
    }
    let s: S = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let fields = s
        .fields
        .into_iter()
        .map(|f| {
            let dt: arrow::datatypes::DataType = f
                .data_type
                .parse()
                .map_err(|e| format!("field `{}`: {e}", f.name))?;
            Ok(arrow::datatypes::Field::new(f.name, dt, f.nullable))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(arrow::datatypes::Schema::new(fields))
}

/// The schema of a JSON-lines object: the one recorded beside it when flowgate
/// wrote it, else inferred from every line of it (a key first set on the last
/// line still becomes a column; integers and floats in one column are floats).
async fn json_schema_of(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    format: Format,
) -> Result<arrow::datatypes::Schema, StepError> {
    use futures::StreamExt;
    use object_store::ObjectStoreExt;
    match store.get(&schema_path(path)).await {
        Ok(got) => {
            let bytes = got.bytes().await?;
            return decode_schema(&bytes).map_err(|e| {
                StepError::user(format!(
                    "{path}.schema: not a schema flowgate can read: {e}"
                ))
            });
        }
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    // Complete lines go to a thread that infers as they come: memory stays at a
    // few chunks, whatever the size of the object.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let infer = tokio::task::spawn_blocking(move || {
        let values = std::iter::from_fn(move || rx.blocking_recv()).flat_map(|chunk| {
            chunk
                .split(|b| *b == b'\n')
                .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
                .map(|l| {
                    serde_json::from_slice::<serde_json::Value>(l)
                        .map_err(|e| arrow::error::ArrowError::JsonError(e.to_string()))
                })
                .collect::<Vec<_>>()
        });
        arrow::json::reader::infer_json_schema_from_iterator(values)
    });
    let mut bytes = store.get(path).await?.into_stream();
    let mut unzip = Decompressor::for_format(format)?;
    let mut pending: Vec<u8> = Vec::new();
    let mut sent = Ok(());
    loop {
        match bytes.next().await {
            Some(chunk) => pending.extend(unzip.push(&chunk?)?),
            None => {
                pending.extend(std::mem::replace(&mut unzip, Decompressor::None).finish()?);
                if tx.send(std::mem::take(&mut pending)).await.is_err() {
                    sent = Err(());
                }
                break;
            }
        }
        if let Some(end) = pending.iter().rposition(|b| *b == b'\n') {
            let rest = pending.split_off(end + 1);
            if tx
                .send(std::mem::replace(&mut pending, rest))
                .await
                .is_err()
            {
                sent = Err(());
                break;
            }
        }
    }
    drop(tx);
    let inferred = infer
        .await
        .map_err(|e| StepError::internal(format!("schema inference: {e}")))?;
    let schema = inferred.map_err(|e| StepError::user(format!("{path}: bad JSON line: {e}")))?;
    // The inference stopped early only on a bad line, which it reported.
    sent.map_err(|()| StepError::internal(format!("{path}: schema inference stopped early")))?;
    Ok(schema)
}

/// Decompresses as bytes arrive (write side in, decompressed bytes out).
#[allow(
    clippy::large_enum_variant,
    reason = "one per object being read; sizes vary with features"
)]
enum Decompressor {
    None,
    Gz(flate2::write::GzDecoder<Vec<u8>>),
    Zst(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

impl Decompressor {
    fn for_format(f: Format) -> Result<Decompressor, StepError> {
        Ok(match f {
            Format::JsonlGz => Decompressor::Gz(flate2::write::GzDecoder::new(Vec::new())),
            Format::JsonlZst => {
                Decompressor::Zst(zstd::stream::write::Decoder::new(Vec::new()).map_err(io)?)
            }
            _ => Decompressor::None,
        })
    }
    fn push(&mut self, data: &[u8]) -> Result<Vec<u8>, StepError> {
        let bad = |e: std::io::Error| StepError::user(format!("cannot decompress: {e}"));
        Ok(match self {
            Decompressor::None => data.to_vec(),
            Decompressor::Gz(d) => {
                Write::write_all(d, data).map_err(bad)?;
                std::mem::take(d.get_mut())
            }
            Decompressor::Zst(d) => {
                Write::write_all(d, data).map_err(bad)?;
                std::mem::take(d.get_mut())
            }
        })
    }
    fn finish(self) -> Result<Vec<u8>, StepError> {
        let bad = |e: std::io::Error| StepError::user(format!("cannot decompress: {e}"));
        Ok(match self {
            Decompressor::None => Vec::new(),
            Decompressor::Gz(d) => d.finish().map_err(bad)?,
            Decompressor::Zst(mut d) => {
                Write::flush(&mut d).map_err(bad)?;
                std::mem::take(d.get_mut())
            }
        })
    }
}

/// Read an object as Arrow batches, streaming, into `tx`. JSON lines get their
/// schema from beside them, or from all of their lines (see `json_schema_of`);
/// Parquet carries its own.
pub async fn read_batches(
    store: Arc<dyn ObjectStore>,
    path: Path,
    format: Format,
    batch_rows: usize,
    tx: tokio::sync::mpsc::Sender<Result<RecordBatch, StepError>>,
) -> Result<(), StepError> {
    use futures::StreamExt;
    use object_store::ObjectStoreExt;
    if format == Format::Parquet {
        #[expect(
            deprecated,
            reason = "replace with our own AsyncFileReader over object_store (arrow-rs#10308)"
        )]
        let reader = parquet::arrow::async_reader::ParquetObjectReader::new(store, path.clone());
        let mut stream = parquet::arrow::ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| StepError::user(format!("{path}: not a readable Parquet file: {e}")))?
            .with_batch_size(batch_rows)
            .build()
            .map_err(|e| StepError::user(format!("{path}: {e}")))?;
        while let Some(b) = stream.next().await {
            let b = b.map_err(|e| StepError::external(format!("{path}: {e}")))?;
            if tx.send(Ok(b)).await.is_err() {
                return Ok(());
            }
        }
        return Ok(());
    }
    let schema = json_schema_of(&store, &path, format).await?;
    let bad = |e: arrow::error::ArrowError| StepError::user(format!("{path}: bad JSON line: {e}"));
    // Strict: a key the schema lacks is an error, never a column dropped unseen.
    let mut d = arrow::json::ReaderBuilder::new(Arc::new(schema))
        .with_batch_size(batch_rows)
        .with_strict_mode(true)
        .build_decoder()
        .map_err(bad)?;
    let mut bytes = store.get(&path).await?.into_stream();
    let mut unzip = Decompressor::for_format(format)?;
    let mut pending: Vec<u8> = Vec::new();
    let mut eof = false;
    while !eof {
        match bytes.next().await {
            Some(chunk) => pending.extend(unzip.push(&chunk?)?),
            None => {
                eof = true;
                let rest = std::mem::replace(&mut unzip, Decompressor::None).finish()?;
                pending.extend(rest);
            }
        }
        let mut at = 0;
        while at < pending.len() {
            let used = d.decode(&pending[at..]).map_err(bad)?;
            at += used;
            if used == 0 || d.len() >= batch_rows {
                if let Some(b) = d.flush().map_err(bad)?
                    && tx.send(Ok(b)).await.is_err()
                {
                    return Ok(());
                }
                if used == 0 {
                    break;
                }
            }
        }
        pending.drain(..at);
    }
    if let Some(b) = d.flush().map_err(bad)? {
        let _ = tx.send(Ok(b)).await;
    }
    Ok(())
}
