//! The Llama 3 tool format against a real `herd serve` with SmolLM2 whose
//! chat template is Meta's Llama 3.1 template (made by .ci/setup): the engine
//! host reads the format from the template, the prompt describes the tools
//! and renders history as Llama 3.1's template does, and calls written as
//! `{"name": …, "parameters": …}` come back as `tool_calls`.

mod common;
#[path = "common/tool_client.rs"]
mod tool_client;

use async_openai::types::{
    ChatCompletionNamedToolChoice, ChatCompletionTool, ChatCompletionToolChoiceOption,
    ChatCompletionToolType, CreateChatCompletionRequestArgs, FinishReason, FunctionName,
};
use common::{Server, TestResult, LLAMA3_MODEL_ID};
use serde_json::{json, Value};
use tool_client::{chat, check_call, post, stream_calls, tools, user};

fn server(extra: &[&str]) -> Result<Server, String> {
    Server::start_model(&common::llama3_model_path(), extra, &[])
}

#[tokio::test]
async fn forced_calls_stream_and_reassemble_with_async_openai() -> TestResult {
    let server = server(&["--slots", "2"])?;
    let tools: Vec<ChatCompletionTool> = serde_json::from_value(tools())?;
    let named = ChatCompletionToolChoiceOption::Named(ChatCompletionNamedToolChoice {
        r#type: ChatCompletionToolType::Function,
        function: FunctionName {
            name: "get_time".into(),
        },
    });
    // Seed 0 with parallel calls allowed repeats get_weather until max_tokens
    // (a 135M model at temperature 1): it runs with one call at most, which the
    // grammar ends; seed 1 keeps parallel calls allowed.
    for (seed, choice, parallel) in [
        (0, ChatCompletionToolChoiceOption::Required, false),
        (1, ChatCompletionToolChoiceOption::Required, true),
        (2, named.clone(), true),
        (3, named, true),
    ] {
        let is_named = matches!(choice, ChatCompletionToolChoiceOption::Named(_));
        let req = CreateChatCompletionRequestArgs::default()
            .model(LLAMA3_MODEL_ID)
            .messages([user("What's the weather like in Paris today?")?])
            .tools(tools.clone())
            .tool_choice(choice)
            .parallel_tool_calls(parallel)
            .temperature(1.0)
            .seed(seed)
            .max_tokens(300u32)
            .build()?;
        let (finish, calls) = stream_calls(&server, req).await?;
        assert_eq!(finish, Some(FinishReason::ToolCalls), "seed {seed}");
        assert!(!calls.is_empty(), "seed {seed}: a forced choice calls");
        assert_eq!(
            calls.keys().copied().collect::<Vec<_>>(),
            (0..calls.len() as u32).collect::<Vec<_>>()
        );
        for (id, name, arguments) in calls.values() {
            assert!(id.starts_with("call_"), "{id}");
            check_call(name, arguments)?;
            if is_named {
                assert_eq!(name, "get_time");
            }
        }
        if is_named || !parallel {
            assert_eq!(
                calls.len(),
                1,
                "a named choice, or no parallel calls: one call"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn forced_calls_come_back_whole() -> TestResult {
    let server = server(&[])?;
    for (seed, choice) in [
        (0, json!("required")),
        (
            1,
            json!({"type": "function", "function": {"name": "get_weather"}}),
        ),
    ] {
        let (status, r) = chat(
            &server,
            json!({"model": LLAMA3_MODEL_ID, "seed": seed, "temperature": 1.0, "max_tokens": 200,
                "messages": [{"role": "user", "content": "What's the weather like in Oslo?"}],
                "tools": tools(), "tool_choice": choice}),
        )
        .await?;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["choices"][0]["finish_reason"], "tool_calls", "{r}");
        let message = &r["choices"][0]["message"];
        assert!(message["content"].is_null(), "{message}");
        let calls = message["tool_calls"].as_array().ok_or("no tool_calls")?;
        assert!(!calls.is_empty(), "{r}");
        for call in calls {
            assert_eq!(call["type"], "function");
            let name = call["function"]["name"].as_str().unwrap_or("");
            check_call(name, call["function"]["arguments"].as_str().unwrap_or(""))?;
        }
    }
    Ok(())
}

/// `get_weather` of [`tools`] as Llama 3.1's template lists it (`tojson(indent=4)`).
const GET_WEATHER_LISTED: &str = r#"{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {
                    "type": "string",
                    "maxLength": 40
                },
                "unit": {
                    "enum": [
                        "celsius",
                        "fahrenheit"
                    ]
                }
            },
            "required": [
                "city",
                "unit"
            ],
            "additionalProperties": false
        }
    }
}"#;

/// A call is made, sent back in the history with its result, and the prompt
/// of that second request is exactly the Llama 3.1 rendering: a raw
/// completion of that text, right after it on the one slot, has as many
/// tokens and finds all but its last already cached (so every token is the same).
#[tokio::test]
async fn history_round_trips_in_the_llama_3_prompt() -> TestResult {
    let server = server(&["--slots", "1"])?;
    let get_weather = tools()[0].clone();
    let (status, first) = chat(
        &server,
        json!({"model": LLAMA3_MODEL_ID, "temperature": 0, "max_tokens": 100,
            "messages": [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Weather in Paris?"}],
            "tools": [get_weather],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    )
    .await?;
    assert_eq!(status, 200, "{first}");
    let call = &first["choices"][0]["message"]["tool_calls"][0];
    let arguments = call["function"]["arguments"].as_str().ok_or("no call")?;
    check_call("get_weather", arguments)?;

    let (status, second) = chat(
        &server,
        json!({"model": LLAMA3_MODEL_ID, "temperature": 0, "max_tokens": 8,
            "messages": [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call["id"], "content": "ZEBRA-42: sunny, 21 degrees"}],
            "tools": [get_weather]}),
    )
    .await?;
    assert_eq!(status, 200, "{second}");
    let header = |role: &str| format!("<|start_header_id|>{role}<|end_header_id|>\n\n");
    let expected = [
        header("system"),
        "Environment: ipython\n\nAnswer briefly.<|eot_id|>".into(),
        header("user"),
        "Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\n".into(),
        "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.Do not use variables.\n\n".into(),
        format!("{GET_WEATHER_LISTED}\n\nWeather in Paris?<|eot_id|>"),
        header("assistant"),
        format!("{{\"name\": \"get_weather\", \"parameters\": {arguments}}}<|eot_id|>"),
        header("ipython"),
        "ZEBRA-42: sunny, 21 degrees<|eot_id|>".into(),
        header("assistant"),
    ]
    .concat();
    let (status, raw) = post(
        &server,
        "/v1/completions",
        json!({"model": LLAMA3_MODEL_ID, "prompt": expected, "max_tokens": 1, "temperature": 0}),
    )
    .await?;
    assert_eq!(status, 200, "{raw}");
    let tokens = |r: &Value| r["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
    let cached = raw["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0);
    assert!(tokens(&second) > 200, "{second}");
    assert_eq!(tokens(&raw), tokens(&second), "{raw}\n{second}");
    assert_eq!(cached + 1, tokens(&raw), "{raw}");
    Ok(())
}
