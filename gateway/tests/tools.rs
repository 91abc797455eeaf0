//! Tool calling against a real `herd serve` with the real SmolLM2 (whose
//! template knows no tools: herd describes them and constrains the calls by
//! grammar), through async-openai, the official Python SDK and raw HTTP.

mod common;
#[path = "common/pyenv.rs"]
mod pyenv;
#[path = "common/tool_client.rs"]
mod tool_client;

use async_openai::types::{
    ChatCompletionTool, ChatCompletionToolChoiceOption, CreateChatCompletionRequestArgs,
    FinishReason,
};
use common::{Server, TestResult, MODEL_ID};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tool_client::{chat, check_call, stream_calls, tools, user};

#[tokio::test]
async fn streamed_tool_calls_reassemble_with_async_openai() -> TestResult {
    let server = Server::start(&["--slots", "2"])?;
    let tools: Vec<ChatCompletionTool> = serde_json::from_value(tools())?;
    for seed in 0..4 {
        let req = CreateChatCompletionRequestArgs::default()
            .model(MODEL_ID)
            .messages([user("What's the weather like in Paris today?")?])
            .tools(tools.clone())
            .tool_choice(ChatCompletionToolChoiceOption::Required)
            .temperature(1.0)
            .seed(seed)
            .max_tokens(300u32)
            .build()?;
        let (finish, calls) = stream_calls(&server, req).await?;
        assert_eq!(finish, Some(FinishReason::ToolCalls), "seed {seed}");
        assert!(!calls.is_empty(), "required means at least one call");
        assert_eq!(
            calls.keys().copied().collect::<Vec<_>>(),
            (0..calls.len() as u32).collect::<Vec<_>>()
        );
        for (id, name, arguments) in calls.values() {
            assert!(id.starts_with("call_"), "{id}");
            check_call(name, arguments)?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn stream_and_whole_answer_carry_the_same_calls() -> TestResult {
    let server = Server::start(&[])?;
    let body = json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": tools(), "tool_choice": "required", "temperature": 0, "max_tokens": 200});
    let (status, whole) = chat(&server, body.clone()).await?;
    assert_eq!(status, 200, "{whole}");
    let message = &whole["choices"][0]["message"];
    assert_eq!(whole["choices"][0]["finish_reason"], "tool_calls");
    assert!(message["content"].is_null(), "{message}");
    let calls = message["tool_calls"].as_array().ok_or("no tool_calls")?;
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let text = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&streamed)
        .send()
        .await?
        .text()
        .await?;
    let mut joined: BTreeMap<u64, (String, String)> = BTreeMap::new();
    for data in common::sse_data(&text) {
        let Ok(chunk) = serde_json::from_str::<Value>(&data) else {
            continue;
        };
        for d in chunk["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let e = joined.entry(d["index"].as_u64().unwrap_or(99)).or_default();
            e.0.push_str(d["function"]["name"].as_str().unwrap_or(""));
            e.1.push_str(d["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(joined.len(), calls.len(), "{text}");
    for (i, call) in calls.iter().enumerate() {
        let (name, args) = &joined[&(i as u64)];
        assert_eq!(call["function"]["name"].as_str(), Some(name.as_str()));
        assert_eq!(call["function"]["arguments"].as_str(), Some(args.as_str()));
        assert_eq!(call["type"], "function");
        check_call(name, args)?;
    }
    Ok(())
}

#[tokio::test]
async fn named_choice_calls_exactly_that_function() -> TestResult {
    let server = Server::start(&["--slots", "2"])?;
    for seed in 0..3 {
        let (status, r) = chat(
            &server,
            json!({"model": MODEL_ID, "seed": seed, "temperature": 1.0,
            "messages": [{"role": "user", "content": "What's the weather like in Paris?"}],
            "tools": tools(), "tool_choice": {"type": "function", "function": {"name": "get_time"}},
            "max_tokens": 200}),
        )
        .await?;
        assert_eq!(status, 200, "{r}");
        let calls = r["choices"][0]["message"]["tool_calls"]
            .as_array()
            .ok_or("no calls")?;
        assert_eq!(calls.len(), 1, "a named choice is one call: {r}");
        assert_eq!(calls[0]["function"]["name"], "get_time");
        check_call(
            "get_time",
            calls[0]["function"]["arguments"].as_str().unwrap_or(""),
        )?;
    }
    Ok(())
}

#[tokio::test]
async fn none_answers_in_text_without_the_tools_in_the_prompt() -> TestResult {
    let server = Server::start(&[])?;
    let ask = |choice: Value| {
        json!({"model": MODEL_ID, "temperature": 0, "max_tokens": 30,
        "messages": [{"role": "user", "content": "What's the weather like in Paris?"}],
        "tools": tools(), "tool_choice": choice})
    };
    let (status, none) = chat(&server, ask(json!("none"))).await?;
    assert_eq!(status, 200, "{none}");
    assert!(
        none["choices"][0]["message"]["tool_calls"].is_null(),
        "{none}"
    );
    assert!(none["choices"][0]["message"]["content"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    assert_ne!(none["choices"][0]["finish_reason"], "tool_calls");
    let (_, auto) = chat(&server, ask(json!("auto"))).await?;
    let described = auto["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
    let bare = none["usage"]["prompt_tokens"].as_u64().unwrap_or(u64::MAX);
    assert!(
        described > bare + 100,
        "auto describes the tools ({described} tokens), none does not ({bare})"
    );
    // auto: text, or calls that fit their schemas.
    for call in auto["choices"][0]["message"]["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
    {
        check_call(
            call["function"]["name"].as_str().unwrap_or(""),
            call["function"]["arguments"].as_str().unwrap_or(""),
        )?;
    }
    Ok(())
}

#[tokio::test]
async fn tool_calls_and_results_in_history_reach_the_prompt() -> TestResult {
    let server = Server::start(&[])?;
    let with_tools = |history: Value| {
        json!({"model": MODEL_ID, "temperature": 0, "max_tokens": 24,
        "messages": history, "tools": tools(), "tool_choice": "none"})
    };
    let (status, a) = chat(&server, with_tools(json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ZEBRA-42: sunny, 21 degrees"}
    ]))).await?;
    assert_eq!(status, 200, "{a}");
    // The same conversation written out as the model reads it.
    let (_, b) = chat(&server, with_tools(json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>"},
        {"role": "user", "content": "<tool_response>\nZEBRA-42: sunny, 21 degrees\n</tool_response>"}
    ]))).await?;
    assert_eq!(
        a["usage"]["prompt_tokens"], b["usage"]["prompt_tokens"],
        "{a}\n{b}"
    );
    // (The greedy texts may still differ: the second request reuses the first's cached KV.)
    // And the result's text is really in it: a different result, a different prompt.
    let (_, c) = chat(&server, with_tools(json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ZEBRA-42: sunny, 21 degrees, light wind from the west"}
    ]))).await?;
    assert!(c["usage"]["prompt_tokens"].as_u64() > a["usage"]["prompt_tokens"].as_u64());
    Ok(())
}

#[tokio::test]
async fn bad_tool_requests_are_400s_naming_the_field() -> TestResult {
    let server = Server::start(&[])?;
    let cases = [
        (
            json!({"tools": tools(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
            "nope",
        ),
        (
            json!({"tools": tools(), "tool_choice": "sometimes"}),
            "tool_choice",
            "sometimes",
        ),
        (
            json!({"tool_choice": "required"}),
            "tool_choice",
            "needs `tools`",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
            "properties": {"d": {"type": "string", "format": "date-time"}}}}}]}),
            "tools",
            "`format`",
        ),
        (
            json!({"tools": [{"type": "retrieval"}]}),
            "tools",
            "retrieval",
        ),
        (
            json!({"tools": tools(), "response_format": {"type": "json_object"}}),
            "response_format",
            "tools",
        ),
    ];
    for (extra, param, needle) in cases {
        let mut body = json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}]});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (status, r) = chat(&server, body).await?;
        assert_eq!(status, 400, "{extra}: {r}");
        assert_eq!(r["error"]["param"], param, "{r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(needle),
            "{r}"
        );
    }
    Ok(())
}

