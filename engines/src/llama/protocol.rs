//! The framed protocol between the gateway and an engine host child: one JSON
//! object per line over a Unix socket. Request ids are chosen by the gateway.
//! The host opens two connections: events come back on the first; commands
//! go on the first too, except prompts too big for the small-prompt lane
//! ([`ToHost::is_bulk`]), which go on the second, so that no other request's
//! command waits behind their bytes.

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

impl ToHost {
    /// A prompt the second connection carries: one the small-prompt worker
    /// would not take either (`prepare_pool`).
    pub fn is_bulk(&self) -> bool {
        matches!(self, ToHost::Prepare { input, .. }
            if super::prepare_pool::prompt_bytes(input) > super::prepare_pool::SMALL_PROMPT_BYTES)
    }
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

    #[test]
    fn only_prompts_over_the_small_lane_go_on_the_second_connection() {
        let prepare = |bytes: usize| ToHost::Prepare {
            id: 1,
            input: crate::PromptInput::Text("x".repeat(bytes)),
        };
        let small = super::super::prepare_pool::SMALL_PROMPT_BYTES;
        assert!(!prepare(small).is_bulk());
        assert!(prepare(small + 1).is_bulk());
        assert!(!ToHost::Cancel { id: 1 }.is_bulk());
        let tokens = ToHost::Generate {
            id: 1,
            tokens: vec![0; 100_000],
            params: crate::SamplingParams::default(),
        };
        assert!(
            !tokens.is_bulk(),
            "a Generate stays ordered with its Cancel"
        );
    }
}
