//! Grammar-constrained sampling (structured output, tool calls).
//!
//! llama.cpp's grammar sampler checks every candidate against the grammar:
//! over SmolLM2's 49 152-token vocabulary that costs more than the decode
//! itself. Most of the time the token the model would pick anyway is allowed,
//! so, as llama-server does, the token is sampled without the grammar first
//! and only that one token is checked.
//!
//! When the grammar refuses it, llama-server checks the whole vocabulary and
//! samples again. herd first checks only the head, the [`HEAD`] most likely
//! candidates after bias and penalties, and decides from it when that gives
//! the same draw as the whole vocabulary would (see `plan`): always under
//! greedy decoding, plain temperature and min-p (tail tokens drawn are
//! checked one by one: rejection sampling), and under top-k or top-p when
//! the head holds everything they keep. Otherwise it checks the whole
//! vocabulary as llama-server does, after a cut by first byte that drops
//! only tokens the grammar would refuse (`first_bytes`). Sampled this way,
//! the output follows the same distribution as llama-server's; only the
//! random draws differ, so a seed gives other (still repeatable) answers
//! than before.

mod first_bytes;
mod plan;

pub use first_bytes::FirstBytes;

use super::sampler::TokenSampler;
use crate::{EngineError, Grammar};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;
use plan::Plan;
use std::sync::Arc;

/// Candidates checked together after a rejection. Measured on SmolLM2 at
/// temperature 0.7 (docs/benchmarks.md, "Grammar gate"): the allowed ones
/// among these hold ≥ 99.9 % of the allowed probability at about half the
/// rejections, none of it at a quarter (json_schema) to a half (tool call),
/// where the grammar forces text the model did not expect; 512 would leave
/// the share below 99.9 % at a third of the rejections instead of a half.
pub const HEAD: usize = 128;

/// Tail tokens drawn and refused before the whole vocabulary is checked.
const TAIL_DRAWS: usize = 4;

/// How a sequence's tokens went through the gate.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GrammarStats {
    /// Tokens chosen.
    pub tokens: u64,
    /// Tokens sampled without the grammar that it refused, each sampled again.
    pub rejected: u64,
    /// Draws again that took a token beyond the head (checked alone, allowed).
    pub tail: u64,
    /// Draws again that checked the whole vocabulary.
    pub full: u64,
    /// Candidates checked against the grammar: the work, in a number that
    /// does not depend on the machine.
    pub checked: u64,
}

/// The grammar state of one sequence: what it has accepted so far.
pub struct GrammarGate {
    grammar: LlamaSampler,
    /// `None` when the grammar names tokens (see `first_bytes`).
    first_bytes: Option<Arc<FirstBytes>>,
    head: usize,
    stats: GrammarStats,
    /// The candidates, and a copy for one draw: kept so that a rejection allocates nothing.
    candidates: Vec<LlamaTokenData>,
    draw: Vec<LlamaTokenData>,
}

impl GrammarGate {
    /// Parses the grammar for `model`'s vocabulary (`first_bytes`: of that
    /// model). The gateway builds every grammar itself, so a failure here is
    /// herd's bug, reported as such.
    pub fn new(
        model: &LlamaModel,
        grammar: &Grammar,
        first_bytes: &Arc<FirstBytes>,
    ) -> Result<Self, EngineError> {
        let first_bytes = (!first_bytes::names_tokens(&grammar.gbnf)).then(|| first_bytes.clone());
        LlamaSampler::grammar(model, &grammar.gbnf, "root")
            .map(|grammar| Self {
                grammar,
                first_bytes,
                head: HEAD,
                stats: GrammarStats::default(),
                candidates: Vec::new(),
                draw: Vec::new(),
            })
            .map_err(|e| EngineError::Internal(format!("the output grammar was refused: {e}")))
    }

    /// Checks `head` candidates first after a rejection instead of [`HEAD`];
    /// 0 checks the whole vocabulary every time, as llama-server does.
    #[must_use]
    pub fn with_head(mut self, head: usize) -> Self {
        self.head = head;
        self
    }

