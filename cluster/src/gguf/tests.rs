use super::*;
use std::io::Cursor;

/// Builds GGUF byte buffers by hand, so every field can be broken on purpose.
#[derive(Default)]
struct Builder {
    kv: Vec<u8>,
    n_kv: u64,
    tensors: Vec<(String, u64)>,
    data_len: u64,
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Builder {
    fn key(&mut self, key: &str, ty: u32) -> &mut Vec<u8> {
        self.n_kv += 1;
        string(&mut self.kv, key);
        self.kv.extend_from_slice(&ty.to_le_bytes());
        &mut self.kv
    }

    fn u32(mut self, key: &str, v: u32) -> Self {
        self.key(key, 4).extend_from_slice(&v.to_le_bytes());
        self
    }

    fn str(mut self, key: &str, v: &str) -> Self {
        string(self.key(key, 8), v);
        self
    }

    fn u32_array(mut self, key: &str, vs: &[u32]) -> Self {
        let out = self.key(key, 9);
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&(vs.len() as u64).to_le_bytes());
        for v in vs {
            out.extend_from_slice(&v.to_le_bytes());
        }
        self
    }

    fn str_array(mut self, key: &str, n: u64) -> Self {
        let out = self.key(key, 9);
        out.extend_from_slice(&8u32.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        for i in 0..n {
            string(out, &format!("tok{i}"));
        }
        self
    }

    /// Tensors are laid out back to back in the order given.
    fn tensor(mut self, name: &str, bytes: u64) -> Self {
        self.tensors.push((name.to_string(), self.data_len));
        self.data_len += bytes;
        self
    }

    fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.n_kv.to_le_bytes());
        out.extend_from_slice(&self.kv);
        for (name, offset) in &self.tensors {
            string(&mut out, name);
            out.extend_from_slice(&2u32.to_le_bytes());
            out.extend_from_slice(&16u64.to_le_bytes());
            out.extend_from_slice(&4u64.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        out.resize(out.len().div_ceil(32) * 32, 0);
        out.resize(out.len() + self.data_len as usize, 0);
        out
    }
}

/// A two-layer llama-like model: embd 64, 4 heads, 2 KV heads, vocab 10.
fn tiny() -> Builder {
    Builder::default()
        .str("general.architecture", "llama")
        .str("general.name", "skipped")
        .u32("llama.block_count", 2)
        .u32("llama.embedding_length", 64)
        .u32("llama.attention.head_count", 4)
        .u32("llama.attention.head_count_kv", 2)
        .str_array("tokenizer.ggml.tokens", 10)
        .tensor("token_embd.weight", 1000)
        .tensor("blk.0.attn_q.weight", 300)
        .tensor("blk.0.ffn_up.weight", 200)
        .tensor("blk.1.attn_q.weight", 700)
        .tensor("output_norm.weight", 64)
}

fn parse_bytes(bytes: &[u8]) -> Result<ModelFacts, Problem> {
    parse(Cursor::new(bytes), bytes.len() as u64)
}

#[test]
fn a_tiny_model_reads_back() -> Result<(), Problem> {
    let bytes = tiny().build();
    let facts = parse_bytes(&bytes)?;
    assert_eq!(
        facts,
        ModelFacts {
            arch: "llama".into(),
            n_layers: 2,
            layer_bytes: vec![500, 700],
            other_bytes: 1064,
            n_embd: 64,
            n_vocab: 10,
            // head dim 16 × 2 KV heads, for K and V, 2 bytes each.
            kv_bytes_per_token_per_layer: 2 * (32 + 32),
            file_bytes: bytes.len() as u64,
        }
    );
    Ok(())
}

#[test]
fn explicit_head_sizes_and_per_layer_kv_heads_win() -> Result<(), Problem> {
    let bytes = tiny()
        .u32("llama.attention.key_length", 128)
        .u32("llama.attention.value_length", 64)
        .u32_array("llama.attention.head_count_kv", &[1, 3, 2])
        .build();
    // The array comes after the scalar, so it replaces it; its max (3) counts.
    assert_eq!(
        parse_bytes(&bytes)?.kv_bytes_per_token_per_layer,
        2 * (128 * 3 + 64 * 3)
    );
    Ok(())
}

#[test]
fn vocab_size_is_the_fallback() -> Result<(), Problem> {
    let bytes = Builder::default()
        .str("general.architecture", "llama")
        .u32("llama.block_count", 1)
        .u32("llama.embedding_length", 64)
        .u32("llama.attention.head_count", 4)
        .u32("llama.vocab_size", 32000)
        .tensor("blk.0.x", 10)
        .build();
    assert_eq!(parse_bytes(&bytes)?.n_vocab, 32000);
    Ok(())
}

#[test]
fn missing_keys_are_named() {
    let bytes = Builder::default()
        .str("general.architecture", "llama")
        .u32("llama.embedding_length", 64)
        .build();
    let err = parse_bytes(&bytes).map(drop).map_err(|e| e.to_string());
    assert_eq!(
        err,
        Err("metadata key `llama.block_count` is missing".into())
    );
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = tiny().build();
    // A cut inside the last tensor (output_norm, 64 bytes) only shrinks it;
    // any earlier cut loses header bytes or leaves a tensor past the end.
    for len in 0..bytes.len() {
        let parsed = parse_bytes(&bytes[..len]).is_ok();
        assert_eq!(parsed, len >= bytes.len() - 64, "a file cut at {len} bytes");
    }
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let good = tiny().build();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..2000 {
        let mut bytes = good.clone();
        // Flip a few header bytes (xorshift, so the test is deterministic).
        for _ in 0..1 + round % 4 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed % 400) as usize % bytes.len();
            bytes[at] ^= (seed >> 32) as u8 | 1;
        }
        let _ = parse_bytes(&bytes);
    }
    assert!(matches!(
        parse_bytes(b"GGML\x03\0\0\0"),
        Err(Problem::NotGguf(_))
    ));
}

