//! What the engine tests share: where the default model is.

#![allow(dead_code)]

use std::path::PathBuf;

/// `HERD_CACHE` (default `~/.cache/herd`), where `.ci/setup` puts the models.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("HERD_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/herd"),
        PathBuf::from,
    )
}

/// The default model, or `HERD_TEST_MODEL`.
pub fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("HERD_TEST_MODEL") {
        return PathBuf::from(p);
    }
    cache_dir().join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}