    pub fn stats(&self) -> GrammarStats {
        self.stats
    }

    /// The token to emit: `sampled` if the grammar allows it, else a token
    /// sampled again from the candidates the grammar allows. The chosen token
    /// is accepted into the grammar state. `None`: the grammar allows nothing.
    pub fn constrain(
        &mut self,
        ctx: &LlamaContext,
        idx: i32,
        sampled: LlamaToken,
        sampler: &mut TokenSampler,
    ) -> Option<LlamaToken> {
        let token = if self.allows(sampled) {
            sampled
        } else {
            self.stats.rejected += 1;
            let buf = std::mem::take(&mut self.candidates);
            let mut candidates = sampler.candidates(ctx, idx, buf);
            let token = self.resample(&mut candidates, sampler);
            self.candidates = candidates.data;
            token?
        };
        self.stats.tokens += 1;
        self.grammar.accept(token);
        Some(token)
    }

    /// llama.cpp's grammar check: refused candidates are set to -inf.
    fn check(&mut self, candidates: &mut LlamaTokenDataArray) {
        self.stats.checked += candidates.data.len() as u64;
        self.grammar.apply(candidates);
    }

    fn allows(&mut self, token: LlamaToken) -> bool {
        let mut one = LlamaTokenDataArray::new(vec![LlamaTokenData::new(token, 0.0, 0.0)], false);
        self.check(&mut one);
        one.data.first().is_some_and(|d| d.logit().is_finite())
    }

    /// A token drawn by `sampler` from `candidates` (every token, logits as
    /// [`TokenSampler::candidates`] gives them) that the grammar allows in
    /// its current state; not accepted into it. Candidates found refused
    /// are left at -inf.
    pub fn resample(
        &mut self,
        candidates: &mut LlamaTokenDataArray,
        sampler: &mut TokenSampler,
    ) -> Option<LlamaToken> {
        let head = self.head.min(candidates.data.len());
        if head > 0 && head < candidates.data.len() {
            if let Some(token) = self.decide_in_head(candidates, head, sampler) {
                return Some(token);
            }
        }
        self.stats.full += 1;
        // Only the allowed: the draw's softmax then costs a few hundred exps, not 49 152.
        let allowed = self.all_allowed(&candidates.data);
        sampler.pick(&mut LlamaTokenDataArray::new(allowed, false))
    }

    /// The candidates the grammar allows, in their order; those at -inf are
    /// not checked again.
    fn all_allowed(&mut self, candidates: &[LlamaTokenData]) -> Vec<LlamaTokenData> {
        let open = |d: &&LlamaTokenData| d.logit() != f32::NEG_INFINITY;
        let maybe = match self.first_bytes.clone() {
            Some(first) => {
                let pass = first.passing(|probes| self.check(probes));
                candidates
                    .iter()
                    .filter(open)
                    .filter(|d| first.byte(d.id()).is_none_or(|b| pass[usize::from(b)]))
                    .copied()
                    .collect()
            }
            None => candidates.iter().filter(open).copied().collect(),
        };
        let mut maybe = LlamaTokenDataArray::new(maybe, false);
        self.check(&mut maybe);
        maybe.data.retain(|d| d.logit().is_finite());
        maybe.data
    }

    /// Checks the `head` most likely candidates and draws when `plan` says
    /// that is enough. Refused head candidates are left at -inf.
    fn decide_in_head(
        &mut self,
        candidates: &mut LlamaTokenDataArray,
        head: usize,
        sampler: &mut TokenSampler,
    ) -> Option<LlamaToken> {
        let top = most_likely(&candidates.data, head);
        let head_data = top.iter().filter_map(|&i| candidates.data.get(i).copied());
        let mut checked = LlamaTokenDataArray::new(head_data.collect(), true);
        self.check(&mut checked);
        for (&i, d) in top.iter().zip(&checked.data) {
            if let Some(c) = candidates.data.get_mut(i) {
                c.set_logit(d.logit());
            }
        }
        let mut allowed = checked.data;
        allowed.retain(|d| d.logit().is_finite());
        let logits: Vec<f32> = allowed.iter().map(LlamaTokenData::logit).collect();
        // Refused head candidates are at -inf now: what is left beyond the allowed is the tail.
        let tail_weight = |max| weight(&candidates.data, max) - weight(&allowed, max);
        match plan::plan(&sampler.truncation(), &logits, tail_weight) {
            Plan::Head => sampler.pick(&mut LlamaTokenDataArray::new(allowed, true)),
            Plan::HeadAndTail => self.draw_with_tail(candidates, &allowed, sampler),
            Plan::Full => None,
        }
    }

