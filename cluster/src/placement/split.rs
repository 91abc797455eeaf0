//! The memory model ([`shard_bytes`]) and the memory-weighted layer split.

use super::DeploymentSpec;
use crate::gguf::ModelFacts;
use std::ops::Range;

const MIB: u64 = 1 << 20;
/// Tokens in one batch: compute buffers are sized for a full one.
const BATCH: u64 = 512;

/// Bytes a node needs to hold `layers` of `spec`, plus, on the head, the
/// embeddings and output layer (see the module docs). Layers past the
/// model's end count as empty.
pub fn shard_bytes(spec: &DeploymentSpec, layers: Range<u32>, is_head: bool) -> u64 {
    let facts = &spec.facts;
    let count = layers.end.saturating_sub(layers.start);
    let weights = facts
        .layer_bytes
        .iter()
        .skip(layers.start as usize)
        .take(count as usize)
        .fold(0u64, |sum, &b| sum.saturating_add(b));
    let fixed = if is_head {
        facts.other_bytes.saturating_add(head_compute(facts))
    } else {
        shard_compute(facts)
    };
    weights
        .saturating_add(kv_per_layer(spec).saturating_mul(count.into()))
        .saturating_add(fixed)
}

/// KV cache of one layer: every slot holds `ctx_size` tokens.
fn kv_per_layer(spec: &DeploymentSpec) -> u64 {
    spec.facts
        .kv_bytes_per_token_per_layer
        .saturating_mul(spec.slots.into())
        .saturating_mul(spec.ctx_size.into())
}

/// The head computes the logits of a whole batch (f32).
fn head_compute(facts: &ModelFacts) -> u64 {
    (64 * MIB).saturating_add(u64::from(facts.n_vocab).saturating_mul(4 * BATCH))
}

/// A middle shard holds a batch's activations (f32, a few at once).
fn shard_compute(facts: &ModelFacts) -> u64 {
    (32 * MIB).saturating_add(u64::from(facts.n_embd).saturating_mul(4 * BATCH * 8))
}

/// Contiguous layer ranges, one per entry of `avail` (memory a node has left
/// for layers after its fixed costs), each covering a share of the layer
/// cost proportional to its entry, rounded to the nearest layer boundary.
/// Needs `1 ≤ avail.len() ≤ n_layers`; every range gets at least one layer.
pub(super) fn split(spec: &DeploymentSpec, avail: &[u64]) -> Vec<Range<u32>> {
    let n = spec.facts.n_layers as usize;
    let k = avail.len();
    let kv = kv_per_layer(spec);
    // Floating point: exact integer products can overflow u128 with absurd
    // inputs, and a boundary off by rounding is harmless (fit is checked after).
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0.0f64);
    let mut sum = 0.0;
    for j in 0..n {
        let bytes = spec.facts.layer_bytes.get(j).copied().unwrap_or(0);
        sum += bytes.saturating_add(kv) as f64;
        prefix.push(sum);
    }
    let weight_total: f64 = avail.iter().map(|&a| a as f64).sum();
    // Nobody has room: split by layer count; the fit check will refuse it.
    let weight = |i: usize| {
        if weight_total > 0.0 {
            avail.get(i).copied().unwrap_or(0) as f64 / weight_total
        } else {
            1.0 / k as f64
        }
    };

    let mut bounds = vec![0usize];
    let mut share = 0.0;
    for i in 0..k.saturating_sub(1) {
        share += weight(i);
        let target = sum * share;
        let lo = bounds.last().map_or(0, |b| b + 1);
        let hi = n.saturating_sub(k - 1 - i).max(lo);
        let nearest = (lo..=hi)
            .min_by(|&a, &b| {
                let da = (prefix.get(a).copied().unwrap_or(sum) - target).abs();
                let db = (prefix.get(b).copied().unwrap_or(sum) - target).abs();
                da.total_cmp(&db)
            })
            .unwrap_or(lo);
        bounds.push(nearest);
    }
    bounds.push(n);
    bounds
        .windows(2)
        .map(|w| match w {
            [s, e] => *s as u32..*e as u32,
            _ => 0..0,
        })
        .collect()
}

/// `1288490189` → `1.20 GiB`; below a GiB in MiB.
pub(super) fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b / MIB as f64)
    }
}
