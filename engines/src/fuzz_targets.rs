//! Fuzz harnesses for the engine host's protocol (JSON lines, both ways) and
//! the text filters every generated token goes through. Each takes raw bytes
//! and asserts what must hold for every input (a failed assertion is a
//! finding). `gateway/fuzz` runs them under libFuzzer; the gateway's
//! `tests/fuzz.rs` runs them over the seed corpus in every `cargo test`.
//! Not an API.

use crate::llama::protocol::{FromHost, ToHost};
use crate::text::{StopFilter, StopOutcome, Utf8Holdback};
use crate::{
    ChatMessage, EngineError, FinishReason, Grammar, LayerDevice, ModelInfo, PreparedPrompt,
    PromptInput, SamplingParams, Usage,
};
use arbitrary::{Arbitrary, Result, Unstructured};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;

/// The engine host reading its commands: every line it can decode must
/// encode back to one line that decodes to the same command.
pub fn to_host_lines(data: &[u8]) {
    for msg in decoded_lines::<ToHost>(data) {
        // The gateway only sends validated, finite sampling values; an
        // out-of-range number in the text decodes to an infinity that JSON
        // cannot carry back.
        if let ToHost::Generate { params, .. } = &msg {
            if !finite(params) {
                continue;
            }
        }
        assert_round_trip(&msg);
    }
}

/// The gateway reading the engine host's events, likewise.
pub fn from_host_lines(data: &[u8]) {
    for msg in decoded_lines::<FromHost>(data) {
        assert_round_trip(&msg);
    }
}

/// Any command or event the two sides can build crosses the socket intact.
pub fn protocol_round_trip(data: &[u8]) {
    let mut u = Unstructured::new(data);
    while !u.is_empty() {
        let sent = if u.arbitrary().unwrap_or(false) {
            to_host(&mut u).map(|m| assert_round_trip(&m))
        } else {
            from_host(&mut u).map(|m| assert_round_trip(&m))
        };
        if sent.is_err() {
            return;
        }
    }
}

/// Lines as `BufRead::lines` splits them (a line that is not UTF-8 ends the
/// reader, so it is not passed on), decoded where they decode.
fn decoded_lines<T: DeserializeOwned>(data: &[u8]) -> impl Iterator<Item = T> + '_ {
    data.split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .map_while(|l| std::str::from_utf8(l).ok())
        .filter_map(|l| serde_json::from_str(l).ok())
}

fn assert_round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(msg: &T) {
    let line = serde_json::to_string(msg);
    assert!(line.is_ok(), "{msg:?} does not encode: {line:?}");
    let line = line.unwrap_or_default();
    assert!(!line.contains('\n'), "{msg:?} encodes to several lines");
    let back = serde_json::from_str::<T>(&line).map_err(|e| e.to_string());
    assert_eq!(back.as_ref(), Ok(msg), "{line}");
}

fn finite(p: &SamplingParams) -> bool {
    [
        p.temperature,
        p.top_p,
        p.presence_penalty,
        p.frequency_penalty,
    ]
    .iter()
    .all(|f| f.is_finite())
}

fn to_host(u: &mut Unstructured) -> Result<ToHost> {
    let id = u.arbitrary()?;
    Ok(match u.int_in_range(0..=2)? {
        0 => ToHost::Prepare {
            id,
            input: if u.arbitrary()? {
                PromptInput::Text(u.arbitrary()?)
            } else {
                let n = u.arbitrary_len::<(String, String)>()?;
                let messages = (0..n)
                    .map(|_| {
                        Ok(ChatMessage {
                            role: u.arbitrary()?,
                            content: u.arbitrary()?,
                        })
                    })
                    .collect::<Result<_>>()?;
                PromptInput::Chat(messages)
            },
        },
        1 => ToHost::Generate {
            id,
            tokens: u.arbitrary()?,
            params: SamplingParams {
                temperature: finite_f32(u)?,
                top_p: finite_f32(u)?,
                max_tokens: u.arbitrary()?,
                stop: u.arbitrary()?,
                seed: u.arbitrary()?,
                presence_penalty: finite_f32(u)?,
                frequency_penalty: finite_f32(u)?,
                top_k: u.arbitrary()?,
                min_p: finite_f32(u)?,
                repetition_penalty: finite_f32(u)?,
                logit_bias: vec![(u.arbitrary()?, finite_f32(u)?)],
                logprobs: u.arbitrary()?,
                n: u.arbitrary()?,
                grammar: Option::<String>::arbitrary(u)?.map(|gbnf| Grammar { gbnf }),
            },
        },
        _ => ToHost::Cancel { id },
    })
}

fn finite_f32(u: &mut Unstructured) -> Result<f32> {
    let f = f32::arbitrary(u)?;
    Ok(if f.is_finite() { f } else { 0.0 })
}

