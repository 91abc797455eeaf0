//! The Responses API (`/v1/responses`) against a real `herd serve` with the
//! real model: async-openai's Responses client, raw SSE read event by event,
//! follow-ups through `previous_response_id`, the stored-response routes, a
//! crash mid-stream, and the official Python `openai` SDK.

mod common;
#[path = "common/pyenv.rs"]
mod pyenv;

use async_openai::config::OpenAIConfig;
use async_openai::types::responses::{
    Content, CreateResponseArgs, Input, OutputContent, Status as RespStatus,
};
use async_openai::Client;
use common::{children, signal, Server, TestResult, MODEL_ID};
use serde_json::{json, Value};
use std::time::Duration;

async fn post(server: &Server, body: &Value) -> Result<(u16, Value), reqwest::Error> {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/responses", server.url))
        .json(body)
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

/// A streamed Responses answer: each event's SSE name and its JSON.
async fn post_stream(
    server: &Server,
    body: &Value,
) -> Result<Vec<(String, Value)>, Box<dyn std::error::Error + Send + Sync>> {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/responses", server.url))
        .json(body)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await?;
    let mut out = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let name = block.lines().find_map(|l| l.strip_prefix("event: "));
        let data = block.lines().find_map(|l| l.strip_prefix("data: "));
        if let (Some(name), Some(data)) = (name, data) {
            out.push((name.to_string(), serde_json::from_str(data)?));
        }
    }
    Ok(out)
}

fn output_text(response: &Value) -> String {
    let mut text = String::new();
    for item in response["output"].as_array().into_iter().flatten() {
        for part in item["content"].as_array().into_iter().flatten() {
            text.push_str(part["text"].as_str().unwrap_or(""));
        }
    }
    text
}

#[tokio::test]
async fn a_response_is_the_chat_answer_and_its_stream_says_the_same() -> TestResult {
    let server = Server::start(&["--slots", "2"])?;
    // async-openai's own Responses types parse herd's answer.
    let client = Client::with_config(
        OpenAIConfig::new()
            .with_api_base(server.v1())
            .with_api_key("x"),
    );
    let request = CreateResponseArgs::default()
        .model(MODEL_ID)
        .instructions("You are a terse assistant.")
        .input(Input::Text("Name three colours.".into()))
        .max_output_tokens(24u32)
        .temperature(0.0)
        .build()?;
    let typed = client.responses().create(request).await?;
    assert_eq!(typed.object, "response");
    let text: String = typed
        .output
        .iter()
        .filter_map(|o| match o {
            OutputContent::Message(m) => Some(
                m.content
                    .iter()
                    .filter_map(|c| match c {
                        Content::OutputText(t) => Some(t.text.clone()),
                        _ => None,
                    })
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect();
    assert!(!text.is_empty());
    assert!(matches!(
        typed.status,
        RespStatus::Completed | RespStatus::Incomplete
    ));
    let usage = typed.usage.ok_or("no usage")?;
    assert_eq!(usage.total_tokens, usage.input_tokens + usage.output_tokens);

    // The same as a greedy chat completion of the same conversation.
    let chat = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .json(
            &json!({"model": MODEL_ID, "max_tokens": 24, "temperature": 0, "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Name three colours."}]}),
        )
        .send()
        .await?
        .json::<Value>()
        .await?;
    assert_eq!(
        chat["choices"][0]["message"]["content"].as_str(),
        Some(text.as_str())
    );

    // Streamed: the documented events, in order, numbered, naming themselves.
    let events = post_stream(
        &server,
        &json!({"model": MODEL_ID, "instructions": "You are a terse assistant.",
        "input": "Name three colours.", "max_output_tokens": 24, "temperature": 0, "stream": true}),
    )
    .await?;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    let last = names.len() - 1;
    assert!(
        matches!(names[last], "response.completed" | "response.incomplete"),
        "{names:?}"
    );
    assert_eq!(
        names[last - 3..last],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done"
        ]
    );
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"].as_str(), Some(name.as_str()));
        assert_eq!(data["sequence_number"].as_u64(), Some(i as u64));
    }
    let deltas: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .filter_map(|(_, d)| d["delta"].as_str())
        .collect();
    assert_eq!(deltas, text);
    let done = &events[last].1["response"];
    assert_eq!(output_text(done), text);
    assert_eq!(
        done["usage"]["output_tokens"].as_u64(),
        Some(u64::from(usage.output_tokens))
    );
    assert_eq!(events[0].1["response"]["status"], "in_progress");
    Ok(())
}

