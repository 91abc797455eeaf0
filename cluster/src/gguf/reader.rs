//! Bounded little-endian reads of GGUF's primitive encodings.
//!
//! Every length and count in a GGUF file is untrusted: strings are read by
//! growing a buffer as bytes arrive (never preallocated from the length), and
//! values nobody needs are skipped without being materialised.

use super::Problem;
use std::io::{self, Read};

/// Longest string value we accept (chat templates are the largest, ~10 KiB).
pub const MAX_STRING: u64 = 16 << 20;
/// Longest metadata key or tensor name (ggml caps names at 64 bytes).
pub const MAX_NAME: u64 = 64 << 10;
/// Most elements in an array (vocabularies are ~2^18).
pub const MAX_ARRAY: u64 = 1 << 24;

/// GGUF metadata value types, by their on-disk number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    fn from_raw(raw: u32) -> Result<Self, Problem> {
        Ok(match raw {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            other => return Err(Problem::UnknownType(other)),
        })
    }

    /// Encoded size of a fixed-size value; `None` for strings and arrays.
    fn fixed_size(self) -> Option<u64> {
        match self {
            Self::U8 | Self::I8 | Self::Bool => Some(1),
            Self::U16 | Self::I16 => Some(2),
            Self::U32 | Self::I32 | Self::F32 => Some(4),
            Self::U64 | Self::I64 | Self::F64 => Some(8),
            Self::String | Self::Array => None,
        }
    }
}

/// A metadata value we kept. Arrays keep only their length and, for integer
/// elements, their largest element (per-layer head counts).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Uint(u64),
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array { len: u64, max: Option<u64> },
}

/// A reader that knows how far it is into the file, so the data section's
/// offset can be computed once the header ends.
pub struct Reader<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, pos: 0 }
    }

    pub fn pos(&self) -> u64 {
        self.pos
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], Problem> {
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf).map_err(io_problem)?;
        self.pos += N as u64;
        Ok(buf)
    }

    pub fn u32(&mut self) -> Result<u32, Problem> {
        self.bytes().map(u32::from_le_bytes)
    }

    pub fn u64(&mut self) -> Result<u64, Problem> {
        self.bytes().map(u64::from_le_bytes)
    }

    pub fn magic(&mut self) -> Result<[u8; 4], Problem> {
        self.bytes()
    }

    pub fn value_type(&mut self) -> Result<ValueType, Problem> {
        ValueType::from_raw(self.u32()?)
    }

    /// A length-prefixed string of at most `limit` bytes.
    pub fn string(&mut self, what: &'static str, limit: u64) -> Result<String, Problem> {
        let len = self.u64()?;
        check(what, len, limit)?;
        let mut buf = Vec::new();
        let got = (&mut self.inner)
            .take(len)
            .read_to_end(&mut buf)
            .map_err(io_problem)?;
        self.pos += got as u64;
        if (got as u64) < len {
            return Err(Problem::Truncated);
        }
        String::from_utf8(buf).map_err(|_| Problem::NotUtf8(what))
    }

    pub fn skip(&mut self, len: u64) -> Result<(), Problem> {
        let got =
            io::copy(&mut (&mut self.inner).take(len), &mut io::sink()).map_err(io_problem)?;
        self.pos += got;
        if got < len {
            return Err(Problem::Truncated);
        }
        Ok(())
    }

    fn skip_string(&mut self) -> Result<(), Problem> {
        let len = self.u64()?;
        check("a string value", len, MAX_STRING)?;
        self.skip(len)
    }

    /// Reads a value of type `ty`; arrays are streamed, never stored.
    pub fn value(&mut self, ty: ValueType) -> Result<Value, Problem> {
        Ok(match ty {
            ValueType::U8 => Value::Uint(self.bytes::<1>().map(u8::from_le_bytes)?.into()),
            ValueType::I8 => Value::Int(self.bytes::<1>().map(i8::from_le_bytes)?.into()),
            ValueType::U16 => Value::Uint(self.bytes().map(u16::from_le_bytes)?.into()),
            ValueType::I16 => Value::Int(self.bytes().map(i16::from_le_bytes)?.into()),
            ValueType::U32 => Value::Uint(self.u32()?.into()),
            ValueType::I32 => Value::Int(self.bytes().map(i32::from_le_bytes)?.into()),
            ValueType::U64 => Value::Uint(self.u64()?),
            ValueType::I64 => Value::Int(self.bytes().map(i64::from_le_bytes)?),
            ValueType::F32 => Value::Float(self.bytes().map(f32::from_le_bytes)?.into()),
            ValueType::F64 => Value::Float(self.bytes().map(f64::from_le_bytes)?),
            ValueType::Bool => Value::Bool(self.bytes::<1>()?[0] != 0),
            ValueType::String => Value::Str(self.string("a string value", MAX_STRING)?),
            ValueType::Array => self.array(true)?,
        })
    }

    /// Skips a value of type `ty` without keeping any of it.
    pub fn skip_value(&mut self, ty: ValueType) -> Result<(), Problem> {
        match (ty, ty.fixed_size()) {
            (_, Some(size)) => self.skip(size),
            (ValueType::String, None) => self.skip_string(),
            _ => self.array(false).map(drop),
        }
    }

    /// Streams an array; with `keep`, tracks the largest integer element.
    fn array(&mut self, keep: bool) -> Result<Value, Problem> {
        let elem = self.value_type()?;
        let len = self.u64()?;
        check("an array", len, MAX_ARRAY)?;
        let integer = matches!(
            elem,
            ValueType::U8
                | ValueType::I8
                | ValueType::U16
                | ValueType::I16
                | ValueType::U32
                | ValueType::I32
                | ValueType::U64
                | ValueType::I64
        );
        match (elem, elem.fixed_size()) {
            // GGUF readers (llama.cpp's included) reject arrays of arrays.
            (ValueType::Array, _) => return Err(Problem::NestedArray),
            (_, Some(size)) if !(keep && integer) => self.skip(len * size)?,
            (_, Some(_)) => {
                let mut max = None;
                for _ in 0..len {
                    let v = match self.value(elem)? {
                        Value::Uint(v) => v,
                        Value::Int(v) => u64::try_from(v).unwrap_or(0),
                        _ => 0,
                    };
                    max = max.max(Some(v));
                }
                return Ok(Value::Array { len, max });
            }
            (_, None) => {
                for _ in 0..len {
                    self.skip_string()?;
                }
            }
        }
        Ok(Value::Array { len, max: None })
    }
}

/// Refuses a count or length above `limit` before anything is read or allocated.
pub fn check(what: &'static str, value: u64, limit: u64) -> Result<(), Problem> {
    if value > limit {
        return Err(Problem::TooLarge { what, value, limit });
    }
    Ok(())
}

fn io_problem(e: io::Error) -> Problem {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Problem::Truncated
    } else {
        Problem::Io(e)
    }
}
