//! Turning a prompt into tokens: the model's chat template, then the
//! tokenizer, with a cheap refusal in between for a prompt whose length alone
//! proves it cannot fit the context (tokenizing megabytes takes seconds).

use crate::{ChatMessage, EngineError, PreparedPrompt, PromptInput};
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};

/// What a prompt's length in bytes proves about its length in tokens.
///
/// Each token stands for at most `max_token_bytes` bytes of the text it came
/// from, so a text of `n` bytes is at least `n / max_token_bytes` tokens.
/// Whitespace is left out on both sides: special tokens that strip the
/// whitespace around them (and chat templates that trim) can swallow any
/// amount of it, but every other byte is kept by BPE and SentencePiece
/// tokenizers. Other tokenizers (WordPiece, Unigram, …) normalise text in ways
/// that can drop anything, so they get no bound and every prompt is tokenized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptLimit {
    ctx_size: u32,
    max_token_bytes: Option<usize>,
}

/// The roles whose contents every llama.cpp chat template keeps (some drop a
/// tool turn or a system prompt).
pub const COUNTED: [&str; 2] = ["user", "assistant"];

/// Bytes other than whitespace (which tokenizers may drop, or one token may
/// swallow without limit).
fn solid_bytes(text: &str) -> usize {
    if text.is_ascii() {
        return text.bytes().filter(|b| !b.is_ascii_whitespace()).count();
    }
    text.chars()
        .filter(|c| !c.is_whitespace())
        .map(char::len_utf8)
        .sum()
}

impl PromptLimit {
    /// Reads the vocabulary once (at load): its longest token, whitespace left out.
    pub fn of(model: &LlamaModel, ctx_size: u32) -> Self {
        let vocab = model.vocab();
        // From the GGUF's tokenizer name ("llama" is SentencePiece, "gpt2"
        // byte-level BPE): `vocab_type()` panics on any other kind (BERT's WordPiece).
        let tokenizer = model
            .meta_val_str("tokenizer.ggml.model")
            .unwrap_or_default();
        let bounded = matches!(tokenizer.as_str(), "llama" | "gpt2");
        let max_token_bytes = bounded.then(|| {
            let longest = vocab
                .tokens()
                .map(|t| {
                    let piece = vocab.token_to_piece(t, true, None);
                    // A piece that is not whole UTF-8 counts every non-space byte (an overestimate).
                    piece.iter().filter(|b| !b.is_ascii_whitespace()).count()
                })
                .max()
                .unwrap_or(0);
            // An unknown character becomes one token, whatever its printed form: up to 4 bytes.
            longest.max(4)
        });
        Self {
            ctx_size,
            max_token_bytes,
        }
    }

    /// The bound an engine host reported ([`ModelInfo::max_token_bytes`](crate::ModelInfo)).
    pub fn new(ctx_size: u32, max_token_bytes: Option<usize>) -> Self {
        Self {
            ctx_size,
            max_token_bytes,
        }
    }

    /// The most bytes (whitespace left out) one token stands for; `None` when
    /// this tokenizer gives no such bound.
    pub fn max_token_bytes(&self) -> Option<usize> {
        self.max_token_bytes
    }

    /// Tokens `text` becomes at the very least (0 when nothing can be said).
    pub fn min_tokens(&self, text: &str) -> u64 {
        self.min_tokens_in(&[text])
    }

    /// Tokens the texts become together at the very least.
    fn min_tokens_in(&self, texts: &[&str]) -> u64 {
        let Some(per_token) = self.max_token_bytes else {
            return 0;
        };
        // Counting is linear but not free: skip it when the total already fits.
        let ctx = usize::try_from(self.ctx_size).unwrap_or(usize::MAX);
        if texts.iter().map(|t| t.len()).sum::<usize>() < ctx.saturating_mul(per_token) {
            return 0;
        }
        let solid: usize = texts.iter().map(|t| solid_bytes(t)).sum();
        u64::try_from(solid.div_ceil(per_token)).unwrap_or(u64::MAX)
    }

    /// Refuses, without tokenizing, a text that cannot fit the context.
    pub fn check(&self, text: &str) -> Result<(), EngineError> {
        self.refuse(self.min_tokens(text))
    }

    /// Refuses, before it is rendered, a prompt that cannot fit the context.
    /// A chat counts its user and assistant turns' contents: llama.cpp's chat
    /// templates (the only ones the engine host renders with) keep those,
    /// trimmed at most (`tests/prompt_limit.rs` checks each built-in one).
    pub fn check_input(&self, input: &PromptInput) -> Result<(), EngineError> {
        match input {
            PromptInput::Text(text) => self.check(text),
            PromptInput::Chat(messages) => {
                let contents: Vec<&str> = messages
                    .iter()
                    .filter(|m| COUNTED.contains(&m.role.as_str()))
                    .map(|m| m.content.as_str())
                    .collect();
                self.refuse(self.min_tokens_in(&contents))
            }
            PromptInput::Tokens(_) => Ok(()),
        }
    }

