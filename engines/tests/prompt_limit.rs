//! The byte bound that refuses a too-long prompt without tokenizing it holds
//! on SmolLM2's real tokenizer: no text becomes fewer tokens than it claims,
//! and a 4 MB prompt is refused in a fraction of the time tokenizing takes.
//! The gateway applies it to a chat's contents before rendering, which holds
//! because every chat template llama.cpp renders keeps every content.

mod common;

use common::model_path;
use herd_engines::llama::host::usable_template;
use herd_engines::llama::prepare::{prepare, prepare_within, PromptLimit, COUNTED};
use herd_engines::{ChatMessage, EngineError, PromptInput};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use std::time::Instant;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn chat(content: String) -> PromptInput {
    PromptInput::Chat(vec![ChatMessage {
        role: "user".into(),
        content,
    }])
}

/// One test owns the backend (llama.cpp's backend is process-global).
#[test]
fn a_prompt_too_long_by_its_bytes_is_refused_without_tokenizing() -> TestResult {
    let mut backend = LlamaBackend::init()?;
    backend.void_logs();
    let model = LlamaModel::load_from_file(&backend, model_path(), &LlamaModelParams::default())?;
    let vocab = model.vocab();
    let per_token = PromptLimit::of(&model, 4096)
        .max_token_bytes()
        .ok_or("SmolLM2's BPE tokenizer should give a bound")?;

    // Soundness: a context of 1 token makes every text counted, never skipped.
    let counted = PromptLimit::of(&model, 1);
    let longest = vocab
        .tokens()
        .map(|t| vocab.token_to_piece(t, true, None))
        .max_by_key(|p| p.iter().filter(|b| !b.is_ascii_whitespace()).count())
        .ok_or("empty vocabulary")?;
    let longest = String::from_utf8_lossy(&longest).into_owned();
    let texts = [
        longest.repeat(500),
        format!("{longest} ").repeat(500),
        "<|im_start|><|im_end|>".repeat(500),
        "The quick brown fox jumps over the lazy dog. ".repeat(500),
        "fn main() { println!(\"{}\", x); }\n\t\t".repeat(500),
        "数据 🦀 é\u{3000}".repeat(500),
        format!("{}x{}", " ".repeat(5000), "\n".repeat(5000)),
    ];
    for text in &texts {
        let tokens = vocab.tokenize(text.as_bytes(), true, true).len() as u64;
        let claimed = counted.min_tokens(text);
        assert!(
            claimed > 0 && tokens >= claimed,
            "{claimed} claimed, {tokens} real for {:?}…",
            &text[..text.len().min(60)]
        );
    }

    // Six copies of this tokenized one after another took 8.6 s here.
    let template = usable_template(&model);
    let limit = PromptLimit::of(&model, 4096);
    let big = chat("The quick brown fox jumps over the lazy dog. ".repeat(4_000_000 / 45));
    let started = Instant::now();
    let refused = prepare_within(&model, template.as_ref(), &limit, &big);
    let refusing = started.elapsed();
    let Err(EngineError::PromptTooLong { ctx, at_least }) = refused else {
        return Err(format!("expected a refusal, got {refused:?}").into());
    };
    assert_eq!(ctx, 4096);
    let started = Instant::now();
    let tokens = prepare(&model, template.as_ref(), &big)?.tokens.len() as u64;
    let tokenizing = started.elapsed();
    assert!(
        tokens >= at_least,
        "{tokens} tokens, at least {at_least} claimed"
    );
    eprintln!(
        "longest token: {per_token} bytes (whitespace left out); 4 MB prompt: refused in {refusing:?} (at least {at_least} tokens), tokenized in {tokenizing:?} ({tokens} tokens)"
    );
    assert!(refusing * 5 < tokenizing, "{refusing:?} vs {tokenizing:?}");

    // Whitespace proves nothing (a template or a special token may swallow it).
    let spaces = chat(format!("hi{}", " ".repeat(1 << 20)));
    assert!(prepare_within(&model, template.as_ref(), &limit, &spaces).is_ok());
    let fits = chat("Hello there".into());
    assert_eq!(
        prepare_within(&model, template.as_ref(), &limit, &fits)?,
        prepare(&model, template.as_ref(), &fits)?
    );

    // The gateway's check, on the contents before rendering, refuses the same.
    let reported = PromptLimit::new(4096, Some(per_token));
    assert!(matches!(
        reported.check_input(&big),
        Err(EngineError::PromptTooLong { .. })
    ));
    assert!(reported.check_input(&spaces).is_ok());
    every_builtin_template_keeps_every_content(&model)
}

/// The names of llama.cpp's built-in chat templates (all it renders with).
fn builtin_templates() -> Vec<String> {
    // SAFETY: with a null output and length 0 it only counts; then it writes
    // at most `len` pointers to static C strings into a buffer that long.
    let count = unsafe { llama_cpp_sys_2::llama_chat_builtin_templates(std::ptr::null_mut(), 0) };
    let mut names = vec![std::ptr::null(); usize::try_from(count).unwrap_or(0)];
    let written =
        unsafe { llama_cpp_sys_2::llama_chat_builtin_templates(names.as_mut_ptr(), names.len()) };
    names.truncate(usize::try_from(written).unwrap_or(0));
    names
        .into_iter()
        .filter(|p| !p.is_null())
        // SAFETY: each is a NUL-terminated static string from llama.cpp's table.
        .map(|p| {
            unsafe { std::ffi::CStr::from_ptr(p) }
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

fn every_builtin_template_keeps_every_content(model: &LlamaModel) -> TestResult {
    let names = builtin_templates();
    assert!(
        names.len() > 30,
        "llama.cpp lists {} templates",
        names.len()
    );
    let roles = ["system", "user", "assistant", "tool", "user"];
    let mut rendered_any = 0;
    for name in &names {
        let template = LlamaChatTemplate::new(name)?;
        // Some templates refuse some roles (a tool turn, a system prompt): then fewer.
        for skip in [None, Some("tool"), Some("system")] {
            let contents: Vec<(&str, String)> = roles
                .iter()
                .enumerate()
                .filter(|(_, r)| Some(**r) != skip)
                .map(|(i, r)| (*r, format!("{r}-content-{i} with words")))
                .collect();
            let chat = contents
                .iter()
                .map(|(r, c)| LlamaChatMessage::new(r.to_string(), c.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            let Ok(text) = model.apply_chat_template(&template, &chat, true) else {
                continue;
            };
            // Some drop a tool turn (command-r, deepseek, vicuna, …), one a
            // system prompt (yandex): the bound counts user and assistant turns only.
            for (role, content) in contents.iter().filter(|(r, _)| COUNTED.contains(r)) {
                assert!(
                    text.contains(content.as_str()),
                    "template {name} dropped the {role} message: {text:?}"
                );
            }
            rendered_any += 1;
            break;
        }
    }
    assert!(
        rendered_any * 10 >= names.len() * 9,
        "{rendered_any} of {}",
        names.len()
    );
    Ok(())
}
