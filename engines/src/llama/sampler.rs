//! Per-sequence samplers built from OpenAI's sampling parameters.
//!
//! Greedy decoding without penalties needs no llama.cpp sampler: the argmax
//! is read straight from the logits. llama.cpp's own path copies all
//! n_vocab logits into a candidate array first (49 152 × 12 bytes for
//! SmolLM2, every token), which is measurable at ~130 tokens/s.
//!
//! Otherwise the chain is kept in two parts, so that the grammar gate can
//! put its check between them: `shape` changes logits (bias, penalties) and
//! never drops a token; `pick` truncates (top-k, top-p, min-p), applies the
//! temperature and draws. A token enters the penalty windows only through
//! [`TokenSampler::accept`], once the grammar has had its say.

use crate::SamplingParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;
use std::hash::{BuildHasher, RandomState};

/// How many recent tokens presence/frequency penalties look at.
const PENALTY_WINDOW: i32 = 1024;

pub enum TokenSampler {
    /// The most likely token: what `LlamaSampler::greedy()` picks, without the copy.
    Greedy,
    Chain(Chain),
}

/// A llama.cpp sampler chain split where a grammar check belongs.
pub struct Chain {
    /// Logit bias and penalties: stateful (they see accepted tokens), never drop a token.
    shape: Option<LlamaSampler>,
    /// Truncation, temperature and the draw (or greedy).
    pick: LlamaSampler,
    truncation: Truncation,
    /// The candidate array, kept between tokens so that sampling allocates nothing.
    buf: Vec<LlamaTokenData>,
}

/// What `pick` does before it draws: what the grammar gate must know to
/// tell whether a draw from part of the candidates is a draw from all of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Truncation {
    /// Picks the most likely token (temperature 0).
    pub greedy: bool,
    /// Keeps the `top_k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keeps the smallest most-likely set holding `top_p` of the probability (at temperature 1).
    pub top_p: Option<f32>,
}

impl TokenSampler {
    /// Samples from the logits at batch index `idx` (which must have requested
    /// logits). The token is not accepted: call [`TokenSampler::accept`] with
    /// the token that is emitted.
    pub fn sample(&mut self, ctx: &LlamaContext, idx: i32) -> LlamaToken {
        match self {
            Self::Greedy => LlamaToken(argmax(ctx.get_logits_ith(idx))),
            Self::Chain(chain) => {
                let buf = std::mem::take(&mut chain.buf);
                let mut cur = shaped(ctx, idx, buf, chain.shape.as_mut());
                chain.pick.apply(&mut cur);
                // Over the whole vocabulary llama.cpp's draw always selects; the argmax is a formality.
                let token = cur
                    .selected_token()
                    .unwrap_or_else(|| LlamaToken(argmax(ctx.get_logits_ith(idx))));
                chain.buf = cur.data;
                token
            }
        }
    }

    /// The emitted token enters the penalty windows.
    pub fn accept(&mut self, token: LlamaToken) {
        if let Self::Chain(Chain {
            shape: Some(shape), ..
        }) = self
        {
            shape.accept(token);
        }
    }

    /// Every token with its logit after bias and penalties, in id order, in
    /// the buffer `into` (its contents are replaced; keep it to reuse it).
    pub fn candidates(
        &mut self,
        ctx: &LlamaContext,
        idx: i32,
        into: Vec<LlamaTokenData>,
    ) -> LlamaTokenDataArray {
        let shape = match self {
            Self::Greedy => None,
            Self::Chain(chain) => chain.shape.as_mut(),
        };
        shaped(ctx, idx, into, shape)
    }

    /// Truncates, applies the temperature and draws from `candidates`
    /// (logits as [`TokenSampler::candidates`] gives them; -inf: excluded).
    /// `None` when no candidate has a finite logit.
    pub fn pick(&mut self, candidates: &mut LlamaTokenDataArray) -> Option<LlamaToken> {
        match self {
            Self::Greedy => best(candidates),
            Self::Chain(chain) => {
                chain.pick.apply(candidates);
                // A draw can land on a zero-probability candidate (a uniform draw of exactly 0).
                candidates
                    .selected
                    .and_then(|i| candidates.data.get(i))
                    .filter(|d| d.logit().is_finite())
                    .map(LlamaTokenData::id)
            }
        }
    }

    pub fn truncation(&self) -> Truncation {
        match self {
            Self::Greedy => Truncation {
                greedy: true,
                top_k: None,
                top_p: None,
            },
            Self::Chain(chain) => chain.truncation,
        }
    }
}

/// The logits at `idx` in `data`, through `shape` if there is one.
fn shaped(
    ctx: &LlamaContext,
    idx: i32,
    mut data: Vec<LlamaTokenData>,
    shape: Option<&mut LlamaSampler>,
) -> LlamaTokenDataArray {
    data.clear();
    data.extend(ctx.candidates_ith(idx));
    let mut cur = LlamaTokenDataArray::new(data, false);
    if let Some(shape) = shape {
        shape.apply(&mut cur);
    }
    cur
}

/// The most likely candidate with a finite logit (the lowest id of equals).
fn best(candidates: &LlamaTokenDataArray) -> Option<LlamaToken> {
    candidates
        .data
        .iter()
        .filter(|d| d.logit().is_finite())
        .min_by(|a, b| {
            b.logit()
                .total_cmp(&a.logit())
                .then(a.id().0.cmp(&b.id().0))
        })
        .map(LlamaTokenData::id)
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
    let mut shape = Vec::with_capacity(3);
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
        shape.push(LlamaSampler::logit_bias(n_vocab, &biases));
    }
    if repetition {
        let mut rep =
            LlamaSampler::penalties(n_vocab, PENALTY_WINDOW, params.repetition_penalty, 0.0, 0.0);
        let from = prompt.len().saturating_sub(PENALTY_WINDOW as usize);
        rep.accept_many(&prompt[from..]);
        shape.push(rep);
    }
    if penalties {
        shape.push(LlamaSampler::penalties(
            n_vocab,
            PENALTY_WINDOW,
            1.0,
            params.frequency_penalty,
            params.presence_penalty,
        ));
    }
    let mut pick = Vec::with_capacity(5);
    let mut truncation = Truncation {
        greedy: params.temperature <= 0.0,
        top_k: None,
        top_p: None,
    };
    if truncation.greedy {
        pick.push(LlamaSampler::greedy());
    } else {
        if params.top_k > 0 {
            let k = i32::try_from(params.top_k).unwrap_or(i32::MAX);
            // k of the whole vocabulary or more keeps every token.
            truncation.top_k = usize::try_from(k).ok().filter(|_| k < n_vocab);
            pick.push(LlamaSampler::top_k(k));
        }
        if params.top_p < 1.0 {
            truncation.top_p = Some(params.top_p);
            pick.push(LlamaSampler::top_p(params.top_p, 1));
        }
        if params.min_p > 0.0 {
            pick.push(LlamaSampler::min_p(params.min_p, 1));
        }
        pick.push(LlamaSampler::temp(params.temperature));
        let seed = params
            .seed
            .map_or_else(random_seed, |s| s.wrapping_add(choice));
        pick.push(LlamaSampler::dist(seed));
    }
    TokenSampler::Chain(Chain {
        shape: (!shape.is_empty()).then(|| LlamaSampler::chain_simple(shape)),
        pick: LlamaSampler::chain_simple(pick),
        truncation,
        buf: Vec::new(),
    })
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
