//! A request's `n` choices run in `n` slots and end one by one; the request
//! ends when its last choice does, with every choice's finish reason and one
//! usage for all of them (the prompt, decoded once, counted once).

use crate::{FinishReason, Usage};

#[derive(Debug)]
pub struct Choices {
    reasons: Vec<Option<FinishReason>>,
    usage: Usage,
}

impl Choices {
    pub fn new(n: usize, prompt_tokens: usize, cached_tokens: usize) -> Self {
        Self {
            reasons: vec![None; n],
            usage: Usage {
                prompt_tokens: u32::try_from(prompt_tokens).unwrap_or(u32::MAX),
                completion_tokens: 0,
                cached_tokens: u32::try_from(cached_tokens).unwrap_or(u32::MAX),
            },
        }
    }

    /// Records that choice `index` ended after `generated` tokens; once all
    /// have, the reasons (by index) and the request's usage.
    pub fn end(
        &mut self,
        index: u32,
        reason: FinishReason,
        generated: u32,
    ) -> Option<(Vec<FinishReason>, Usage)> {
        if let Some(slot @ None) = self.reasons.get_mut(index as usize) {
            *slot = Some(reason);
            self.usage.completion_tokens = self.usage.completion_tokens.saturating_add(generated);
        }
        let reasons: Option<Vec<FinishReason>> = self.reasons.iter().copied().collect();
        reasons.map(|r| (r, self.usage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_ends_with_its_last_choice_and_counts_the_prompt_once() {
        let mut c = Choices::new(3, 10, 4);
        assert_eq!(c.end(1, FinishReason::Stop, 5), None);
        assert_eq!(
            c.end(1, FinishReason::Length, 99),
            None,
            "a choice ends once"
        );
        assert_eq!(c.end(0, FinishReason::Length, 7), None);
        let (reasons, usage) = c.end(2, FinishReason::Stop, 1).unwrap_or_default();
        assert_eq!(
            reasons,
            [FinishReason::Length, FinishReason::Stop, FinishReason::Stop]
        );
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 10,
                completion_tokens: 13,
                cached_tokens: 4
            }
        );
    }
}
