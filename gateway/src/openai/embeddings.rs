//! `/v1/embeddings`: the request as clients send it, its validation into
//! [`ValidEmbedRequest`], and the answer in OpenAI's shape (vectors as JSON
//! floats, or base64 of their little-endian f32 bytes, as OpenAI sends them).

use super::ApiError;
use herd_engines::{EmbedInput, Embeddings};
use serde::{Deserialize, Serialize};

/// Most inputs in one request (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;
/// Most text in one request, over all inputs.
pub const MAX_INPUT_BYTES: usize = 8 << 20;

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: RawInput,
    pub encoding_format: Option<String>,
    pub dimensions: Option<i64>,
    /// The end user, recorded in usage accounting (as for chat).
    #[serde(default)]
    pub user: Option<String>,
}

/// Every form OpenAI accepts: a string, strings, token ids, lists of token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i64>),
    TokenLists(Vec<Vec<i64>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Float,
    Base64,
}

#[derive(Debug)]
pub struct ValidEmbedRequest {
    pub model: String,
    pub inputs: Vec<EmbedInput>,
    pub encoding: Encoding,
    /// Asked length of each vector; checked against the model once it is known.
    pub dimensions: Option<u32>,
}

pub fn validate(req: EmbeddingRequest) -> Result<ValidEmbedRequest, ApiError> {
    let inputs: Vec<EmbedInput> = match req.input {
        RawInput::Text(t) => vec![EmbedInput::Text(t)],
        RawInput::Texts(v) => v.into_iter().map(EmbedInput::Text).collect(),
        RawInput::Tokens(t) => vec![EmbedInput::Tokens(token_ids(0, t)?)],
        RawInput::TokenLists(v) => v
            .into_iter()
            .enumerate()
            .map(|(i, t)| token_ids(i, t).map(EmbedInput::Tokens))
            .collect::<Result<_, _>>()?,
    };
    if inputs.is_empty() {
        return Err(ApiError::invalid("input", "`input` must not be empty"));
    }
    if inputs.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            "input",
            format!(
                "`input` may hold at most {MAX_INPUTS} items, got {}",
                inputs.len()
            ),
        ));
    }
    let mut bytes = 0usize;
    for (i, input) in inputs.iter().enumerate() {
        match input {
            EmbedInput::Text(t) if t.is_empty() => {
                return Err(ApiError::invalid(
                    "input",
                    format!("input[{i}] is an empty string; every input must have text"),
                ))
            }
            EmbedInput::Tokens(t) if t.is_empty() => {
                return Err(ApiError::invalid(
                    "input",
                    format!("input[{i}] is an empty list of tokens"),
                ))
            }
            EmbedInput::Text(t) => bytes += t.len(),
            EmbedInput::Tokens(_) => {}
        }
    }
    if bytes > MAX_INPUT_BYTES {
        return Err(ApiError::invalid(
            "input",
            format!("`input` holds {bytes} bytes of text; at most {MAX_INPUT_BYTES} are taken in one request"),
        ));
    }
    let encoding = match req.encoding_format.as_deref() {
        None | Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("`encoding_format` must be \"float\" or \"base64\", got {other:?}"),
            ))
        }
    };
    let dimensions = match req.dimensions {
        None => None,
        Some(d) if d >= 1 => Some(u32::try_from(d).unwrap_or(u32::MAX)),
        Some(d) => {
            return Err(ApiError::invalid(
                "dimensions",
                format!("`dimensions` must be at least 1, got {d}"),
            ))
        }
    };
    Ok(ValidEmbedRequest {
        model: req.model,
        inputs,
        encoding,
        dimensions,
    })
}

fn token_ids(index: usize, ids: Vec<i64>) -> Result<Vec<i32>, ApiError> {
    ids.into_iter()
        .map(|t| {
            i32::try_from(t).map_err(|_| {
                ApiError::invalid(
                    "input",
                    format!("input[{index}] has token id {t}, which is not a valid token id"),
                )
            })
        })
        .collect()
}