#[tokio::test]
async fn follow_ups_continue_a_stored_response_which_get_and_delete_manage() -> TestResult {
    let server = Server::start(&["--slots", "1"])?;
    let (status, first) = post(
        &server,
        &json!({"model": MODEL_ID, "input": "My name is Ada. Say hello.",
        "max_output_tokens": 12, "temperature": 0, "metadata": {"ticket": "42"}}),
    )
    .await?;
    assert_eq!(status, 200, "{first}");
    let id = first["id"].as_str().ok_or("no id")?;
    assert_eq!(first["metadata"]["ticket"], "42");

    let (status, second) = post(
        &server,
        &json!({"model": MODEL_ID, "input": "What is my name?",
        "previous_response_id": id, "max_output_tokens": 12, "temperature": 0}),
    )
    .await?;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["previous_response_id"], id);
    // The follow-up's prompt holds the first turn and its answer: longer than both,
    // and the first turn came from the prompt cache.
    let n = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    assert!(
        n(&second, "/usage/input_tokens")
            > n(&first, "/usage/input_tokens") + n(&first, "/usage/output_tokens")
    );
    assert!(
        n(&second, "/usage/input_tokens_details/cached_tokens") >= n(&first, "/usage/input_tokens")
    );

    let got: Value = reqwest::get(format!("{}/v1/responses/{id}", server.url))
        .await?
        .json()
        .await?;
    assert_eq!(got, first);
    let del = reqwest::Client::new()
        .delete(format!("{}/v1/responses/{id}", server.url))
        .send()
        .await?;
    assert_eq!(del.status().as_u16(), 200);
    assert_eq!(del.json::<Value>().await?["deleted"], true);
    let gone = reqwest::get(format!("{}/v1/responses/{id}", server.url)).await?;
    assert_eq!(gone.status().as_u16(), 404);
    assert_eq!(gone.json::<Value>().await?["error"]["code"], "not_found");
    let (status, err) = post(
        &server,
        &json!({"model": MODEL_ID, "input": "x", "previous_response_id": id}),
    )
    .await?;
    assert_eq!(
        (status, err["error"]["param"].as_str()),
        (400, Some("previous_response_id"))
    );

    // store: false keeps nothing.
    let (_, unstored) = post(
        &server,
        &json!({"model": MODEL_ID, "input": "hi", "max_output_tokens": 2, "store": false}),
    )
    .await?;
    assert_eq!(unstored["store"], false);
    let id = unstored["id"].as_str().ok_or("no id")?;
    let r = reqwest::get(format!("{}/v1/responses/{id}", server.url)).await?;
    assert_eq!(r.status().as_u16(), 404);

    // A cut by max_output_tokens is incomplete, stream and not.
    let (_, cut) = post(
        &server,
        &json!({"model": MODEL_ID, "input": "Count to fifty.", "max_output_tokens": 3}),
    )
    .await?;
    assert_eq!(cut["status"], "incomplete");
    assert_eq!(cut["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(cut["usage"]["output_tokens"], 3);
    let events = post_stream(&server, &json!({"model": MODEL_ID, "input": "Count to fifty.", "max_output_tokens": 3, "stream": true})).await?;
    assert_eq!(
        events.last().map(|(n, _)| n.as_str()),
        Some("response.incomplete")
    );
    Ok(())
}

#[tokio::test]
async fn what_cannot_be_honored_is_a_400_naming_the_field() -> TestResult {
    let server = Server::start(&[])?;
    for (extra, param) in [
        (json!({"background": true}), "background"),
        (json!({"reasoning": {"effort": "low"}}), "reasoning"),
        (json!({"tools": [{"type": "web_search_preview"}]}), "tools"),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}),
            "input",
        ),
        (json!({"temperature": 7}), "temperature"),
    ] {
        let mut body = json!({"model": MODEL_ID, "input": "hi"});
        for (k, v) in extra.as_object().ok_or("object")? {
            body[k] = v.clone();
        }
        let (status, err) = post(&server, &body).await?;
        assert_eq!(status, 400, "{body} → {err}");
        assert_eq!(err["error"]["param"].as_str(), Some(param), "{err}");
    }
    let (status, err) = post(&server, &json!({"model": "nope", "input": "hi"})).await?;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let (status, err) = post(&server, &json!({"model": MODEL_ID})).await?;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
    Ok(())
}

