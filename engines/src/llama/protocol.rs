//! The framed protocol between the gateway and an engine host child: one JSON
//! object per line over a Unix socket. Request ids are chosen by the gateway.

use crate::{
    Delta, EmbedInput, Embeddings, EngineError, FinishReason, ModelInfo, PreparedPrompt,
    PromptInput, SamplingParams, Usage,
};
use serde::{Deserialize, Serialize};

pub type RequestId = u64;

/// Gateway → engine host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ToHost {
    Prepare {
        id: RequestId,
        input: PromptInput,
    },
    Generate {
        id: RequestId,
        tokens: Vec<i32>,
        params: SamplingParams,
    },
    Cancel {
        id: RequestId,
    },
    /// Embed every input (an embedding host only).
    Embed {
        id: RequestId,
        inputs: Vec<EmbedInput>,
    },
}

/// Engine host → gateway.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum FromHost {
    Ready {
        info: ModelInfo,
    },
    Prepared {
        id: RequestId,
        result: Result<PreparedPrompt, EngineError>,
    },
    Delta {
        id: RequestId,
        #[serde(flatten)]
        delta: Delta,
    },
    Finished {
        id: RequestId,
        reasons: Vec<FinishReason>,
        usage: Usage,
    },
    Failed {
        id: RequestId,
        error: EngineError,
    },
    Embedded {
        id: RequestId,
        result: Result<Embeddings, EngineError>,
    },
    Stats {
        slots_busy: u32,
        kv_used_tokens: u64,
        kv_capacity_tokens: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_single_lines() -> Result<(), serde_json::Error> {
        let msgs = vec![
            FromHost::Delta {
                id: 7,
                delta: Delta {
                    index: 2,
                    text: "a\nb".into(),
                    logprobs: vec![crate::TokenLogprob {
                        bytes: vec![0xe2, 0x98],
                        logprob: -0.5,
                        top: vec![crate::TopLogprob {
                            bytes: b"x".to_vec(),
                            logprob: -0.25,
                        }],
                    }],
                },
            },
            FromHost::Prepared {
                id: 1,
                result: Err(EngineError::NoChatTemplate),
            },
            FromHost::Finished {
                id: 2,
                reasons: vec![FinishReason::Length, FinishReason::Stop],
                usage: Usage {
                    prompt_tokens: 3,
                    completion_tokens: 4,
                    cached_tokens: 0,
                },
            },
        ];
        for m in msgs {
            let line = serde_json::to_string(&m)?;
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<FromHost>(&line)?, m);
        }
        Ok(())
    }
}
