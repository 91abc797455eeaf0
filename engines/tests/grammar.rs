//! The grammar gate's draw after a rejection, on the real vocabulary: it
//! must follow exactly the distribution of llama.cpp's sampler chain run on
//! the grammar-allowed candidates alone (what llama-server does), whether
//! it decides from the head, draws from the tail or checks everything.
//! Synthetic logits make each path common; a chi-square test compares
//! thousands of draws with the distribution computed here.

mod common;

use common::model_path;
use herd_engines::llama::grammar::{FirstBytes, GrammarGate, GrammarStats};
use herd_engines::llama::sampler::build;
use herd_engines::{Grammar, SamplingParams};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct Loaded {
    _backend: LlamaBackend,
    model: LlamaModel,
    first_bytes: Arc<FirstBytes>,
}

static LOADED: OnceLock<Result<Loaded, String>> = OnceLock::new();

fn loaded() -> Result<&'static Loaded, String> {
    LOADED
        .get_or_init(|| {
            let mut backend = LlamaBackend::init().map_err(|e| e.to_string())?;
            backend.void_logs();
            let model =
                LlamaModel::load_from_file(&backend, model_path(), &LlamaModelParams::default())
                    .map_err(|e| e.to_string())?;
            let first_bytes = Arc::new(FirstBytes::of(&model));
            Ok(Loaded {
                _backend: backend,
                model,
                first_bytes,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Words of lowercase letters only: a few thousand tokens, spread over the vocabulary.
const WORD: &str = "root ::= [a-z]+";

/// A number in [0, 1) from `i`, the same on every run (splitmix64).
fn unit(i: u64) -> f64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as f64 / u64::MAX as f64
}

/// How the synthetic probability is spread.
#[derive(Debug, Clone, Copy)]
struct Spread {
    /// About how many tokens get `boost` added to their noise in [0, 2).
    boosted: u32,
    boost: f32,
}

/// Most of the probability beyond the head: more boosted tokens than the head holds.
const FLAT: Spread = Spread {
    boosted: 600,
    boost: 4.0,
};
/// Nearly all of it in the head: fewer boosted tokens than the head holds, far above the rest.
const PEAKED: Spread = Spread {
    boosted: 64,
    boost: 12.0,
};

/// The logits of every token, the same on every run.
fn logits(n_vocab: i32, spread: Spread) -> Vec<LlamaTokenData> {
    (0..n_vocab)
        .map(|id| {
            let i = u64::from(id.unsigned_abs());
            let mut logit = 2.0 * unit(i) as f32;
            if unit(i + 1_000_000) < f64::from(spread.boosted) / f64::from(n_vocab) {
                logit += spread.boost;
            }
            LlamaTokenData::new(LlamaToken(id), logit, 0.0)
        })
        .collect()
}

/// The tokens `gbnf` allows first, with their logits: llama.cpp's own full check.
fn allowed(
    model: &LlamaModel,
    gbnf: &str,
    all: &[LlamaTokenData],
) -> Result<Vec<(i32, f32)>, String> {
    let mut grammar = LlamaSampler::grammar(model, gbnf, "root").map_err(|e| e.to_string())?;
    let mut cur = LlamaTokenDataArray::new(all.to_vec(), false);
    grammar.apply(&mut cur);
    Ok(cur
        .data
        .iter()
        .filter(|d| d.logit().is_finite())
        .map(|d| (d.id().0, d.logit()))
        .collect())
}

/// llama.cpp's chain (top-k → top-p → min-p → temperature → draw) over
/// `allowed`, as probabilities by token id.
fn reference(allowed: &[(i32, f32)], params: &SamplingParams) -> HashMap<i32, f64> {
    let mut kept: Vec<(i32, f64)> = allowed.iter().map(|&(id, l)| (id, f64::from(l))).collect();
    kept.sort_by(|a, b| b.1.total_cmp(&a.1));
    if params.top_k > 0 {
        kept.truncate(params.top_k as usize);
    }
    let max = kept.first().map_or(0.0, |k| k.1);
    if params.top_p < 1.0 {
        let total: f64 = kept.iter().map(|k| (k.1 - max).exp()).sum();
        let mut sum = 0.0;
        let cut = kept
            .iter()
            .position(|k| {
                sum += (k.1 - max).exp() / total;
                sum >= f64::from(params.top_p)
            })
            .map_or(kept.len(), |i| i + 1);
        kept.truncate(cut);
    }
    if params.min_p > 0.0 {
        let floor = max + f64::from(params.min_p).ln();
        kept.retain(|k| k.1 >= floor);
    }
    let t = f64::from(params.temperature);
    let total: f64 = kept.iter().map(|k| ((k.1 - max) / t).exp()).sum();
    kept.iter()
        .map(|&(id, l)| (id, ((l - max) / t).exp() / total))
        .collect()
}

/// Pearson's chi-square of `counts` against `probs` over `n` draws, with
/// its degrees of freedom: likely tokens in bins of their own, the rest in
/// four bins by id. A draw of a token `probs` excludes is an error.
fn chi_square(
    counts: &HashMap<i32, u64>,
    probs: &HashMap<i32, f64>,
    n: u64,
) -> Result<(f64, usize), String> {
    if let Some(id) = counts.keys().find(|id| !probs.contains_key(id)) {
        return Err(format!("token {id} drawn, which the reference never draws"));
    }
    let n = n as f64;
    let mut bins: Vec<(f64, f64)> = Vec::new();
    let mut rest = [(0.0, 0.0); 4];
    for (&id, &p) in probs {
        let observed = counts.get(&id).copied().unwrap_or(0) as f64;
        if n * p >= 10.0 {
            bins.push((observed, n * p));
        } else {
            let r = &mut rest[id.unsigned_abs() as usize % 4];
            r.0 += observed;
            r.1 += n * p;
        }
    }
    let (mut small_o, mut small_e) = (0.0, 0.0);
    for (o, e) in rest {
        if e >= 5.0 {
            bins.push((o, e));
        } else {
            small_o += o;
            small_e += e;
        }
    }
    if small_e > 0.0 {
        bins.push((small_o, small_e));
    }
    let chi2 = bins.iter().map(|(o, e)| (o - e) * (o - e) / e).sum();
    Ok((chi2, bins.len().saturating_sub(1)))
}

/// Draws `n` times from the gate's state after a rejection and compares.
fn check(
    gbnf: &str,
    spread: Spread,
    params: SamplingParams,
    n: u64,
) -> Result<GrammarStats, String> {
    let Loaded {
        model, first_bytes, ..
    } = loaded()?;
    let all = logits(model.n_vocab(), spread);
    let probs = reference(&allowed(model, gbnf, &all)?, &params);
    let mut sampler = build(&params, model.n_vocab(), &[], 0);
    let grammar = Grammar {
        gbnf: gbnf.to_string(),
    };
    let mut gate = GrammarGate::new(model, &grammar, first_bytes).map_err(|e| e.to_string())?;
    let mut counts = HashMap::new();
    for _ in 0..n {
        let mut candidates = LlamaTokenDataArray::new(all.clone(), false);
        let token = gate
            .resample(&mut candidates, &mut sampler)
            .ok_or("the gate allowed nothing")?;
        *counts.entry(token.0).or_insert(0u64) += 1;
    }
    let (chi2, df) = chi_square(&counts, &probs, n)?;
    // Far out in the tail for a correct sampler (p < 1e-4 for these df), and
    // a draw that misses any part of the distribution is far beyond it.
    let limit = df as f64 + 6.0 * (2.0 * df as f64).sqrt();
    if chi2 > limit {
        return Err(format!(
            "chi-square {chi2:.1} over {df} degrees of freedom (limit {limit:.1}); {:?}",
            gate.stats()
        ));
    }
    Ok(gate.stats())
}

fn at(temperature: f32) -> SamplingParams {
    SamplingParams {
        temperature,
        seed: Some(11),
        ..SamplingParams::default()
    }
}

#[test]
fn plain_temperature_draws_exactly_through_head_tail_and_full_checks() -> TestResult {
    let flat = check(WORD, FLAT, at(1.0), 3000)?;
    assert!(flat.tail > 100 && flat.full > 100, "{flat:?}");
    let peaked = check(WORD, PEAKED, at(0.7), 3000)?;
    assert!(peaked.full + peaked.tail < 300, "{peaked:?}");
    Ok(())
}

#[test]
fn truncating_samplers_draw_exactly() -> TestResult {
    let top_k = SamplingParams {
        top_k: 10,
        ..at(1.0)
    };
    let s = check(WORD, FLAT, top_k, 2000)?;
    assert_eq!(s.full, 0, "ten allowed tokens are in the head: {s:?}");
    let min_p = SamplingParams {
        min_p: 0.05,
        ..at(1.0)
    };
    check(WORD, FLAT, min_p, 2000)?;
    // Whether the tail can move top-p's cut depends on where it falls: some
    // of these are decided in the head, the others check every candidate.
    let mut full = 0;
    for top_p in [0.3, 0.6, 0.9] {
        let params = SamplingParams { top_p, ..at(0.7) };
        full += check(WORD, PEAKED, params, 800)?.full;
    }
    assert!(full < 3 * 800, "top-p never decided in the head");
    let params = SamplingParams {
        top_p: 0.9,
        ..at(0.7)
    };
    let s = check(WORD, FLAT, params, 800)?;
    assert_eq!(s.full, 800, "a heavy tail always may move the cut: {s:?}");
    Ok(())
}

#[test]
fn greedy_takes_the_most_likely_allowed_token() -> TestResult {
    let Loaded {
        model, first_bytes, ..
    } = loaded()?;
    let grammar = Grammar {
        gbnf: WORD.to_string(),
    };
    for (spread, head) in [(PEAKED, 128), (FLAT, 128), (FLAT, 0), (FLAT, 4)] {
        let all = logits(model.n_vocab(), spread);
        let best = allowed(model, WORD, &all)?
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|a| a.0);
        let mut sampler = build(&at(0.0), model.n_vocab(), &[], 0);
        let mut gate = GrammarGate::new(model, &grammar, first_bytes)?.with_head(head);
        let mut candidates = LlamaTokenDataArray::new(all, false);
        let token = gate.resample(&mut candidates, &mut sampler).map(|t| t.0);
        assert_eq!(token, best, "{spread:?}, head {head}");
    }
    Ok(())
}

#[test]
fn a_token_is_only_allowed_if_its_first_byte_is() -> TestResult {
    let Loaded {
        model, first_bytes, ..
    } = loaded()?;
    let json = r#"{"name": "Zoë", "n": [1, -2.5e3, true, null], "s": "a\"b\u00e9"}"#;
    let gbnf = r#"root ::= value
value ::= object | array | string | number | "true" | "false" | "null"
object ::= "{" ws (string ws ":" ws value ws ("," ws string ws ":" ws value ws)*)? "}"
array ::= "[" ws (value ws ("," ws value ws)*)? "]"
string ::= "\"" ([^"\\] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}))* "\""
number ::= "-"? [0-9]+ ("." [0-9]+)? ([eE] [-+]? [0-9]+)?
ws ::= [ \t\n]*"#;
    let mut grammar = LlamaSampler::grammar(model, gbnf, "root")?;
    let all: Vec<_> = logits(model.n_vocab(), FLAT);
    let mut states = 0;
    for token in model.vocab().tokenize(json.as_bytes(), false, false) {
        let mut cur = LlamaTokenDataArray::new(all.clone(), false);
        grammar.apply(&mut cur);
        let next = usize::try_from(token.0)?;
        // Accepting a refused token would abort the process.
        assert!(
            cur.data.get(next).is_some_and(|d| d.logit().is_finite()),
            "the grammar refuses the document at {token:?}"
        );
        let pass = first_bytes.passing(|probes| grammar.apply(probes));
        for d in cur.data.iter().filter(|d| d.logit().is_finite()) {
            if let Some(b) = first_bytes.byte(d.id()) {
                assert!(
                    pass[usize::from(b)],
                    "token {:?} allowed, its first byte {b:#x} not",
                    d.id()
                );
            }
        }
        grammar.accept(token);
        states += 1;
    }
    assert!(states > 20, "{states} states walked");
    Ok(())
}
