//! Reads a GGUF model's header into [`ModelFacts`]: the numbers placement
//! needs (layer count, bytes per layer, KV cache cost) without loading
//! llama.cpp or the weights.
//!
//! Layout (v2/v3): magic `GGUF`, u32 version, u64 tensor count, u64 key/value
//! count, the key/values, the tensor infos, then the data section aligned to
//! `general.alignment`. A tensor's size is the gap to the next tensor's offset
//! (the last one runs to the end of the file), so no ggml type table is needed
//! and the sizes include alignment padding: the per-layer bytes sum to the
//! whole data section.
//!
//! The file is untrusted input: every count and length is capped before it is
//! used, and a truncated or garbled file is an error, never a panic.

mod reader;
#[cfg(test)]
mod tests;

use reader::{check, Reader, Value, MAX_NAME};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// More tensors than any real model has (a 405B model has ~1,100).
const MAX_TENSORS: u64 = 1_000_000;
/// More key/values than any real model has (~40 typical).
const MAX_KV: u64 = 1_000_000;
/// More blocks than any real model has (~130 at most today).
const MAX_LAYERS: u64 = 1 << 16;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
const DEFAULT_ALIGNMENT: u64 = 32;

/// What placement needs to know about a model; sent between nodes as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFacts {
    /// `general.architecture`, e.g. `llama`, `gemma3`.
    pub arch: String,
    /// `{arch}.block_count`.
    pub n_layers: u32,
    /// Weight bytes of the tensors named `blk.{i}.*`, at index `i`.
    pub layer_bytes: Vec<u64>,
    /// Every other tensor (token embeddings, output, norms, rope factors).
    pub other_bytes: u64,
    /// `{arch}.embedding_length`.
    pub n_embd: u32,
    /// Length of `tokenizer.ggml.tokens` (else `{arch}.vocab_size`).
    pub n_vocab: u32,
    /// f16 K and V for one token in one layer: 2 × (n_embd_k_gqa + n_embd_v_gqa).
    pub kv_bytes_per_token_per_layer: u64,
    pub file_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open the model {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable GGUF model: {problem}")]
    Invalid { path: PathBuf, problem: Problem },
}

/// What is wrong inside a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("read failed: {0}")]
    Io(std::io::Error),
    #[error("the file ends in the middle of the header")]
    Truncated,
    #[error("it starts with {0:?}, not the GGUF magic")]
    NotGguf([u8; 4]),
    #[error("GGUF version {0} is not supported (only 2 and 3)")]
    Version(u32),
    #[error("{what} has length {value}, more than the limit {limit}")]
    TooLarge {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("unknown metadata value type {0}")]
    UnknownType(u32),
    #[error("an array of arrays")]
    NestedArray,
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("metadata key `{0}` is missing")]
    Missing(String),
    #[error("metadata key `{key}` should be {expected}, got {found}")]
    WrongValue {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})")]
    TooManyDims { name: String, n_dims: u32 },
    #[error("tensor `{name}` starts at data offset {offset}, past the end of the file")]
    OffsetPastEnd { name: String, offset: u64 },
}

/// Reads `path`'s header; the weights themselves are never read.
pub fn read_facts(path: &Path) -> Result<ModelFacts, GgufError> {
    let open = |source| GgufError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(open)?;
    let file_bytes = file.metadata().map_err(open)?.len();
    parse(BufReader::new(file), file_bytes).map_err(|problem| GgufError::Invalid {
        path: path.to_path_buf(),
        problem,
    })
}

/// One tensor's name and where its data starts, relative to the data section.
struct TensorInfo {
    name: String,
    offset: u64,
}

pub(crate) fn parse(input: impl Read, file_bytes: u64) -> Result<ModelFacts, Problem> {
    let mut r = Reader::new(input);
    let magic = r.magic()?;
    if &magic != b"GGUF" {
        return Err(Problem::NotGguf(magic));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(Problem::Version(version));
    }
    let n_tensors = r.u64()?;
    check("the tensor count", n_tensors, MAX_TENSORS)?;
    let n_kv = r.u64()?;
    check("the key/value count", n_kv, MAX_KV)?;

    let mut meta = BTreeMap::new();
    for _ in 0..n_kv {
        let key = r.string("a metadata key", MAX_NAME)?;
        let ty = r.value_type()?;
        if wanted(&key) {
            meta.insert(key, r.value(ty)?);
        } else {
            r.skip_value(ty)?;
        }
    }

    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        let name = r.string("a tensor name", MAX_NAME)?;
        let n_dims = r.u32()?;
        if n_dims > MAX_DIMS {
            return Err(Problem::TooManyDims { name, n_dims });
        }
        r.skip(u64::from(n_dims) * 8 + 4)?; // dims, ggml type
        let offset = r.u64()?;
        tensors.push(TensorInfo { name, offset });
    }

    let meta = Meta(meta);
    let alignment = match meta.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(_) => meta.uint("general.alignment")?,
    };
    if !alignment.is_power_of_two() {
        return Err(meta.wrong("general.alignment", "a power of two"));
    }
    let data_start = r.pos().div_ceil(alignment) * alignment;
    facts(&meta, tensors, data_start, file_bytes)
}

