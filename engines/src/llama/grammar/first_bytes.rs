//! A cheap first cut before checking the whole vocabulary against a grammar.
//!
//! llama.cpp's grammar check decodes every candidate's text and walks the
//! grammar stacks with it, ~100 ns a token: ~5 ms over SmolLM2's vocabulary.
//! A token can only be allowed if its first byte is: the grammar matches the
//! text character by character and accepts a prefix of what it allows, an
//! incomplete UTF-8 character included. So the single-byte tokens are
//! checked first (≤ 256), and only the tokens whose first byte passed are
//! checked in full. Right after a forced character (`"`, `:`, a key's next
//! letter) that is a few hundred tokens instead of 49 152.
//!
//! This holds for grammars of characters, which are all herd builds. A
//! grammar may also name tokens (`<[id]>`, `<|tag|>`), which match by id,
//! whatever the first byte: such grammars are checked in full.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;

/// Where no byte applies: end-of-generation tokens (the grammar allows them
/// by its state, not their text) and tokens without text.
const NO_BYTE: u16 = u16::MAX;

/// The first byte of every token's text, as the grammar reads it.
pub struct FirstBytes {
    /// By token id: its first byte, or [`NO_BYTE`].
    first: Vec<u16>,
    /// For each byte that is a token's whole text: that token, checked for the byte.
    probes: Vec<LlamaTokenData>,
}

impl FirstBytes {
    /// Reads the model's vocabulary (tens of milliseconds; once per model).
    pub fn of(model: &LlamaModel) -> Self {
        let vocab = model.vocab();
        let mut first = Vec::with_capacity(usize::try_from(model.n_vocab()).unwrap_or(0));
        let mut single: [Option<LlamaToken>; 256] = [None; 256];
        for token in vocab.tokens() {
            // `special`: the text the grammar reads (llama.cpp's piece cache).
            let piece = vocab.token_to_piece(token, true, None);
            let byte = match piece.as_slice() {
                _ if vocab.is_eog(token) => NO_BYTE,
                [] => NO_BYTE,
                [b] => {
                    single[usize::from(*b)].get_or_insert(token);
                    u16::from(*b)
                }
                [b, ..] => u16::from(*b),
            };
            first.push(byte);
        }
        let probes = single
            .iter()
            .flatten()
            .map(|&t| LlamaTokenData::new(t, 0.0, 0.0))
            .collect();
        Self { first, probes }
    }

    /// Bytes that can start an allowed token: `allowed` is the grammar
    /// check in its current state. A byte no single token spells passes.
    pub fn passing(&self, allowed: impl FnOnce(&mut LlamaTokenDataArray)) -> [bool; 256] {
        let mut pass = [true; 256];
        let mut probes = LlamaTokenDataArray::new(self.probes.clone(), false);
        allowed(&mut probes);
        for probe in &probes.data {
            if let Some(b) = self.byte(probe.id()) {
                pass[usize::from(b)] = probe.logit().is_finite();
            }
        }
        pass
    }

    /// The first byte of `token`'s text; `None` for end-of-generation
    /// tokens, tokens without text and ids outside the vocabulary.
    pub fn byte(&self, token: LlamaToken) -> Option<u8> {
        let b = *self.first.get(usize::try_from(token.0).ok()?)?;
        u8::try_from(b).ok()
    }
}

/// Whether a GBNF grammar may refer to tokens (`<...>`, `!<...>` outside
/// quotes, classes and comments), which the first-byte cut cannot serve.
pub fn names_tokens(gbnf: &str) -> bool {
    let mut chars = gbnf.chars();
    while let Some(c) = chars.next() {
        match c {
            '<' | '!' => return true,
            '"' | '[' => {
                let end = if c == '"' { '"' } else { ']' };
                while let Some(c) = chars.next() {
                    if c == '\\' {
                        chars.next();
                    } else if c == end {
                        break;
                    }
                }
            }
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::names_tokens;

    #[test]
    fn token_references_are_seen_outside_literals_only() {
        assert!(!names_tokens(
            r#"root ::= "<tool_call>" [^<!] "\"<" # a <comment>"#
        ));
        assert!(!names_tokens("root ::= [\\]<] \"a\""));
        assert!(names_tokens(r#"root ::= "a" <[1234]>"#));
        assert!(names_tokens(r#"root ::= !<|im_end|>"#));
        assert!(names_tokens("# c\nroot ::= <think>"));
    }
}
