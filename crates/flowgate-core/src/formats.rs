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

#[expect(
    clippy::large_enum_variant,
    reason = "one writer per object: its size does not matter"
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
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(io)?))
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
                let mut lines = arrow::json::LineDelimitedWriter::new(Vec::new());
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
                let _ = meta;
                Ok(self.bytes)
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