const PY_STREAM: &str = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="unused")
tools = json.loads(sys.argv[2])
out = []
for seed in range(3):
    with client.chat.completions.stream(model=sys.argv[3], seed=seed, temperature=1.0, max_tokens=300,
            messages=[{"role": "user", "content": "What's the weather in Tokyo?"}],
            tools=tools, tool_choice="required", parallel_tool_calls=False) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    out.append({"finish": choice.finish_reason, "calls": [
        {"id": c.id, "type": c.type, "name": c.function.name, "arguments": c.function.arguments}
        for c in choice.message.tool_calls or []]})
print(json.dumps(out))
"#;

#[test]
fn python_sdk_reassembles_streamed_tool_calls() -> TestResult {
    // PyPI is reachable wherever the README's setup runs: no Python is a failure, not a skip.
    // One call per answer (`parallel_tool_calls: false`, which the grammar ends): with
    // parallel calls allowed, a 135M model at temperature 1 may repeat calls until
    // max_tokens, depending on the draws (streamed parallel calls are checked through
    // async-openai above).
    let python = pyenv::python()?;
    let server = Server::start(&[])?;
    let out = pyenv::run(
        &python,
        PY_STREAM,
        &[&server.v1(), &tools().to_string(), MODEL_ID],
    )?;
    let runs: Vec<Value> = serde_json::from_str(out.trim())?;
    assert_eq!(runs.len(), 3);
    for run in runs {
        assert_eq!(run["finish"], "tool_calls", "{run}");
        let calls = run["calls"].as_array().ok_or("no calls")?;
        assert_eq!(calls.len(), 1, "{run}");
        for call in calls {
            assert_eq!(call["type"], "function");
            assert!(call["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("call_")));
            check_call(
                call["name"].as_str().unwrap_or(""),
                call["arguments"].as_str().unwrap_or(""),
            )?;
        }
    }
    Ok(())
}