/// `dimensions` is honoured only as the model's own length: shortening a
/// vector (and renormalizing) is right only for models trained for it
/// (Matryoshka), and herd does not know of any it serves that is.
pub fn check_dimensions(asked: Option<u32>, native: u32, model: &str) -> Result<(), ApiError> {
    match asked {
        Some(d) if d != native => Err(ApiError::invalid(
            "dimensions",
            format!("model `{model}` makes {native}-dimensional embeddings and cannot shorten them; `dimensions` must be {native} or left out, got {d}"),
        )),
        _ => Ok(()),
    }
}

#[derive(Debug, Serialize)]
pub struct EmbeddingList {
    pub object: &'static str,
    pub data: Vec<EmbeddingItem>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

#[derive(Debug, Serialize)]
pub struct EmbeddingItem {
    pub object: &'static str,
    pub index: usize,
    pub embedding: Vector,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u32,
    pub total_tokens: u32,
}

pub fn answer(model: &str, out: Embeddings, encoding: Encoding) -> EmbeddingList {
    let data = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| EmbeddingItem {
            object: "embedding",
            index,
            embedding: match encoding {
                Encoding::Float => Vector::Float(v),
                Encoding::Base64 => Vector::Base64(base64_f32(&v)),
            },
        })
        .collect();
    EmbeddingList {
        object: "list",
        data,
        model: model.to_string(),
        usage: EmbeddingUsage {
            prompt_tokens: out.prompt_tokens,
            total_tokens: out.prompt_tokens,
        },
    }
}

/// Standard base64 (with padding) of the floats' little-endian bytes.
fn base64_f32(v: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_encodings() {
        // 1.0f32 = 00 00 80 3f; [1.0, -2.0] = 00 00 80 3f 00 00 00 c0
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[1.0, -2.0]), "AACAPwAAAMA=");
        assert_eq!(base64_f32(&[]), "");
    }

    fn req(input: RawInput) -> EmbeddingRequest {
        EmbeddingRequest {
            model: "m".into(),
            input,
            encoding_format: None,
            dimensions: None,
            user: None,
        }
    }

    #[test]
    fn refuses_empty_and_oversized_inputs() {
        let code = |r: Result<ValidEmbedRequest, ApiError>| r.err().map(|e| e.kind());
        assert_eq!(
            code(validate(req(RawInput::Text(String::new())))),
            Some("invalid_value")
        );
        assert_eq!(
            code(validate(req(RawInput::Texts(vec![])))),
            Some("invalid_value")
        );
        assert_eq!(
            code(validate(req(RawInput::TokenLists(vec![vec![]])))),
            Some("invalid_value")
        );
        assert_eq!(
            code(validate(req(RawInput::Tokens(vec![1 << 40])))),
            Some("invalid_value")
        );
        let many = vec!["a".to_string(); MAX_INPUTS + 1];
        assert_eq!(
            code(validate(req(RawInput::Texts(many)))),
            Some("invalid_value")
        );
        let ok = validate(req(RawInput::TokenLists(vec![vec![1, 2], vec![3]])));
        assert!(ok.is_ok_and(|v| v.inputs.len() == 2 && v.encoding == Encoding::Float));
    }

    #[test]
    fn dimensions_only_as_the_model_makes_them() {
        assert!(check_dimensions(None, 384, "m").is_ok());
        assert!(check_dimensions(Some(384), 384, "m").is_ok());
        assert!(check_dimensions(Some(128), 384, "m").is_err());
    }
}

#[cfg(test)]
mod openapi_examples {
    use super::{validate, EmbeddingRequest};

    /// The examples in openapi.json are requests herd takes.
    #[test]
    fn the_documented_examples_pass_validation() -> Result<(), serde_json::Error> {
        let doc: serde_json::Value = serde_json::from_str(include_str!("../http/openapi.json"))?;
        let examples = doc["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]
            ["application/json"]["examples"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert!(examples.len() >= 3);
        for (name, example) in examples {
            let req: EmbeddingRequest = serde_json::from_value(example["value"].clone())?;
            assert!(validate(req).is_ok(), "example {name}");
        }
        Ok(())
    }
}
