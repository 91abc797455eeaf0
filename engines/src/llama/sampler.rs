//! Per-sequence samplers built from OpenAI's sampling parameters.
//!
//! Greedy decoding without penalties needs no llama.cpp sampler: the argmax
//! is read straight from the logits. llama.cpp's own path copies all
//! n_vocab logits into a candidate array first (49 152 × 12 bytes for
//! SmolLM2, every token), which is measurable at ~130 tokens/s.

use crate::SamplingParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use std::hash::{BuildHasher, RandomState};

/// How many recent tokens presence/frequency penalties look at.
const PENALTY_WINDOW: i32 = 1024;

pub enum TokenSampler {
    /// The most likely token: what `LlamaSampler::greedy()` picks, without the copy.
    Greedy,
    Chain(LlamaSampler),
}

impl TokenSampler {
    /// Samples from the logits at batch index `idx` (which must have requested logits).
    pub fn sample(&mut self, ctx: &LlamaContext, idx: i32) -> LlamaToken {
        match self {
            Self::Greedy => LlamaToken(argmax(ctx.get_logits_ith(idx))),
            Self::Chain(chain) => chain.sample(ctx, idx),
        }
    }
}

pub fn build(params: &SamplingParams, n_vocab: i32) -> TokenSampler {
    let penalties = params.presence_penalty != 0.0 || params.frequency_penalty != 0.0;
    if params.temperature <= 0.0 && !penalties {
        return TokenSampler::Greedy;
    }
    let mut chain = Vec::with_capacity(4);
    if penalties {
        chain.push(LlamaSampler::penalties(
            n_vocab,
            PENALTY_WINDOW,
            1.0,
            params.frequency_penalty,
            params.presence_penalty,
        ));
    }
    if params.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if params.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(params.top_p, 1));
        }
        chain.push(LlamaSampler::temp(params.temperature));
        chain.push(LlamaSampler::dist(params.seed.unwrap_or_else(random_seed)));
    }
    TokenSampler::Chain(LlamaSampler::chain_simple(chain))
}

/// Index of the first largest logit, as llama.cpp's greedy sampler picks it
/// (NaNs never win). Two passes so the first one vectorises.
fn argmax(logits: &[f32]) -> i32 {
    let max = logits
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    let at = logits.iter().position(|&x| x == max).unwrap_or(0);
    i32::try_from(at).unwrap_or(0)
}

fn random_seed() -> u32 {
    // RandomState is seeded from the OS per instance: enough for sampling.
    let bits = RandomState::new().hash_one(std::time::SystemTime::now());
    (bits >> 32) as u32 ^ bits as u32
}

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn argmax_takes_the_first_of_equal_maxima() {
        assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]), 1);
        assert_eq!(argmax(&[3.0]), 0);
        assert_eq!(argmax(&[-5.0, -4.0, -4.5]), 1);
    }

    #[test]
    fn argmax_ignores_nan_and_handles_infinities() {
        assert_eq!(argmax(&[f32::NAN, 1.0, f32::NAN, 0.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::INFINITY, 1.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax(&[]), 0);
    }
}
