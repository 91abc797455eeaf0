//! Prompts for the load: synthetic text of a chosen length, or a file, with a
//! unique line per request placed first (defeats prompt caches) or last
//! (keeps a shared, cacheable prefix).

use anyhow::Context;
use std::path::Path;

/// Common English words: each is one token with its leading space in the BPE
/// vocabularies of Llama-family models, so N words ≈ N prompt tokens.
const WORDS: &[&str] = &[
    "the", "river", "light", "small", "house", "green", "world", "time", "people", "water", "over",
    "under", "stone", "city", "night", "morning", "road", "garden", "old", "new", "bright",
    "market", "winter", "summer", "bird", "tree", "window", "door", "music", "story", "friend",
    "table", "paper", "school", "field", "north", "south", "hill", "ship", "sea", "fire", "book",
    "voice", "long", "short", "warm", "cold", "quiet", "early", "late", "open", "road", "small",
    "child", "father", "mother", "village", "bridge", "forest", "snow", "rain", "wind", "sun",
    "moon",
];

pub struct Prompts {
    body: String,
    shared_prefix: bool,
    run_id: u64,
}

impl Prompts {
    pub fn new(words: usize, file: Option<&Path>, shared_prefix: bool) -> anyhow::Result<Self> {
        let body = match file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --prompt-file {}", path.display()))?,
            None => synthetic(words),
        };
        Ok(Self {
            body,
            shared_prefix,
            // Unique per run, so a server's cache kept from an earlier run cannot serve a "cold" prompt.
            run_id: rand::random::<u64>(),
        })
    }

    /// The prompt text of request number `index`.
    pub fn text(&self, index: u64) -> String {
        let tag = format!("Request {:x}-{index}.", self.run_id);
        if self.shared_prefix {
            format!("{}\n{tag} Continue the story.", self.body)
        } else {
            format!("{tag}\n{}\nContinue the story.", self.body)
        }
    }
}

/// `words` words in a fixed pseudo-random order (the same text every run).
fn synthetic(words: usize) -> String {
    let mut out = String::with_capacity(words * 7);
    let mut state: u32 = 0x9e37_79b9;
    for i in 0..words {
        // xorshift: varied text (a repeated word compresses oddly in some tokenizers) without a rand dependency.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[state as usize % WORDS.len()]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_has_the_asked_word_count_and_is_stable() {
        let a = synthetic(500);
        assert_eq!(a.split(' ').count(), 500);
        assert_eq!(a, synthetic(500));
        assert!(synthetic(0).is_empty());
    }

    #[test]
    fn shared_prefix_keeps_the_body_first_and_unique_puts_the_tag_first() -> anyhow::Result<()> {
        let shared = Prompts::new(20, None, true)?;
        let (a, b) = (shared.text(1), shared.text(2));
        assert!(a.starts_with(&shared.body) && b.starts_with(&shared.body));
        assert_ne!(a, b);
        let unique = Prompts::new(20, None, false)?;
        let (a, b) = (unique.text(1), unique.text(2));
        assert!(a.starts_with("Request ") && b.starts_with("Request "));
        assert_ne!(a.lines().next(), b.lines().next());
        Ok(())
    }
}
