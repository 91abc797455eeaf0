//! herd's greedy fast path (argmax straight from the logits) picks exactly the
//! token llama.cpp's own greedy sampler picks, step by step on the real model.

mod common;

use common::model_path;
use herd_engines::llama::sampler::{build, TokenSampler};
use herd_engines::SamplingParams;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use std::num::NonZeroU32;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn greedy_fast_path_matches_llama_cpp_greedy() -> TestResult {
    let mut backend = LlamaBackend::init()?;
    backend.void_logs();
    let model = LlamaModel::load_from_file(&backend, model_path(), &LlamaModelParams::default())?;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(512))
        .with_n_threads(1)
        .with_n_threads_batch(1);
    let mut ctx = model.new_context(&backend, params)?;

    let greedy = SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    };
    let mut fast = build(&greedy, model.n_vocab(), &prompt_tokens(&model), 0);
    assert!(
        matches!(fast, TokenSampler::Greedy),
        "greedy without penalties takes the fast path"
    );
    let mut reference = LlamaSampler::greedy();

    let prompt = model.vocab().tokenize(
        b"Write a short story about a lighthouse keeper.",
        true,
        true,
    );
    let mut batch = LlamaBatch::new(512, 1);
    let last = prompt.len() - 1;
    for (i, &t) in prompt.iter().enumerate() {
        batch.add(t, i32::try_from(i)?, &[0], i == last)?;
    }
    ctx.decode(&mut batch)?;
    let start = i32::try_from(prompt.len())?;
    let mut idx = batch.n_tokens() - 1;
    let mut distinct = std::collections::HashSet::new();
    for (step, pos) in (start..start + 64).enumerate() {
        let ours = fast.sample(&ctx, idx);
        let theirs = reference.sample(&ctx, idx);
        assert_eq!(
            ours, theirs,
            "step {step}: herd picked {ours:?}, llama.cpp {theirs:?}"
        );
        distinct.insert(ours);
        batch.clear();
        batch.add(ours, pos, &[0], true)?;
        ctx.decode(&mut batch)?;
        idx = 0;
    }
    assert!(
        distinct.len() > 8,
        "a real continuation, not one repeated token"
    );

    // With penalties, greedy goes through llama.cpp's chain.
    let penalised = SamplingParams {
        temperature: 0.0,
        frequency_penalty: 0.5,
        ..SamplingParams::default()
    };
    assert!(matches!(
        build(&penalised, model.n_vocab(), &prompt, 0),
        TokenSampler::Chain(_)
    ));
    // So does greedy with a bias or a repetition penalty.
    for params in [
        SamplingParams {
            temperature: 0.0,
            logit_bias: vec![(5, -100.0)],
            ..SamplingParams::default()
        },
        SamplingParams {
            temperature: 0.0,
            repetition_penalty: 1.3,
            ..SamplingParams::default()
        },
    ] {
        assert!(matches!(
            build(&params, model.n_vocab(), &prompt, 0),
            TokenSampler::Chain(_)
        ));
    }
    Ok(())
}

fn prompt_tokens(model: &LlamaModel) -> Vec<llama_cpp_2::token::LlamaToken> {
    model.vocab().tokenize(b"hi", true, true)
}
