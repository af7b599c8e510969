//! PostgreSQL binary COPY → Arrow, streaming: bytes arrive in chunks of any size,
//! complete rows are decoded straight into column builders.

use arrow::datatypes::{DataType, TimeUnit};
use bytes::{Buf, BytesMut};

use super::arrow_build::{BatchBuilder, ColumnBuilder};

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Microseconds between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_US: i64 = 946_684_800_000_000;
/// Days between 1970-01-01 and 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;

/// How a column is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgWire {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    /// Into Decimal128 with this scale, or into text when the scale is unknown.
    Numeric(Option<i8>),
    Text,
    Bytea,
    Date,
    Timestamp,
    Time,
    Uuid,
    Jsonb,
}

impl PgWire {
    /// The wire decoding and Arrow type for a PostgreSQL type, or `None` when the
    /// column must be selected as `::text`.
    pub fn for_type(oid: u32, typmod: i32) -> Option<(PgWire, DataType)> {
        Some(match oid {
            16 => (PgWire::Bool, DataType::Boolean),
            21 => (PgWire::Int2, DataType::Int16),
            23 => (PgWire::Int4, DataType::Int32),
            20 => (PgWire::Int8, DataType::Int64),
            700 => (PgWire::Float4, DataType::Float32),
            701 => (PgWire::Float8, DataType::Float64),
            1700 => {
                if typmod >= 4 {
                    let precision = (((typmod - 4) >> 16) & 0xffff) as u8;
                    let scale = ((typmod - 4) & 0xffff) as i8;
                    if precision <= 38 {
                        return Some((
                            PgWire::Numeric(Some(scale)),
                            DataType::Decimal128(precision, scale),
                        ));
                    }
                }
                (PgWire::Numeric(None), DataType::Utf8)
            }
            25 | 1043 | 1042 | 19 | 114 => (PgWire::Text, DataType::Utf8),
            3802 => (PgWire::Jsonb, DataType::Utf8),
            17 => (PgWire::Bytea, DataType::Binary),
            1082 => (PgWire::Date, DataType::Date32),
            1114 => (
                PgWire::Timestamp,
                DataType::Timestamp(TimeUnit::Microsecond, None),
            ),
            1184 => (
                PgWire::Timestamp,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ),
            1083 => (PgWire::Time, DataType::Time64(TimeUnit::Microsecond)),
            2950 => (PgWire::Uuid, DataType::Utf8),
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("not a binary COPY stream (bad signature)")]
    Signature,
    #[error("row has {got} fields, expected {want}")]
    FieldCount { got: i16, want: usize },
    #[error("column {column}: {message}")]
    Value { column: usize, message: String },
}

/// Decodes a binary COPY stream into batches.
pub struct CopyDecoder {
    wire: Vec<PgWire>,
    buf: BytesMut,
    header_done: bool,
    pub finished: bool,
}

impl CopyDecoder {
    pub fn new(wire: Vec<PgWire>) -> CopyDecoder {
        CopyDecoder {
            wire,
            buf: BytesMut::new(),
            header_done: false,
            finished: false,
        }
    }

    /// Add bytes; decode every complete row into `out`, stopping once `out` holds
    /// `max_rows` rows (call again with no new bytes to continue).
    pub fn feed(
        &mut self,
        chunk: &[u8],
        out: &mut BatchBuilder,
        max_rows: usize,
    ) -> Result<(), CopyError> {
        self.buf.extend_from_slice(chunk);
        if !self.header_done {
            if self.buf.len() < SIGNATURE.len() + 8 {
                return Ok(());
            }
            if &self.buf[..SIGNATURE.len()] != SIGNATURE {
                return Err(CopyError::Signature);
            }
            let ext = u32::from_be_bytes([self.buf[15], self.buf[16], self.buf[17], self.buf[18]])
                as usize;
            if self.buf.len() < 19 + ext {
                return Ok(());
            }
            self.buf.advance(19 + ext);
            self.header_done = true;
        }
        // Decode in place; the buffer moves on once, past every decoded row.
        let mut at = 0;
        while out.rows < max_rows && !self.finished {
            let Some(len) = complete_row(&self.buf[at..]) else {
                break;
            };
            if len == 2 {
                at += 2;
                self.finished = true;
                break;
            }
            self.decode_row(&self.buf[at..at + len], out)?;
            at += len;
            out.rows += 1;
        }
        self.buf.advance(at);
        Ok(())
    }

    fn decode_row(&self, row: &[u8], out: &mut BatchBuilder) -> Result<(), CopyError> {
        let fields = i16::from_be_bytes([row[0], row[1]]);
        if fields < 0 || fields as usize != self.wire.len() {
            return Err(CopyError::FieldCount {
                got: fields,
                want: self.wire.len(),
            });
        }
        let mut at = 2;
        for (i, wire) in self.wire.iter().enumerate() {
            let n = i32::from_be_bytes([row[at], row[at + 1], row[at + 2], row[at + 3]]);
            at += 4;
            let col = &mut out.columns[i];
            if n < 0 {
                col.append_null();
                continue;
            }
            let v = &row[at..at + n as usize];
            at += n as usize;
            decode_value(*wire, v, col)
                .map_err(|message| CopyError::Value { column: i, message })?;
        }
        Ok(())
    }
}

/// Rows are decoded whole: the length of the next complete row (or trailer) at the
/// start of `b`, if it has fully arrived.
fn complete_row(b: &[u8]) -> Option<usize> {
    if b.len() < 2 {
        return None;
    }
    let fields = i16::from_be_bytes([b[0], b[1]]);
    if fields == -1 {
        return Some(2);
    }
    let mut at = 2;
    for _ in 0..fields.max(0) {
        if b.len() < at + 4 {
            return None;
        }
        let n = i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        at += 4;
        if n > 0 {
            at += n as usize;
        }
        if b.len() < at {
            return None;
        }
    }
    Some(at)
}

fn be<const N: usize>(v: &[u8]) -> Result<[u8; N], String> {
    v.try_into()
        .map_err(|_| format!("expected {N} bytes, got {}", v.len()))
}

fn decode_value(wire: PgWire, v: &[u8], col: &mut ColumnBuilder) -> Result<(), String> {
    match (wire, col) {
        (PgWire::Bool, ColumnBuilder::Bool(b)) => {
            b.append_value(v.first().copied().unwrap_or(0) != 0)
        }
        (PgWire::Int2, ColumnBuilder::I16(b)) => b.append_value(i16::from_be_bytes(be(v)?)),
        (PgWire::Int4, ColumnBuilder::I32(b)) => b.append_value(i32::from_be_bytes(be(v)?)),
        (PgWire::Int8, ColumnBuilder::I64(b)) => b.append_value(i64::from_be_bytes(be(v)?)),
        (PgWire::Float4, ColumnBuilder::F32(b)) => b.append_value(f32::from_be_bytes(be(v)?)),
        (PgWire::Float8, ColumnBuilder::F64(b)) => b.append_value(f64::from_be_bytes(be(v)?)),
        (PgWire::Numeric(Some(scale)), ColumnBuilder::Decimal(b)) => {
            match numeric_i128(v, scale)? {
                Some(x) => b.append_value(x),
                None => b.append_null(),
            }
        }
        (PgWire::Numeric(None), ColumnBuilder::Utf8(b)) => b.append_value(numeric_text(v)?),
        (PgWire::Text, ColumnBuilder::Utf8(b)) => {
            b.append_value(std::str::from_utf8(v).map_err(|e| e.to_string())?)
        }
        (PgWire::Jsonb, ColumnBuilder::Utf8(b)) => b.append_value(
            std::str::from_utf8(v.get(1..).unwrap_or_default()).map_err(|e| e.to_string())?,
        ),
        (PgWire::Bytea, ColumnBuilder::Binary(b)) => b.append_value(v),
        (PgWire::Date, ColumnBuilder::Date32(b)) => {
            b.append_value(i32::from_be_bytes(be(v)?).saturating_add(PG_EPOCH_DAYS))
        }
        (PgWire::Timestamp, ColumnBuilder::Timestamp(b)) => {
            b.append_value(i64::from_be_bytes(be(v)?).saturating_add(PG_EPOCH_US))
        }
        (PgWire::Time, ColumnBuilder::Time64(b)) => b.append_value(i64::from_be_bytes(be(v)?)),
        (PgWire::Uuid, ColumnBuilder::Utf8(b)) => {
            let h = hex::encode(v);
            if h.len() != 32 {
                return Err("uuid is not 16 bytes".into());
            }
            b.append_value(format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            ))
        }
        (w, _) => return Err(format!("internal: no builder for {w:?}")),
    }
    Ok(())
}

/// A binary numeric, its base-10000 digits read in place.
struct Numeric<'a> {
    negative: bool,
    weight: i16,
    dscale: u16,
    raw_digits: &'a [u8],
}

