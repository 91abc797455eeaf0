//! Whether a draw after a grammar rejection can be decided from the head
//! (the most likely candidates, checked against the grammar together) or
//! needs more of the vocabulary. A pure decision, so that it can be tested
//! without a model.
//!
//! The target is what llama.cpp does when it applies the grammar to every
//! candidate and then runs the sampler chain: the chain's truncation and
//! draw over the allowed candidates only. Every unchecked (tail) candidate
//! is at most as likely as any head candidate, so the allowed head is the
//! start of the allowed candidates in order of likelihood.

use crate::llama::sampler::Truncation;

/// Which candidates the draw after a rejection sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Only the allowed head: the chain keeps the same tokens from it as
    /// from all allowed candidates (greedy; top-k with k allowed in the
    /// head; a top-p cut that the tail cannot move).
    Head,
    /// The allowed head and the unchecked tail; a tail token drawn is
    /// checked alone, and if refused it is removed and the draw repeated.
    /// Rejection sampling: what is finally accepted is drawn from the
    /// allowed candidates exactly, because without top-k or top-p every
    /// token's weight (exp(logit / T), min-p's cut at a ratio of the most
    /// likely, which is in the head) does not depend on the other tokens.
    HeadAndTail,
    /// The head decides nothing: check the whole vocabulary.
    Full,
}

/// How a draw after a rejection proceeds. `allowed`: the logits of the
/// allowed head candidates, most likely first. `tail_weight(max)`: the sum
/// of exp(logit - max) over the tail, asked for only under top-p.
pub fn plan(
    truncation: &Truncation,
    allowed: &[f32],
    tail_weight: impl FnOnce(f32) -> f64,
) -> Plan {
    let Some(&max) = allowed.first() else {
        return Plan::Full;
    };
    if truncation.greedy {
        return Plan::Head;
    }
    if let Some(k) = truncation.top_k {
        // Top-p and min-p then act on those k, all known.
        return if allowed.len() >= k {
            Plan::Head
        } else {
            Plan::Full
        };
    }
    if let Some(p) = truncation.top_p {
        let weights: Vec<f64> = allowed.iter().map(|&l| f64::from(l - max).exp()).collect();
        let head: f64 = weights.iter().sum();
        return if nucleus_is_settled(&weights, f64::from(p), head, head + tail_weight(max)) {
            Plan::Head
        } else {
            Plan::Full
        };
    }
    Plan::HeadAndTail
}

/// Whether top-p keeps the same prefix of `weights` (most likely first)
/// whatever the total weight of the allowed candidates between `low` (the
/// head's alone) and `high` (the head's and the whole tail's). The cut only
/// moves later as the total grows, so equal cuts at both ends settle it; a
/// relative margin of 1e-5 covers llama.cpp computing in `f32`.
pub fn nucleus_is_settled(weights: &[f64], p: f64, low: f64, high: f64) -> bool {
    let cut = |total: f64| {
        let mut sum = 0.0;
        weights.iter().position(|w| {
            sum += w;
            sum >= p * total
        })
    };
    match (cut(low * (1.0 - 1e-5)), cut(high * (1.0 + 1e-5))) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn free() -> Truncation {
        Truncation {
            greedy: false,
            top_k: None,
            top_p: None,
        }
    }

    #[test]
    fn nothing_allowed_in_the_head_needs_the_full_vocabulary() {
        let greedy = Truncation {
            greedy: true,
            ..free()
        };
        assert_eq!(plan(&greedy, &[], |_| 0.0), Plan::Full);
        assert_eq!(plan(&free(), &[], |_| 0.0), Plan::Full);
    }

    #[test]
    fn greedy_and_a_full_top_k_decide_in_the_head() {
        let greedy = Truncation {
            greedy: true,
            ..free()
        };
        assert_eq!(plan(&greedy, &[1.0], |_| 1e9), Plan::Head);
        let top3 = Truncation {
            top_k: Some(3),
            ..free()
        };
        assert_eq!(plan(&top3, &[3.0, 2.0, 1.0], |_| 1e9), Plan::Head);
        assert_eq!(plan(&top3, &[3.0, 2.0], |_| 0.0), Plan::Full);
    }

    #[test]
    fn plain_temperature_draws_from_head_and_tail() {
        assert_eq!(plan(&free(), &[2.0, 1.0], |_| 5.0), Plan::HeadAndTail);
    }

    #[test]
    fn top_p_decides_in_the_head_only_when_the_tail_cannot_move_the_cut() {
        let top_p = Truncation {
            top_p: Some(0.5),
            ..free()
        };
        // The first token holds ~0.9 of the head: the cut is after it even if
        // the tail weighs as much as the second token.
        let logits = [0.0, -2.2];
        assert_eq!(plan(&top_p, &logits, |_| 0.11), Plan::Head);
        // A tail as heavy as the whole head moves the cut past the head.
        assert_eq!(plan(&top_p, &logits, |_| 1.2), Plan::Full);
    }

    proptest! {
        /// Settled means: for every total weight of allowed tail tokens in
        /// [0, tail], top-p over all allowed keeps exactly the head prefix
        /// that top-p over the head alone keeps.
        #[test]
        fn a_settled_nucleus_is_the_nucleus_of_every_possible_tail(
            logits in prop::collection::vec(-8.0f32..0.0, 1..40),
            p in 0.05f64..0.99,
            tail in 0.0f64..3.0,
            share in 0.0f64..=1.0,
        ) {
            let mut logits = logits;
            logits.sort_by(|a, b| b.total_cmp(a));
            let weights: Vec<f64> = logits.iter().map(|&l| f64::from(l - logits[0]).exp()).collect();
            let head: f64 = weights.iter().sum();
            prop_assume!(nucleus_is_settled(&weights, p, head, head + tail));
            let keep = |total: f64| {
                let mut sum = 0.0;
                weights.iter().position(|w| { sum += w; sum >= p * total })
            };
            prop_assert_eq!(keep(head), keep(head + share * tail));
        }
    }
}