    fn refuse(&self, at_least: u64) -> Result<(), EngineError> {
        if at_least >= u64::from(self.ctx_size) {
            return Err(EngineError::PromptTooLong {
                ctx: self.ctx_size,
                at_least,
            });
        }
        Ok(())
    }
}

/// The text the model continues: the chat rendered with its template, or the raw prompt.
fn render(
    model: &LlamaModel,
    template: Option<&LlamaChatTemplate>,
    input: &PromptInput,
) -> Result<String, EngineError> {
    match input {
        PromptInput::Text(text) => Ok(text.clone()),
        PromptInput::Tokens(_) => Err(EngineError::Template(
            "token ids are not rendered as text".into(),
        )),
        PromptInput::Chat(messages) => {
            let template = template.ok_or(EngineError::NoChatTemplate)?;
            let chat = messages
                .iter()
                .map(|ChatMessage { role, content }| {
                    LlamaChatMessage::new(role.clone(), content.clone())
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| EngineError::Template(e.to_string()))?;
            model
                .apply_chat_template(template, &chat, true)
                .map_err(|e| EngineError::Template(e.to_string()))
        }
    }
}

fn tokenize(model: &LlamaModel, text: &str) -> PreparedPrompt {
    let tokens = model.vocab().tokenize(text.as_bytes(), true, true);
    PreparedPrompt {
        tokens: tokens.into_iter().map(|t| t.0).collect(),
    }
}

/// Template and tokenize, whatever the length.
pub fn prepare(
    model: &LlamaModel,
    template: Option<&LlamaChatTemplate>,
    input: &PromptInput,
) -> Result<PreparedPrompt, EngineError> {
    if let PromptInput::Tokens(ids) = input {
        return checked_ids(model, ids);
    }
    Ok(tokenize(model, &render(model, template, input)?))
}

/// Token ids pass through as they are, if the vocabulary has every one.
fn checked_ids(model: &LlamaModel, ids: &[i32]) -> Result<PreparedPrompt, EngineError> {
    let n_vocab = model.n_vocab();
    match ids.iter().find(|&&id| id < 0 || id >= n_vocab) {
        Some(bad) => Err(EngineError::Template(format!(
            "token id {bad} is not in the vocabulary (0..{n_vocab})"
        ))),
        None => Ok(PreparedPrompt {
            tokens: ids.to_vec(),
        }),
    }
}

/// Template, refuse what cannot fit (checked on the rendered text: a template
/// may add or trim), then tokenize.
pub fn prepare_within(
    model: &LlamaModel,
    template: Option<&LlamaChatTemplate>,
    limit: &PromptLimit,
    input: &PromptInput,
) -> Result<PreparedPrompt, EngineError> {
    if let PromptInput::Tokens(ids) = input {
        return checked_ids(model, ids);
    }
    let text = render(model, template, input)?;
    limit.check(&text)?;
    Ok(tokenize(model, &text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_proves_nothing_and_everything_else_counts() {
        let limit = PromptLimit {
            ctx_size: 10,
            max_token_bytes: Some(4),
        };
        assert_eq!(
            limit.min_tokens("short"),
            0,
            "below ctx × bytes: not counted"
        );
        assert_eq!(limit.min_tokens(&" ".repeat(1000)), 0);
        assert_eq!(limit.min_tokens(&"ab \n".repeat(100)), 50);
        assert_eq!(limit.min_tokens(&"é".repeat(40)), 20);
        assert!(limit.check(&"abcd".repeat(9)).is_ok());
        assert_eq!(
            limit.check(&"abcd".repeat(10)),
            Err(EngineError::PromptTooLong {
                ctx: 10,
                at_least: 10
            })
        );
        let unbounded = PromptLimit {
            ctx_size: 10,
            max_token_bytes: None,
        };
        assert!(unbounded.check(&"x".repeat(1 << 20)).is_ok());
    }

    #[test]
    fn a_chat_counts_its_user_and_assistant_turns_together() {
        let limit = PromptLimit::new(10, Some(4));
        let turn = |role: &str, content: &str| crate::ChatMessage {
            role: role.into(),
            content: content.into(),
        };
        let half = "abcd".repeat(5);
        let chat = |roles: [&str; 2]| PromptInput::Chat(roles.map(|r| turn(r, &half)).to_vec());
        assert!(matches!(
            limit.check_input(&chat(["user", "assistant"])),
            Err(EngineError::PromptTooLong { at_least: 10, .. })
        ));
        // A template may drop a tool turn or a system prompt: they prove nothing.
        assert!(limit.check_input(&chat(["user", "tool"])).is_ok());
        assert!(limit.check_input(&chat(["system", "user"])).is_ok());
        assert!(limit
            .check_input(&PromptInput::Text("abcd".repeat(10)))
            .is_err());
        assert!(limit
            .check_input(&PromptInput::Tokens(vec![1; 100]))
            .is_ok());
    }
}
