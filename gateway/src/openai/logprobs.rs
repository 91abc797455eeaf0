//! Log-probabilities as OpenAI returns them: per token in chat
//! (`choices[].logprobs.content[]`), and in the legacy columns of
//! `/v1/completions` (`tokens`, `token_logprobs`, `top_logprobs`,
//! `text_offset`). Values come from the engine: the log-softmax of the
//! model's raw logits, before `logit_bias`, penalties and temperature.

use herd_engines::TokenLogprob;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

/// A token's text: lossy where the token is part of a multi-byte character
/// (its exact bytes are in `bytes`).
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

impl ChatLogprobs {
    pub fn extend(&mut self, tokens: &[TokenLogprob]) {
        self.content.extend(tokens.iter().map(|t| {
            ChatTokenLogprob {
                token: text(&t.bytes),
                logprob: t.logprob,
                bytes: t.bytes.clone(),
                top_logprobs: t
                    .top
                    .iter()
                    .map(|a| ChatTopLogprob {
                        token: text(&a.bytes),
                        logprob: a.logprob,
                        bytes: a.bytes.clone(),
                    })
                    .collect(),
            }
        }));
    }

    pub fn of(tokens: &[TokenLogprob]) -> Self {
        let mut l = Self::default();
        l.extend(tokens);
        l
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    /// Per token: its top alternatives and itself, token → logprob.
    pub top_logprobs: Vec<TopMap>,
    /// Where each token starts in the choice's text, in characters.
    pub text_offset: Vec<usize>,
}

/// Token → logprob, most likely first (a JSON object, in this order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopMap(pub Vec<(String, f32)>);

impl Serialize for TopMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (token, logprob) in &self.0 {
            map.serialize_entry(token, logprob)?;
        }
        map.end()
    }
}

impl CompletionLogprobs {
    /// Adds the tokens of a delta whose text starts `start` characters into the choice's text.
    pub fn extend(&mut self, tokens: &[TokenLogprob], start: usize, delta_text: &str) {
        let end = start + delta_text.chars().count();
        let mut bytes = Vec::new();
        for t in tokens {
            // Whole characters before this token in the delta (a cut one does not count yet).
            let before = match std::str::from_utf8(&bytes) {
                Ok(s) => s.chars().count(),
                Err(e) => String::from_utf8_lossy(&bytes[..e.valid_up_to()])
                    .chars()
                    .count(),
            };
            self.text_offset.push((start + before).min(end));
            bytes.extend_from_slice(&t.bytes);
            let token = text(&t.bytes);
            let mut top: Vec<(String, f32)> =
                t.top.iter().map(|a| (text(&a.bytes), a.logprob)).collect();
            // As OpenAI: the sampled token is always among them.
            if !top.iter().any(|(s, _)| *s == token) {
                top.push((token.clone(), t.logprob));
            }
            self.top_logprobs.push(TopMap(top));
            self.tokens.push(token);
            self.token_logprobs.push(t.logprob);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_engines::TopLogprob;

    fn lp(bytes: &[u8], logprob: f32, top: &[(&[u8], f32)]) -> TokenLogprob {
        TokenLogprob {
            bytes: bytes.to_vec(),
            logprob,
            top: top
                .iter()
                .map(|&(b, l)| TopLogprob {
                    bytes: b.to_vec(),
                    logprob: l,
                })
                .collect(),
        }
    }

    #[test]
    fn completion_columns_line_up_with_the_text() {
        let mut c = CompletionLogprobs::default();
        let snow = "☃".as_bytes();
        c.extend(&[lp(b"Hi", -0.1, &[(b"Hi", -0.1), (b"Yo", -2.0)])], 0, "Hi");
        c.extend(
            &[
                lp(b" ", -0.5, &[]),
                lp(&snow[..2], -1.0, &[]),
                lp(&snow[2..], -0.01, &[]),
            ],
            2,
            " ☃",
        );
        assert_eq!(c.text_offset, [0, 2, 3, 3]);
        assert_eq!(c.token_logprobs, [-0.1, -0.5, -1.0, -0.01]);
        assert_eq!(
            c.top_logprobs[0].0.len(),
            2,
            "the sampled token is not repeated"
        );
        assert_eq!(c.top_logprobs[1].0, [(" ".to_string(), -0.5)]);
        let json = serde_json::to_value(&c.top_logprobs[0]).unwrap_or_default();
        assert_eq!(json, serde_json::json!({"Hi": -0.1f32, "Yo": -2.0}));
    }

    #[test]
    fn chat_entries_keep_exact_bytes() {
        let l = ChatLogprobs::of(&[lp(&[0xe2, 0x98], -1.5, &[(b"a", -0.2)])]);
        assert_eq!(l.content[0].bytes, [0xe2, 0x98]);
        assert_eq!(l.content[0].top_logprobs[0].token, "a");
    }
}