impl Numeric<'_> {
    fn digits(&self) -> impl Iterator<Item = u16> + '_ {
        self.raw_digits
            .chunks_exact(2)
            .map(|d| u16::from_be_bytes([d[0], d[1]]))
    }
}

fn numeric(v: &[u8]) -> Result<Option<Numeric<'_>>, String> {
    if v.len() < 8 {
        return Err("numeric too short".into());
    }
    let ndigits = i16::from_be_bytes([v[0], v[1]]) as usize;
    let weight = i16::from_be_bytes([v[2], v[3]]);
    let sign = u16::from_be_bytes([v[4], v[5]]);
    let dscale = u16::from_be_bytes([v[6], v[7]]);
    if sign == 0xC000 || sign == 0xD000 || sign == 0xF000 {
        return Ok(None); // NaN and infinities have no decimal value
    }
    if v.len() < 8 + 2 * ndigits {
        return Err("numeric digits truncated".into());
    }
    Ok(Some(Numeric {
        negative: sign == 0x4000,
        weight,
        dscale,
        raw_digits: &v[8..8 + 2 * ndigits],
    }))
}

/// The value × 10^scale, exactly (PostgreSQL rounds to the column's scale already).
fn numeric_i128(v: &[u8], scale: i8) -> Result<Option<i128>, String> {
    let Some(n) = numeric(v)? else {
        return Ok(None);
    };
    let mut acc: i128 = 0;
    for (i, d) in n.digits().enumerate() {
        let exp = 4 * (i32::from(n.weight) - i as i32) + i32::from(scale);
        let term = if exp >= 0 {
            i128::from(d).checked_mul(
                10i128
                    .checked_pow(exp as u32)
                    .ok_or("numeric out of range")?,
            )
        } else {
            Some(i128::from(d) / 10i128.pow((-exp).min(38) as u32))
        };
        acc = acc
            .checked_add(term.ok_or("numeric out of range")?)
            .ok_or("numeric out of range")?;
    }
    Ok(Some(if n.negative { -acc } else { acc }))
}

