//! Per-sequence sampling chains built from OpenAI's sampling parameters.

use crate::SamplingParams;
use llama_cpp_2::sampling::LlamaSampler;
use std::hash::{BuildHasher, RandomState};

/// How many recent tokens presence/frequency penalties look at.
const PENALTY_WINDOW: i32 = 1024;

pub fn build(params: &SamplingParams, n_vocab: i32) -> LlamaSampler {
    let mut chain = Vec::with_capacity(4);
    if params.presence_penalty != 0.0 || params.frequency_penalty != 0.0 {
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
    LlamaSampler::chain_simple(chain)
}

fn random_seed() -> u32 {
    // RandomState is seeded from the OS per instance: enough for sampling.
    let bits = RandomState::new().hash_one(std::time::SystemTime::now());
    (bits >> 32) as u32 ^ bits as u32
}