/// Keys we keep; the architecture is not known until its key is read, so
/// per-architecture keys are recognised by their suffix.
fn wanted(key: &str) -> bool {
    const SUFFIXES: [&str; 7] = [
        ".block_count",
        ".embedding_length",
        ".vocab_size",
        ".attention.head_count",
        ".attention.head_count_kv",
        ".attention.key_length",
        ".attention.value_length",
    ];
    matches!(
        key,
        "general.architecture" | "general.alignment" | "tokenizer.ggml.tokens"
    ) || SUFFIXES.iter().any(|s| key.ends_with(s))
}

fn facts(
    meta: &Meta,
    mut tensors: Vec<TensorInfo>,
    data_start: u64,
    file_bytes: u64,
) -> Result<ModelFacts, Problem> {
    let arch = meta.string("general.architecture")?;
    let key = |suffix: &str| format!("{arch}.{suffix}");
    let n_layers = meta.uint(&key("block_count"))?;
    check("block_count", n_layers, MAX_LAYERS)?;
    let n_embd = meta.uint(&key("embedding_length"))?;
    let n_vocab = match meta.get("tokenizer.ggml.tokens") {
        Some(Value::Array { len, .. }) => *len,
        Some(_) => return Err(meta.wrong("tokenizer.ggml.tokens", "an array")),
        None => meta.uint(&key("vocab_size"))?,
    };

    let head_count = meta.opt_uint(&key("attention.head_count"))?;
    let head_count_kv = meta
        .opt_uint(&key("attention.head_count_kv"))?
        .or(head_count);
    let per_head = |name: &str| -> Result<u64, Problem> {
        match (meta.opt_uint(&key(name))?, head_count) {
            (Some(len), _) => Ok(len),
            (None, Some(0)) => Err(meta.wrong(&key("attention.head_count"), "at least 1")),
            (None, Some(heads)) => Ok(n_embd / heads),
            (None, None) => Err(Problem::Missing(key("attention.head_count"))),
        }
    };
    let n_embd_gqa = |name: &str| -> Result<u64, Problem> {
        let kv_heads =
            head_count_kv.ok_or_else(|| Problem::Missing(key("attention.head_count")))?;
        Ok(per_head(name)?.saturating_mul(kv_heads))
    };
    let kv_bytes_per_token_per_layer = n_embd_gqa("attention.key_length")?
        .saturating_add(n_embd_gqa("attention.value_length")?)
        .saturating_mul(2);

    // Past the end only matters if a tensor starts there (checked below).
    let data_bytes = file_bytes.saturating_sub(data_start);
    tensors.sort_by_key(|t| t.offset);
    let mut layer_bytes = vec![0u64; n_layers as usize];
    let mut other_bytes = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        let end = tensors.get(i + 1).map_or(data_bytes, |next| next.offset);
        let size = end
            .checked_sub(t.offset)
            .ok_or_else(|| Problem::OffsetPastEnd {
                name: t.name.clone(),
                offset: t.offset,
            })?;
        // A block past block_count is not one llama.cpp offloads by layer;
        // counting it with the head's tensors keeps the estimate whole.
        match layer_index(&t.name).and_then(|i| layer_bytes.get_mut(i)) {
            Some(bytes) => *bytes += size,
            None => other_bytes += size,
        }
    }

    let u32_of =
        |name: &str, v: u64| u32::try_from(v).map_err(|_| meta.wrong(name, "a 32-bit count"));
    Ok(ModelFacts {
        n_layers: u32_of("block_count", n_layers)?,
        n_embd: u32_of("embedding_length", n_embd)?,
        n_vocab: u32_of("tokenizer.ggml.tokens", n_vocab)?,
        arch,
        layer_bytes,
        other_bytes,
        kv_bytes_per_token_per_layer,
        file_bytes,
    })
}

/// `blk.12.attn_q.weight` → 12.
fn layer_index(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("blk.")?;
    let (index, _) = rest.split_once('.')?;
    index.parse().ok()
}

/// The metadata we kept, with typed lookups whose errors name the key.
struct Meta(BTreeMap<String, Value>);

impl Meta {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    fn wrong(&self, key: &str, expected: &'static str) -> Problem {
        Problem::WrongValue {
            key: key.to_string(),
            expected,
            found: self
                .get(key)
                .map_or_else(|| "nothing".to_string(), |v| format!("{v:?}")),
        }
    }

    fn string(&self, key: &str) -> Result<String, Problem> {
        match self.get(key) {
            Some(Value::Str(s)) => Ok(s.clone()),
            Some(_) => Err(self.wrong(key, "a string")),
            None => Err(Problem::Missing(key.to_string())),
        }
    }

    /// An unsigned integer; for a per-layer array (some models vary the KV
    /// head count by layer) the largest element, so memory is not underestimated.
    fn opt_uint(&self, key: &str) -> Result<Option<u64>, Problem> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Uint(v)) => Ok(Some(*v)),
            Some(Value::Int(v)) if *v >= 0 => Ok(Some(v.unsigned_abs())),
            Some(Value::Array { max: Some(v), .. }) => Ok(Some(*v)),
            Some(_) => Err(self.wrong(key, "a non-negative integer")),
        }
    }

    fn uint(&self, key: &str) -> Result<u64, Problem> {
        self.opt_uint(key)?
            .ok_or_else(|| Problem::Missing(key.to_string()))
    }
}