/// The exact decimal text, as PostgreSQL prints it.
fn numeric_text(v: &[u8]) -> Result<String, String> {
    let Some(n) = numeric(v)? else {
        return Ok("NaN".into());
    };
    let digits: Vec<u16> = n.digits().collect();
    let mut int = String::new();
    let mut frac = String::new();
    for i in 0..=(n.weight.max(0) as i32) {
        let d = digits.get(i as usize).copied().unwrap_or(0);
        if n.weight < 0 {
            break;
        }
        if int.is_empty() {
            int.push_str(&d.to_string())
        } else {
            int.push_str(&format!("{d:04}"))
        }
    }
    if int.is_empty() {
        int.push('0');
    }
    let first_frac = (i32::from(n.weight) + 1).max(0);
    for _ in 0..(-(i32::from(n.weight) + 1)).max(0) {
        frac.push_str("0000");
    }
    for i in first_frac..digits.len() as i32 {
        frac.push_str(&format!("{:04}", digits[i as usize]));
    }
    let scale = n.dscale as usize;
    while frac.len() < scale {
        frac.push('0');
    }
    frac.truncate(scale);
    let sign = if n.negative { "-" } else { "" };
    Ok(if scale == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_bytes(ndigits: &[u16], weight: i16, negative: bool, dscale: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(ndigits.len() as i16).to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&(if negative { 0x4000u16 } else { 0 }).to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        for d in ndigits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics_decode_exactly() {
        // 12345.678 = [1, 2345, 6780] weight 1, dscale 3
        let v = numeric_bytes(&[1, 2345, 6780], 1, false, 3);
        assert_eq!(numeric_text(&v).unwrap(), "12345.678");
        assert_eq!(numeric_i128(&v, 3).unwrap(), Some(12_345_678));
        // -0.0042 = [42] weight -1, dscale 4
        let v = numeric_bytes(&[42], -1, true, 4);
        assert_eq!(numeric_text(&v).unwrap(), "-0.0042");
        assert_eq!(numeric_i128(&v, 4).unwrap(), Some(-42));
        // 3.10 (dscale 2) = [3, 1000] weight 0
        let v = numeric_bytes(&[3, 1000], 0, false, 2);
        assert_eq!(numeric_text(&v).unwrap(), "3.10");
        assert_eq!(numeric_i128(&v, 2).unwrap(), Some(310));
        // 1000000 = [100] weight 1
        let v = numeric_bytes(&[100], 1, false, 0);
        assert_eq!(numeric_text(&v).unwrap(), "1000000");
    }
}
