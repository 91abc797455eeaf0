//! The sampling fields beyond temperature and top-p: `n`, `logit_bias`,
//! log-probabilities, the `top_k` / `min_p` / `repetition_penalty`
//! extensions, and the fields herd refuses because it cannot honor them.

use crate::openai::request::{ChatCompletionRequest, CommonParams, CompletionRequest};
use crate::openai::ApiError;
use std::collections::BTreeMap;

/// Choices per request, whatever the deployment allows (each also needs a slot).
pub const MAX_N: i64 = 128;
/// Alternatives per token, as OpenAI's chat API allows.
pub const MAX_TOP_LOGPROBS: i64 = 20;
/// Entries in `logit_bias`.
pub const MAX_LOGIT_BIAS: usize = 1024;

/// The extension fields, checked.
pub struct Extras {
    pub top_k: u32,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub logit_bias: Vec<(i32, f32)>,
    pub n: u32,
}

pub fn extras(p: &CommonParams) -> Result<Extras, ApiError> {
    let n = match p.n {
        None => 1,
        Some(n) if (1..=MAX_N).contains(&n) => n as u32,
        Some(n) => {
            return Err(ApiError::invalid(
                "n",
                format!("`n` must be between 1 and {MAX_N}, got {n}"),
            ))
        }
    };
    // -1 and 0 both mean "off", as in vLLM and llama-server.
    let top_k = match p.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => u32::try_from(k).unwrap_or(u32::MAX),
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("`top_k` must be a positive number of tokens (or 0 / -1 for all), got {k}"),
            ))
        }
    };
    let min_p = p.min_p.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&min_p) {
        return Err(ApiError::invalid(
            "min_p",
            format!("`min_p` must be between 0 and 1, got {min_p}"),
        ));
    }
    let repetition_penalty = p.repetition_penalty.unwrap_or(1.0);
    if !(repetition_penalty > 0.0 && repetition_penalty <= 2.0) {
        return Err(ApiError::invalid(
            "repetition_penalty",
            format!("`repetition_penalty` must be greater than 0 and at most 2 (1 is off), got {repetition_penalty}"),
        ));
    }
    let logit_bias = logit_bias(p)?;
    Ok(Extras {
        top_k,
        min_p: min_p as f32,
        repetition_penalty: repetition_penalty as f32,
        logit_bias,
        n,
    })
}

/// By token id (one id written twice, as "5" and "05", is refused); ids are
/// checked against the vocabulary once the model is known.
fn logit_bias(p: &CommonParams) -> Result<Vec<(i32, f32)>, ApiError> {
    let Some(map) = &p.logit_bias else {
        return Ok(Vec::new());
    };
    if map.len() > MAX_LOGIT_BIAS {
        return Err(ApiError::invalid(
            "logit_bias",
            format!(
                "`logit_bias` may hold at most {MAX_LOGIT_BIAS} tokens, got {}",
                map.len()
            ),
        ));
    }
    let mut biases = BTreeMap::new();
    for (key, &bias) in map {
        let id = key
            .trim()
            .parse::<i32>()
            .ok()
            .filter(|&id| id >= 0)
            .ok_or_else(|| {
                ApiError::invalid(
                    "logit_bias",
                    format!("`logit_bias` keys must be token ids, got {key:?}"),
                )
            })?;
        if !(-100.0..=100.0).contains(&bias) {
            return Err(ApiError::invalid(
                "logit_bias",
                format!("`logit_bias[{key:?}]` must be between -100 and 100, got {bias}"),
            ));
        }
        if biases.insert(id, bias as f32).is_some() {
            return Err(ApiError::invalid(
                "logit_bias",
                format!("`logit_bias` names token {id} twice"),
            ));
        }
    }
    Ok(biases.into_iter().collect())
}

/// Chat's `logprobs` (bool) and `top_logprobs` (0..=20): alternatives per token, if asked.
pub fn chat_logprobs(req: &ChatCompletionRequest) -> Result<Option<u32>, ApiError> {
    let top = match req.top_logprobs {
        None => None,
        Some(k) if (0..=MAX_TOP_LOGPROBS).contains(&k) => Some(k as u32),
        Some(k) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
            ))
        }
    };
    match (req.logprobs.unwrap_or(false), top) {
        (true, top) => Ok(Some(top.unwrap_or(0))),
        (false, Some(k)) if k > 0 => Err(ApiError::invalid(
            "top_logprobs",
            "`top_logprobs` needs `logprobs: true`",
        )),
        (false, _) => Ok(None),
    }
}

/// Chat fields for outputs herd does not produce.
pub fn chat_unsupported(req: &ChatCompletionRequest) -> Result<(), ApiError> {
    if let Some(m) = &req.modalities {
        if m.iter().any(|m| m != "text") {
            return Err(ApiError::invalid(
                "modalities",
                format!("`modalities` may only be [\"text\"] here, got {m:?}"),
            ));
        }
    }
    if req.audio.as_ref().is_some_and(|a| !a.is_null()) {
        return Err(ApiError::invalid("audio", "audio output is not supported"));
    }
    if req
        .web_search_options
        .as_ref()
        .is_some_and(|a| !a.is_null())
    {
        return Err(ApiError::invalid(
            "web_search_options",
            "web search is not supported",
        ));
    }
    if req.prediction.as_ref().is_some_and(|a| !a.is_null()) {
        return Err(ApiError::invalid(
            "prediction",
            "predicted outputs are not supported",
        ));
    }
    Ok(())
}

/// Completions' `logprobs` (an int, 0..=20) and the fields herd cannot honor.
pub fn completion_fields(req: &CompletionRequest) -> Result<Option<u32>, ApiError> {
    if req.echo == Some(true) {
        return Err(ApiError::invalid(
            "echo",
            "`echo` is not supported; the prompt is yours already",
        ));
    }
    if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid(
            "suffix",
            "`suffix` (insertion) is not supported by this model",
        ));
    }
    if let Some(b) = req.best_of {
        let n = req.common.n.unwrap_or(1);
        if b != n {
            return Err(ApiError::invalid(
                "best_of",
                format!("`best_of` must equal `n` ({n}): choosing the best of more is not supported, got {b}"),
            ));
        }
    }
    match req.logprobs {
        None => Ok(None),
        Some(k) if (0..=MAX_TOP_LOGPROBS).contains(&k) => Ok(Some(k as u32)),
        Some(k) => Err(ApiError::invalid(
            "logprobs",
            format!("`logprobs` must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
        )),
    }
}
