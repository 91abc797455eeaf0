use super::*;
use crate::openai::request::ChatCompletionRequest;

fn chat_json(v: serde_json::Value) -> Result<ValidRequest, ApiError> {
    let req: ChatCompletionRequest =
        serde_json::from_value(v).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    chat(req)
}

fn err_of(v: serde_json::Value) -> (String, Option<&'static str>) {
    match chat_json(v) {
        Ok(_) => (String::from("accepted"), None),
        Err(e) => (e.to_string(), e.envelope().error.param),
    }
}

#[test]
fn accepts_and_ignores_extra_fields() {
    let r = chat_json(serde_json::json!({
        "model": "m", "messages": [{"role": "user", "content": "hi", "name": "bob"}],
        "logit_bias": {"50256": -100}, "user": "u1", "tools": [], "response_format": {"type": "text"},
        "stream": true, "stream_options": {"include_usage": true}, "seed": -5
    }));
    let r = r.map_err(|e| e.to_string());
    assert!(r.is_ok(), "{r:?}");
    if let Ok(r) = r {
        assert!(r.stream && r.include_usage);
        assert!(r.sampling.seed.is_some());
    }
}

#[test]
fn content_parts_are_joined() {
    let r = chat_json(serde_json::json!({"model": "m", "messages": [
        {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}));
    match r.map(|r| r.input) {
        Ok(Input::Chat(chat)) => assert_eq!(
            chat.turns,
            vec![Turn {
                role: Role::System,
                content: "a\nb".into(),
                calls: Vec::new(),
            }]
        ),
        other => unreachable!("{other:?}"),
    }
}

#[test]
fn errors_name_field_and_value() {
    let base = |k: &str, v: serde_json::Value| {
        let mut o =
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        o[k] = v;
        o
    };
    let (msg, param) = err_of(base("temperature", serde_json::json!(3.5)));
    assert_eq!(
        (msg.as_str(), param),
        (
            "`temperature` must be between 0 and 2, got 3.5",
            Some("temperature")
        )
    );
    let (msg, param) = err_of(base("n", serde_json::json!(0)));
    assert_eq!(
        (msg.as_str(), param),
        ("`n` must be between 1 and 128, got 0", Some("n"))
    );
    let (msg, param) = err_of(base("logit_bias", serde_json::json!({"7": -101})));
    assert_eq!(
        (msg.as_str(), param),
        (
            "`logit_bias[\"7\"]` must be between -100 and 100, got -101",
            Some("logit_bias")
        )
    );
    let (_, param) = err_of(base("modalities", serde_json::json!(["text", "audio"])));
    assert_eq!(param, Some("modalities"));
    let (_, param) = err_of(base("audio", serde_json::json!({"voice": "alloy"})));
    assert_eq!(param, Some("audio"));
    let (_, param) = err_of(base("web_search_options", serde_json::json!({})));
    assert_eq!(param, Some("web_search_options"));
    let (msg, _) = err_of(base("max_tokens", serde_json::json!(0)));
    assert_eq!(msg, "`max_tokens` must be at least 1, got 0");
    let (msg, _) = err_of(base("max_completion_tokens", serde_json::json!(-3)));
    assert_eq!(msg, "`max_completion_tokens` must be at least 1, got -3");
    let (msg, _) = err_of(base("stop", serde_json::json!(["a", "b", "c", "d", "e"])));
    assert!(msg.contains("at most 4"), "{msg}");
    let (msg, _) = err_of(serde_json::json!({"model": "m", "messages": []}));
    assert!(msg.contains("at least one message"), "{msg}");
    let (msg, _) =
        err_of(serde_json::json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}));
    assert!(msg.contains("wizard"), "{msg}");
}

#[test]
fn max_completion_tokens_wins_over_max_tokens() {
    let r = chat_json(
        serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5, "max_completion_tokens": 9}),
    );
    assert_eq!(r.ok().and_then(|r| r.max_tokens), Some(9));
}

#[test]
fn completion_prompt_forms() {
    let parse = |v: serde_json::Value| -> Result<ValidRequest, ApiError> {
        completion(serde_json::from_value(v).map_err(|e| ApiError::InvalidJson(e.to_string()))?)
    };
    assert!(parse(serde_json::json!({"model": "m", "prompt": ["one"]})).is_ok());
    let prompts = |r: Result<ValidRequest, ApiError>| match r.map(|r| r.input) {
        Ok(Input::Prompts { first, more }) => Some((first, more)),
        _ => None,
    };
    let two = parse(serde_json::json!({"model": "m", "prompt": ["a", "b"]}));
    assert_eq!(
        prompts(two),
        Some((
            PromptInput::Text("a".into()),
            vec![PromptInput::Text("b".into())]
        ))
    );
    assert!(parse(serde_json::json!({"model": "m", "prompt": ""})).is_err());
    let ids = parse(serde_json::json!({"model": "m", "prompt": [1, 2]}));
    assert_eq!(
        prompts(ids),
        Some((PromptInput::Tokens(vec![1, 2]), Vec::new()))
    );
    assert!(parse(serde_json::json!({"model": "m", "prompt": [[1], []]})).is_err());
    assert!(parse(serde_json::json!({"model": "m", "prompt": [3_000_000_000i64]})).is_err());
}

#[test]
fn logit_bias_is_by_token_id_each_named_once() {
    let bias = |b: serde_json::Value| {
        chat_json(
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "logit_bias": b}),
        )
        .map(|r| r.sampling.logit_bias)
        .map_err(|e| e.to_string())
    };
    assert_eq!(
        bias(serde_json::json!({"10": 1, "9": -100})),
        Ok(vec![(9, -100.0), (10, 1.0)])
    );
    assert_eq!(
        bias(serde_json::json!({"10": 1, "010": 5})),
        Err("`logit_bias` names token 10 twice".into())
    );
}

#[test]
fn history_calls_and_results_stay_neutral_until_a_model_answers() {
    let r = chat_json(serde_json::json!({"model": "m", "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": " {\"city\": \"Oslo\"} "}},
            {"id": "c2", "type": "function", "function": {"name": "now", "arguments": "not json"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "rain"}],
        "tools": [{"type": "function", "function": {"name": "get_weather"}}], "tool_choice": "required"}));
    let Ok(Input::Chat(chat)) = r.map(|r| r.input) else {
        unreachable!("a valid chat")
    };
    assert_eq!(chat.turns[1].calls[0].arguments, "{\"city\": \"Oslo\"}");
    assert_eq!(chat.turns[1].calls[1].arguments, "\"not json\"");
    assert_eq!(chat.turns[2].role, Role::Tool);
    assert_eq!(chat.turns[2].content, "rain");
    assert!(chat.tools.is_some_and(|t| t.defs.len() == 1));
    let (msg, param) = err_of(serde_json::json!({"model": "m", "messages": [
        {"role": "tool", "content": "x", "tool_calls": []}]}));
    assert_eq!(param, Some("messages"));
    assert!(msg.contains("only allowed on assistant messages"), "{msg}");
}