/// Any engine error, with any text (the SSE harness uses it too).
pub fn engine_error(u: &mut Unstructured) -> Result<EngineError> {
    Ok(match u.int_in_range(0..=6)? {
        0 => EngineError::NoChatTemplate,
        1 => EngineError::Template(u.arbitrary()?),
        2 => EngineError::Unavailable(u.arbitrary()?),
        3 => EngineError::Crashed(u.arbitrary()?),
        4 => EngineError::PromptTooLong {
            ctx: u.arbitrary()?,
            at_least: u.arbitrary()?,
        },
        5 => EngineError::ClientTooSlow {
            behind: u.arbitrary()?,
        },
        _ => EngineError::Internal(u.arbitrary()?),
    })
}

fn from_host(u: &mut Unstructured) -> Result<FromHost> {
    let id = u.arbitrary()?;
    Ok(match u.int_in_range(0..=5)? {
        0 => {
            let n = u.arbitrary_len::<(String, u32, u32)>()?;
            let layout = (0..n)
                .map(|_| {
                    Ok(LayerDevice {
                        device: u.arbitrary()?,
                        layers: u.arbitrary()?..u.arbitrary()?,
                    })
                })
                .collect::<Result<_>>()?;
            FromHost::Ready {
                info: ModelInfo {
                    ctx_size: u.arbitrary()?,
                    slots: u.arbitrary()?,
                    has_chat_template: u.arbitrary()?,
                    n_params: u.arbitrary()?,
                    n_vocab: u.arbitrary()?,
                    layout,
                    embedding: None,
                    tool_format: if u.arbitrary()? {
                        crate::ToolFormat::Llama3
                    } else {
                        crate::ToolFormat::Hermes
                    },
                    max_token_bytes: u.arbitrary()?,
                },
            }
        }
        1 => FromHost::Prepared {
            id,
            result: if u.arbitrary()? {
                Ok(PreparedPrompt {
                    tokens: u.arbitrary()?,
                })
            } else {
                Err(engine_error(u)?)
            },
        },
        2 => FromHost::Delta {
            id,
            delta: crate::Delta {
                index: u.arbitrary()?,
                text: u.arbitrary()?,
                logprobs: Vec::new(),
            },
        },
        3 => FromHost::Finished {
            id,
            reasons: vec![if u.arbitrary()? {
                FinishReason::Stop
            } else {
                FinishReason::Length
            }],
            usage: Usage {
                prompt_tokens: u.arbitrary()?,
                completion_tokens: u.arbitrary()?,
                cached_tokens: u.arbitrary()?,
            },
        },
        4 => FromHost::Failed {
            id,
            error: engine_error(u)?,
        },
        _ => FromHost::Stats {
            slots_busy: u.arbitrary()?,
            kv_used_tokens: u.arbitrary()?,
            kv_capacity_tokens: u.arbitrary()?,
        },
    })
}

/// Token bytes → text → stop filter, as the engine host's slot runs them:
/// the text is what lossy UTF-8 decoding of all the bytes gives (less a
/// character cut at the very end, which is dropped), never split inside a
/// character, and it stops exactly where a stop sequence first
/// appears in what was generated so far, without sending any of it.
pub fn token_text(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(stops) = Vec::<String>::arbitrary(&mut u) else {
        return;
    };
    let Ok(tokens) = Vec::<Vec<u8>>::arbitrary_take_rest(u) else {
        return;
    };
    // One text per token, then what the holdback releases at the end (as `batch.rs` does).
    let mut utf8 = Utf8Holdback::default();
    let texts: Vec<String> = tokens.iter().map(|t| utf8.push(t)).collect();
    utf8.finish();
    let all = tokens.concat();
    let mut expected = String::from_utf8_lossy(&all).into_owned();
    let cut_at_end = all
        .utf8_chunks()
        .last()
        .is_some_and(|c| std::str::from_utf8(c.invalid()).is_err_and(|e| e.error_len().is_none()));
    if cut_at_end {
        expected.pop();
    }
    assert_eq!(texts.concat(), expected);

    let mut filter = StopFilter::new(stops.clone());
    let stops: Vec<&String> = stops.iter().filter(|s| !s.is_empty()).collect();
    let (mut generated, mut sent) = (String::new(), String::new());
    for text in &texts {
        generated.push_str(text);
        let first_stop = stops
            .iter()
            .filter_map(|s| generated.find(s.as_str()))
            .min();
        match filter.push(text) {
            StopOutcome::Emit(out) => {
                assert_eq!(first_stop, None, "{generated:?} holds a stop");
                sent.push_str(&out);
                assert!(generated.starts_with(&sent));
            }
            StopOutcome::Stopped(last) => {
                sent.push_str(&last);
                assert_eq!(
                    Some(sent.len()),
                    first_stop,
                    "{generated:?} sent as {sent:?}"
                );
                assert_eq!(generated.get(..sent.len()), Some(sent.as_str()));
                return;
            }
        }
    }
    sent.push_str(&filter.finish());
    assert_eq!(sent, generated);
}