#[test]
fn absurd_counts_are_refused_before_allocating() {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    assert!(matches!(
        parse_bytes(&bytes),
        Err(Problem::TooLarge {
            what: "the tensor count",
            ..
        })
    ));

    let mut huge_string = tiny().build();
    // The first key's length field sits right after the 24-byte preamble.
    huge_string[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(
        parse_bytes(&huge_string),
        Err(Problem::TooLarge {
            what: "a metadata key",
            ..
        })
    ));

    let huge_array = Builder::default()
        .str_array("x", 0)
        .build()
        .into_iter()
        .take(24 + 8 + 1 + 4 + 4)
        .chain((1u64 << 30).to_le_bytes())
        .collect::<Vec<_>>();
    assert!(matches!(
        parse_bytes(&huge_array),
        Err(Problem::TooLarge {
            what: "an array",
            ..
        })
    ));
}

/// Checks a real model downloaded by `.ci/setup`, if it is there.
fn check_real(file: &str, arch: &str, n_layers: u32) -> Result<(), GgufError> {
    let Some(home) = std::env::var_os("HOME") else {
        return Ok(());
    };
    let path = Path::new(&home).join(".cache/herd/models").join(file);
    if !path.exists() {
        println!(
            "skipped: {} is absent (.ci/setup downloads it)",
            path.display()
        );
        return Ok(());
    }
    let facts = read_facts(&path)?;
    assert_eq!(facts.arch, arch);
    assert_eq!(facts.n_layers, n_layers);
    assert_eq!(facts.layer_bytes.len(), n_layers as usize);
    assert!(facts.layer_bytes.iter().all(|&b| b > 0), "{facts:?}");
    let weights = facts.layer_bytes.iter().sum::<u64>() + facts.other_bytes;
    assert!(
        weights <= facts.file_bytes,
        "{weights} > {}",
        facts.file_bytes
    );
    assert!(
        weights * 10 >= facts.file_bytes * 9,
        "{weights} of {}",
        facts.file_bytes
    );
    assert!(facts.n_embd > 0 && facts.n_vocab > 1000 && facts.kv_bytes_per_token_per_layer > 0);
    Ok(())
}

#[test]
fn smollm2_reads() -> Result<(), GgufError> {
    check_real("SmolLM2-135M-Instruct.Q4_1.gguf", "llama", 30)
}

#[test]
fn gemma3_reads() -> Result<(), GgufError> {
    check_real("gemma-3-270m-q4_k_m.gguf", "gemma3", 18)
}
