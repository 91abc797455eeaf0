//! Per-sequence samplers built from OpenAI's sampling parameters.
//!
//! Greedy decoding without penalties needs no llama.cpp sampler: the argmax
//! is read straight from the logits. llama.cpp's own path copies all
//! n_vocab logits into a candidate array first (49 152 × 12 bytes for
//! SmolLM2, every token), which is measurable at ~130 tokens/s.

use crate::SamplingParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
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

/// The sampler for choice `choice` of a request: the chain is logit bias →
/// repetition penalty (which has seen the prompt) → presence/frequency
/// penalties (output only, as OpenAI's) → top-k → top-p → min-p →
/// temperature → a dist seeded with `seed + choice`, or greedy at
/// temperature 0.
pub fn build(
    params: &SamplingParams,
    n_vocab: i32,
    prompt: &[LlamaToken],
    choice: u32,
) -> TokenSampler {
    let penalties = params.presence_penalty != 0.0 || params.frequency_penalty != 0.0;
    let repetition = params.repetition_penalty != 1.0;
    let biased = !params.logit_bias.is_empty();
    if params.temperature <= 0.0 && !penalties && !repetition && !biased {
        return TokenSampler::Greedy;
    }
    let mut chain = Vec::with_capacity(8);
    if biased {
        let biases: Vec<_> = params
            .logit_bias
            .iter()
            .map(|&(id, bias)| {
                let bias = if bias <= -100.0 {
                    f32::NEG_INFINITY
                } else {
                    bias
                };
                LlamaLogitBias::new(LlamaToken(id), bias)
            })
            .collect();
        chain.push(LlamaSampler::logit_bias(n_vocab, &biases));
    }
    if repetition {
        let mut rep =
            LlamaSampler::penalties(n_vocab, PENALTY_WINDOW, params.repetition_penalty, 0.0, 0.0);
        let from = prompt.len().saturating_sub(PENALTY_WINDOW as usize);
        rep.accept_many(&prompt[from..]);
        chain.push(rep);
    }
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
        if params.top_k > 0 {
            chain.push(LlamaSampler::top_k(
                i32::try_from(params.top_k).unwrap_or(i32::MAX),
            ));
        }
        if params.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(params.top_p, 1));
        }
        if params.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(params.min_p, 1));
        }
        chain.push(LlamaSampler::temp(params.temperature));
        let seed = params
            .seed
            .map_or_else(random_seed, |s| s.wrapping_add(choice));
        chain.push(LlamaSampler::dist(seed));
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

/// The log-probability of `chosen` under the log-softmax of `logits`, and
/// the `top` most likely tokens with theirs, most likely first (ties: lower id first).
pub fn logprobs(logits: &[f32], chosen: i32, top: usize) -> (f32, Vec<(i32, f32)>) {
    let max = logits
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    let sum: f64 = logits
        .iter()
        .filter(|x| !x.is_nan())
        .map(|&x| f64::from(x - max).exp())
        .sum();
    let lse = f64::from(max) + sum.ln();
    // As OpenAI, a probability that rounds to nothing is -9999, never -inf (JSON has no -inf).
    let logprob = |x: f32| ((f64::from(x) - lse) as f32).max(-9999.0);
    let chosen_lp = usize::try_from(chosen)
        .ok()
        .and_then(|i| logits.get(i))
        .map_or(-9999.0, |&x| logprob(x));
    // A small sorted list beats sorting the vocabulary: most logits fail the first comparison.
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(top + 1);
    for (i, &x) in logits.iter().enumerate() {
        if top == 0
            || x.is_nan()
            || (best.len() == top && best.last().is_some_and(|&(b, _)| x <= b))
        {
            continue;
        }
        let at = best.partition_point(|&(b, _)| b >= x);
        best.insert(at, (x, i));
        best.truncate(top);
    }
    let top = best
        .into_iter()
        .map(|(x, i)| (i32::try_from(i).unwrap_or(0), logprob(x)))
        .collect();
    (chosen_lp, top)
}

fn random_seed() -> u32 {
    // RandomState is seeded from the OS per instance: enough for sampling.
    let bits = RandomState::new().hash_one(std::time::SystemTime::now());
    (bits >> 32) as u32 ^ bits as u32
}

#[cfg(test)]
mod tests {
    use super::{argmax, logprobs};

    #[test]
    fn logprobs_are_a_log_softmax_with_the_top_tokens_sorted() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        let (lp, top) = logprobs(&logits, 2, 3);
        let z: f64 = logits.iter().map(|&x| f64::from(x).exp()).sum();
        assert!((f64::from(lp) - (2.0 - z.ln())).abs() < 1e-5);
        let ids: Vec<i32> = top.iter().map(|&(i, _)| i).collect();
        assert_eq!(ids, [1, 3, 2]);
        assert!(top.windows(2).all(|w| w[0].1 >= w[1].1));
        let total: f64 = logits
            .iter()
            .enumerate()
            .map(|(i, _)| f64::from(logprobs(&logits, i as i32, 0).0).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-5);
        assert_eq!(logprobs(&logits, 9, 0).0, -9999.0);
    }

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
