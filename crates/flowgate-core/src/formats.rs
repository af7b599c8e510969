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
        }
        match self.inner.as_mut() {
            Some(w) => w.write(batch).await,
            None => Ok(()),
        }
    }

    /// Complete the object: (rows, bytes), or `None` when there was nothing to write.
    pub async fn finish(self) -> Result<Option<(u64, u64)>, StepError> {
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
/// schema from the first lines (up to 1 MiB); Parquet carries its own.
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
    let mut bytes = store.get(&path).await?.into_stream();
    let mut unzip = Decompressor::for_format(format)?;
    let mut pending: Vec<u8> = Vec::new();
    let mut decoder: Option<arrow::json::reader::Decoder> = None;
    let bad = |e: arrow::error::ArrowError| StepError::user(format!("{path}: bad JSON line: {e}"));
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
        if decoder.is_none() {
            if !eof && pending.len() < 1 << 20 {
                continue;
            }
            // Infer from complete lines of what has arrived.
            let sample_end = if eof {
                pending.len()
            } else {
                pending
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map(|i| i + 1)
                    .unwrap_or(0)
            };
            if sample_end == 0 && !eof {
                continue;
            }
            let (schema, _) =
                arrow::json::reader::infer_json_schema(&pending[..sample_end], Some(10_000))
                    .map_err(bad)?;
            decoder = Some(
                arrow::json::ReaderBuilder::new(Arc::new(schema))
                    .with_batch_size(batch_rows)
                    .build_decoder()
                    .map_err(bad)?,
            );
        }
        let Some(d) = decoder.as_mut() else { continue };
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
    if let Some(d) = decoder.as_mut()
        && let Some(b) = d.flush().map_err(bad)?
    {
        let _ = tx.send(Ok(b)).await;
    }
    Ok(())
}
