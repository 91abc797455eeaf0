//! Grammar-constrained sampling (structured output, tool calls).
//!
//! llama.cpp's grammar sampler checks every candidate against the grammar:
//! over SmolLM2's 49 152-token vocabulary that costs more than the decode
//! itself. Most of the time the token the model would pick anyway is allowed,
//! so, as llama-server does, the token is sampled without the grammar first
//! and only that one token is checked; only when the grammar rejects it is
//! the full candidate list constrained and sampled again.

use super::sampler::TokenSampler;
use crate::{EngineError, Grammar};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;

/// The grammar state of one sequence: what it has accepted so far.
pub struct GrammarGate {
    grammar: LlamaSampler,
}

impl GrammarGate {
    /// Parses the grammar for `model`'s vocabulary. The gateway builds every
    /// grammar itself, so a failure here is herd's bug, reported as such.
    pub fn new(model: &LlamaModel, grammar: &Grammar) -> Result<Self, EngineError> {
        LlamaSampler::grammar(model, &grammar.gbnf, "root")
            .map(|grammar| Self { grammar })
            .map_err(|e| EngineError::Internal(format!("the output grammar was refused: {e}")))
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
            self.resample(ctx, idx, sampler)?
        };
        self.grammar.accept(token);
        Some(token)
    }

    fn allows(&mut self, token: LlamaToken) -> bool {
        let mut one = LlamaTokenDataArray::new(vec![LlamaTokenData::new(token, 0.0, 0.0)], false);
        self.grammar.apply(&mut one);
        one.data.first().is_some_and(|d| d.logit().is_finite())
    }

    /// Samples from the grammar-allowed candidates only. A sampler chain saw
    /// the rejected token once (its penalty window counts it); the seeded
    /// distribution and top-p act on the allowed candidates.
    fn resample(
        &mut self,
        ctx: &LlamaContext,
        idx: i32,
        sampler: &mut TokenSampler,
    ) -> Option<LlamaToken> {
        let mut candidates = ctx.token_data_array_ith(idx);
        self.grammar.apply(&mut candidates);
        let picked = match sampler {
            TokenSampler::Greedy => None,
            TokenSampler::Chain(chain) => {
                chain.apply(&mut candidates);
                candidates.selected_token()
            }
        };
        let picked = picked.or_else(|| best_allowed(&candidates));
        picked.filter(|t| {
            candidates
                .data
                .iter()
                .any(|d| d.id() == *t && d.logit().is_finite())
        })
    }
}

/// The most likely candidate the grammar left allowed.
fn best_allowed(candidates: &LlamaTokenDataArray) -> Option<LlamaToken> {
    candidates
        .data
        .iter()
        .filter(|d| d.logit().is_finite())
        .max_by(|a, b| a.logit().total_cmp(&b.logit()))
        .map(LlamaTokenData::id)
}
