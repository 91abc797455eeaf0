//! A slot is one llama.cpp sequence: the tokens its KV cache holds and the
//! request (if any) generating into it. Choosing a slot for a new request is
//! pure: the free one whose cached tokens share the longest prefix with the
//! prompt, least recently used among equals.

use super::grammar::GrammarGate;
use super::protocol::RequestId;
use super::sampler::TokenSampler;
use crate::text::{StopFilter, Utf8Holdback};
use crate::TokenLogprob;
use llama_cpp_2::token::LlamaToken;

pub struct Active {
    pub id: RequestId,
    /// Which of the request's choices this slot generates.
    pub index: u32,
    pub prompt: Vec<LlamaToken>,
    /// Prompt tokens already in the KV cache (cached prefix included).
    pub fed: usize,
    /// Prompt tokens that were in the KV cache when it started (the cached prefix).
    pub cached: usize,
    /// Another choice of the same request, in this slot, decodes the prompt;
    /// its KV is copied here once it is done (then this is `None`).
    pub shares_prompt_of: Option<usize>,
    pub sampler: TokenSampler,
    /// Alternatives to report per token, if logprobs were asked for.
    pub logprobs: Option<u32>,
    /// Logprobs of tokens whose text has not been sent yet.
    pub pending_logprobs: Vec<TokenLogprob>,
    /// The output constraint, if the request has one.
    pub grammar: Option<GrammarGate>,
    pub holdback: Utf8Holdback,
    pub stop: StopFilter,
    pub generated: u32,
    pub max_tokens: u32,
    /// Sampled but not yet decoded.
    pub next: Option<LlamaToken>,
    /// Index in the current batch whose logits belong to this sequence.
    pub logits_at: Option<i32>,
    /// The batch loop's step count when it arrived.
    pub arrived_at: u64,
}

pub struct Slot {
    pub seq: i32,
    /// Exactly the tokens whose KV this sequence holds, by position.
    pub kv: Vec<LlamaToken>,
    pub active: Option<Active>,
    /// Logical clock of the last time a request finished here.
    pub last_used: u64,
}

/// The free slot that can reuse the most of `prompt`'s KV, as (index, tokens
/// shared); among equals the least recently used, so a hot conversation's
/// cache survives.
pub fn best_free_slot(slots: &[Slot], prompt: &[LlamaToken]) -> Option<(usize, usize)> {
    slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.active.is_none())
        .map(|(i, s)| (i, common_prefix(&s.kv, prompt), s.last_used))
        .max_by_key(|&(_, shared, last_used)| (shared, std::cmp::Reverse(last_used)))
        .map(|(i, shared, _)| (i, shared))
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(ids: &[i32]) -> Vec<LlamaToken> {
        ids.iter().copied().map(LlamaToken).collect()
    }

    fn slot(seq: i32, kv: &[i32], last_used: u64) -> Slot {
        Slot {
            seq,
            kv: toks(kv),
            active: None,
            last_used,
        }
    }

    #[test]
    fn longest_shared_prefix_wins() {
        let slots = [
            slot(0, &[1, 2], 5),
            slot(1, &[1, 2, 3, 4], 1),
            slot(2, &[9], 9),
        ];
        assert_eq!(best_free_slot(&slots, &toks(&[1, 2, 3, 7])), Some((1, 3)));
    }

    #[test]
    fn without_a_shared_prefix_the_least_recently_used_is_evicted() {
        let slots = [slot(0, &[5], 7), slot(1, &[6], 2), slot(2, &[8], 4)];
        assert_eq!(best_free_slot(&slots, &toks(&[1, 2])), Some((1, 0)));
    }

    fn active(id: RequestId) -> Active {
        Active {
            id,
            index: 0,
            prompt: toks(&[1]),
            fed: 0,
            cached: 0,
            shares_prompt_of: None,
            sampler: TokenSampler::Greedy,
            logprobs: None,
            pending_logprobs: Vec::new(),
            grammar: None,
            holdback: Utf8Holdback::default(),
            stop: StopFilter::new(Vec::new()),
            generated: 0,
            max_tokens: 1,
            next: None,
            logits_at: None,
            arrived_at: 0,
        }
    }

    #[test]
    fn busy_slots_are_never_chosen() {
        let mut slots = vec![slot(0, &[1, 2, 3], 0), slot(1, &[], 0)];
        slots[0].active = Some(active(1));
        assert_eq!(best_free_slot(&slots, &toks(&[1, 2, 3])), Some((1, 0)));
        slots[1].active = Some(active(2));
        assert_eq!(best_free_slot(&slots, &toks(&[1, 2, 3])), None);
    }
}