#[tokio::test]
async fn an_engine_crash_mid_stream_ends_with_response_failed() -> TestResult {
    let server = Server::start(&[])?;
    let url = format!("{}/v1/responses", server.url);
    let mut r = reqwest::Client::new()
        .post(url)
        .json(
            &json!({"model": MODEL_ID, "input": "Write a very long story about a llama.",
            "max_output_tokens": 2000, "stream": true}),
        )
        .send()
        .await?;
    let mut seen = String::new();
    while !seen.contains("response.output_text.delta") {
        let chunk = r.chunk().await?.ok_or("stream ended early")?;
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let host = *children(server.pid()).first().ok_or("no engine host")?;
    signal(host, "-KILL")?;
    let rest = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = r.chunk().await? {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        Ok::<_, reqwest::Error>(())
    })
    .await;
    assert!(rest.is_ok(), "the stream did not end after the crash");
    let failed = seen
        .split("\n\n")
        .find(|b| b.starts_with("event: response.failed"))
        .ok_or("no response.failed event")?;
    let data: Value = serde_json::from_str(
        failed
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .ok_or("no data")?,
    )?;
    assert_eq!(data["response"]["status"], "failed");
    assert_eq!(data["response"]["error"]["code"], "engine_crashed");
    Ok(())
}

/// The official Python SDK: a plain call, a stream consumed event by event,
/// and its stream helper's final response.
#[tokio::test]
async fn the_python_openai_sdk_reads_responses_and_their_streams() -> TestResult {
    let server = Server::start(&["--slots", "2"])?;
    let script = r#"
import sys, openai
c = openai.OpenAI(base_url=sys.argv[1], api_key="x")
m = sys.argv[2]
r = c.responses.create(model=m, input="Say hi.", max_output_tokens=8, temperature=0)
assert r.output_text, r
types = []
text = ""
for ev in c.responses.create(model=m, input="Say hi.", max_output_tokens=8, temperature=0, stream=True):
    types.append(ev.type)
    if ev.type == "response.output_text.delta":
        text += ev.delta
assert text == r.output_text, (text, r.output_text)
assert types[0] == "response.created" and types[-1] in ("response.completed", "response.incomplete"), types
# The stream helper wants a complete answer: room enough for one.
with c.responses.stream(model=m, input="Reply with one word: yes or no. Is water wet?", max_output_tokens=200, temperature=0) as s:
    deltas = "".join(ev.delta for ev in s if ev.type == "response.output_text.delta")
    final = s.get_final_response()
assert final.status == "completed" and final.output_text == deltas, final
follow = c.responses.create(model=m, input="Again.", previous_response_id=r.id, max_output_tokens=4)
assert follow.previous_response_id == r.id
print("ok", len(types))
"#;
    let python = pyenv::python()?;
    let out = pyenv::run(&python, script, &[&server.v1(), MODEL_ID])?;
    assert!(out.starts_with("ok "), "{out}");
    Ok(())
}

