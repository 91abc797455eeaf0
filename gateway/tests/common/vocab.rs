#![allow(dead_code)] // each test binary uses a part of it

//! The test model's tokenizer, loaded once per test binary (llama.cpp's
//! backend may only be initialised once per process), to find token ids.

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use std::sync::OnceLock;

pub struct Vocab {
    model: LlamaModel,
    _backend: LlamaBackend,
}

static VOCAB: OnceLock<Result<Vocab, String>> = OnceLock::new();

pub fn vocab() -> Result<&'static Vocab, String> {
    VOCAB
        .get_or_init(|| {
            let backend = LlamaBackend::init().map_err(|e| e.to_string())?;
            let model = LlamaModel::load_from_file(
                &backend,
                crate::common::model_path(),
                &LlamaModelParams::default(),
            )
            .map_err(|e| e.to_string())?;
            Ok(Vocab {
                model,
                _backend: backend,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

impl Vocab {
    /// As the engine tokenizes a text prompt (special tokens added and parsed).
    pub fn tokenize(&self, text: &str) -> Vec<i32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), true, true)
            .into_iter()
            .map(|t| t.0)
            .collect()
    }

    /// The id of the token whose text is exactly `bytes`.
    pub fn id_of(&self, bytes: &[u8]) -> Option<i32> {
        let vocab = self.model.vocab();
        vocab
            .tokens()
            .find(|&t| vocab.token_to_piece(t, false, None) == bytes)
            .map(|t| t.0)
    }

    pub fn piece(&self, id: i32) -> Vec<u8> {
        self.model
            .vocab()
            .token_to_piece(LlamaToken(id), false, None)
    }
}