    /// Draws from the allowed head and the unchecked tail; a tail token is
    /// checked alone and, if refused, left out of the next draw.
    fn draw_with_tail(
        &mut self,
        candidates: &mut LlamaTokenDataArray,
        allowed: &[LlamaTokenData],
        sampler: &mut TokenSampler,
    ) -> Option<LlamaToken> {
        for _ in 0..TAIL_DRAWS {
            let mut buf = std::mem::take(&mut self.draw);
            buf.clear();
            buf.extend_from_slice(&candidates.data);
            let mut draw = LlamaTokenDataArray::new(buf, false);
            let token = sampler.pick(&mut draw);
            self.draw = draw.data;
            let token = token?;
            if allowed.iter().any(|d| d.id() == token) {
                return Some(token);
            }
            if self.allows(token) {
                self.stats.tail += 1;
                return Some(token);
            }
            if let Some(d) = candidates.data.iter_mut().find(|d| d.id() == token) {
                d.set_logit(f32::NEG_INFINITY);
            }
        }
        None
    }
}

/// Indices of the `k` candidates with the largest logits, most likely
/// first (equal logits: the earlier first); -inf and NaN never. One pass
/// with a short sorted list: most candidates fail its first comparison.
fn most_likely(candidates: &[LlamaTokenData], k: usize) -> Vec<usize> {
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
    for (i, d) in candidates.iter().enumerate() {
        let x = d.logit();
        if x.is_nan()
            || x == f32::NEG_INFINITY
            || (best.len() == k && best.last().is_some_and(|&(b, _)| x <= b))
        {
            continue;
        }
        let at = best.partition_point(|&(b, _)| b >= x);
        best.insert(at, (x, i));
        best.truncate(k);
    }
    best.into_iter().map(|(_, i)| i).collect()
}

/// Σ exp(logit - max) over `candidates`.
fn weight(candidates: &[LlamaTokenData], max: f32) -> f64 {
    candidates
        .iter()
        .map(|d| f64::from(d.logit() - max).exp())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::most_likely;
    use llama_cpp_2::token::data::LlamaTokenData;
    use llama_cpp_2::token::LlamaToken;
    use proptest::prelude::*;

    fn data(logits: &[f32]) -> Vec<LlamaTokenData> {
        (0..)
            .zip(logits)
            .map(|(id, &l)| LlamaTokenData::new(LlamaToken(id), l, 0.0))
            .collect()
    }

    #[test]
    fn the_most_likely_come_first_and_excluded_ones_never() {
        let d = data(&[1.0, f32::NEG_INFINITY, 3.0, f32::NAN, 3.0, 2.0]);
        assert_eq!(most_likely(&d, 3), [2, 4, 5]);
        assert_eq!(most_likely(&d, 10), [2, 4, 5, 0]);
        assert!(most_likely(&d, 0).is_empty());
    }

    proptest! {
        #[test]
        fn most_likely_is_a_stable_sort_cut_short(
            logits in prop::collection::vec(-5i8..5, 0..300),
            k in 0usize..40,
        ) {
            let logits: Vec<f32> = logits.into_iter().map(f32::from).collect();
            let mut sorted: Vec<usize> = (0..logits.len()).collect();
            sorted.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            sorted.truncate(k);
            prop_assert_eq!(most_likely(&data(&logits), k), sorted);
        }
    }
}