/// Tools through the Responses API: a forced call comes back as a
/// `function_call` item (streamed as argument events), and its output, sent
/// as a `function_call_output` item after `previous_response_id`, continues
/// the conversation.
#[tokio::test]
async fn function_calls_are_items_and_their_outputs_continue_the_conversation() -> TestResult {
    let server = Server::start(&["--slots", "2"])?;
    let tools = json!([{"type": "function", "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    let ask = json!({"model": MODEL_ID, "input": "What is the weather in Paris?", "tools": tools,
        "tool_choice": {"type": "function", "name": "get_weather"}, "max_output_tokens": 64, "temperature": 0});
    let (status, first) = post(&server, &ask).await?;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "completed", "{first}");
    let call = first["output"]
        .as_array()
        .and_then(|o| o.iter().find(|i| i["type"] == "function_call"))
        .ok_or("no function_call item")?
        .clone();
    assert_eq!(call["name"], "get_weather");
    let args: Value = serde_json::from_str(call["arguments"].as_str().ok_or("no arguments")?)?;
    assert!(args["city"].is_string(), "{args}");
    assert!(call["call_id"].as_str().is_some_and(|c| !c.is_empty()));

    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let events = post_stream(&server, &streamed).await?;
    let added = events
        .iter()
        .find(|(n, d)| n == "response.output_item.added" && d["item"]["type"] == "function_call")
        .ok_or("no function_call item added")?;
    assert_eq!(added.1["item"]["name"], "get_weather");
    let deltas: String = events
        .iter()
        .filter(|(n, _)| n == "response.function_call_arguments.delta")
        .filter_map(|(_, d)| d["delta"].as_str())
        .collect();
    let done = events
        .iter()
        .find(|(n, _)| n == "response.function_call_arguments.done")
        .ok_or("no arguments done event")?;
    assert_eq!(done.1["arguments"].as_str(), Some(deltas.as_str()));
    assert_eq!(
        deltas,
        call["arguments"].as_str().unwrap_or_default(),
        "temperature 0: the same call"
    );
    assert_eq!(
        events.last().map(|(n, _)| n.as_str()),
        Some("response.completed")
    );

    let (status, follow) = post(&server, &json!({"model": MODEL_ID, "previous_response_id": first["id"],
        "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "{\"temp_c\": 18}"}],
        "tools": tools, "max_output_tokens": 16, "temperature": 0})).await?;
    assert_eq!(status, 200, "{follow}");
    let n = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    assert!(
        n(&follow, "/usage/input_tokens")
            > n(&first, "/usage/input_tokens") + n(&first, "/usage/output_tokens")
    );
    Ok(())
}

/// Fabric's OpenAI vendor (openai-go's `Responses.NewStreaming`) sends the
/// pattern as a system input item and the user's text as a user item, both
/// without `type`, with temperature, top_p, max_output_tokens and, when set,
/// `presence_penalty`, `frequency_penalty` and `seed` as extra fields; it
/// prints `response.output_text.delta`s and reads `response.output_text.done`.
/// The penalties must change the answer exactly as they do in chat. (One
/// slot, and the prompt cached first: a cold prefill's logits can differ from
/// a cached prompt's in the last bits, enough to flip a sample at temperature.)
#[tokio::test]
async fn a_fabric_pattern_request_streams_and_honors_its_extra_fields() -> TestResult {
    let server = Server::start(&["--slots", "1"])?;
    let system = "# IDENTITY and PURPOSE\nYou are a storyteller.\n# OUTPUT INSTRUCTIONS\n- Output a long story in plain prose.\n# INPUT\nINPUT:";
    let user = "Write about a lighthouse keeper and his cat.";
    let body = json!({
        "input": [{"content": system, "role": "system"}, {"content": user, "role": "user"}],
        "model": MODEL_ID,
        "max_output_tokens": 48,
        "temperature": 0.7,
        "top_p": 0.9,
        "presence_penalty": 1.5,
        "frequency_penalty": 1.5,
        "seed": 7,
        "stream": true,
    });
    let chat = |penalty: f64| {
        json!({
            "model": MODEL_ID,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": 48, "temperature": 0.7, "top_p": 0.9, "seed": 7,
            "presence_penalty": penalty, "frequency_penalty": penalty,
        })
    };
    let client = reqwest::Client::new();
    let ask = |body: Value| {
        let request = client
            .post(format!("{}/v1/chat/completions", server.url))
            .json(&body);
        async move {
            let r: Value = request.send().await?.json().await?;
            let text = r["choices"][0]["message"]["content"].as_str().unwrap_or("");
            Ok::<_, reqwest::Error>(text.to_string())
        }
    };
    ask(chat(0.0)).await?;
    let events = post_stream(&server, &body).await?;
    let deltas: String = events
        .iter()
        .filter(|(name, _)| name == "response.output_text.delta")
        .filter_map(|(_, e)| e["delta"].as_str())
        .collect();
    let done = events
        .iter()
        .find(|(name, _)| name == "response.output_text.done")
        .and_then(|(_, e)| e["text"].as_str())
        .ok_or("no response.output_text.done")?;
    assert!(!deltas.is_empty());
    assert_eq!(deltas, done);

    let (penalized, plain) = (ask(chat(1.5)).await?, ask(chat(0.0)).await?);
    assert_eq!(
        done, penalized,
        "the Responses answer is chat's with the same penalties"
    );
    assert_ne!(penalized, plain, "the penalties change this answer");
    Ok(())
}
