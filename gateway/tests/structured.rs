//! Structured output (`response_format`) against a real `herd serve` with
//! the real SmolLM2: every answer parses and validates, even sampled at
//! temperature 1, and a schema herd cannot enforce is a 400 naming the keyword.

mod common;
#[path = "common/pyenv.rs"]
mod pyenv;

use async_openai::config::OpenAIConfig;
use async_openai::types::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs, ResponseFormat,
    ResponseFormatJsonSchema,
};
use async_openai::Client;
use common::{Server, TestResult, MODEL_ID};
use futures::StreamExt;
use serde_json::{json, Value};

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 30},
            "age": {"type": "integer"},
            "role": {"enum": ["admin", "editor", "viewer"]},
            "address": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 30},
                "zip": {"type": ["string", "null"], "maxLength": 10}
            }, "required": ["city", "zip"], "additionalProperties": false},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 15}, "minItems": 1, "maxItems": 4},
            "scores": {"type": "array", "items": {"type": "number"}, "maxItems": 3},
            "active": {"type": "boolean"}
        },
        "required": ["name", "age", "role", "address", "tags"],
        "additionalProperties": false
    })
}

/// A validator for the keywords [`schema`] uses, so the check needs nothing
/// installed; with a Python at hand the answers are checked by `jsonschema` too.
fn validate(schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let fail = |why: &str| Err(format!("{at}: {why}: {v}"));
    if let Some(options) = schema["enum"].as_array() {
        return if options.contains(v) {
            Ok(())
        } else {
            fail("not in enum")
        };
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return fail("schema without type"),
    };
    let matches = |t: &str| match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    };
    if !types.iter().any(|t| matches(t)) {
        return fail("wrong type");
    }
    if let (Some(s), Some(max)) = (v.as_str(), schema["maxLength"].as_u64()) {
        if s.chars().count() as u64 > max {
            return fail("too long");
        }
    }
    if let Some(items) = v.as_array() {
        if items.len() as u64 > schema["maxItems"].as_u64().unwrap_or(u64::MAX)
            || (items.len() as u64) < schema["minItems"].as_u64().unwrap_or(0)
        {
            return fail("item count");
        }
        for (i, item) in items.iter().enumerate() {
            validate(&schema["items"], item, &format!("{at}/{i}"))?;
        }
    }
    if let Some(obj) = v.as_object() {
        let props = schema["properties"]
            .as_object()
            .ok_or("object schema without properties")?;
        for name in schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !obj.contains_key(name) {
                return fail(&format!("missing {name}"));
            }
        }
        for (k, item) in obj {
            match props.get(k) {
                Some(s) => validate(s, item, &format!("{at}/{k}"))?,
                None => return fail(&format!("extra property {k}")),
            }
        }
    }
    Ok(())
}

async fn chat(server: &Server, body: Value) -> Result<(u16, Value), reqwest::Error> {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&body)
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

const PY_VALIDATE: &str = r#"
import json, sys, jsonschema
schema = json.loads(sys.argv[1])
answers = json.load(open(sys.argv[2]))
for a in answers:
    jsonschema.Draft202012Validator(schema).validate(json.loads(a))
print(len(answers))
"#;

#[tokio::test]
async fn json_schema_answers_validate_in_100_runs_at_temperature_1() -> TestResult {
    let server = Server::start(&["--slots", "4"])?;
    let prompts = [
        "Describe a user of our wiki.",
        "Make up a person.",
        "Give me a profile as JSON.",
        "Who are you?",
    ];
    // Four at a time, one per slot: the queue's wait limit is not under test.
    let answers = futures::stream::iter(0..100u64)
        .map(|i| {
            let url = server.url.clone();
            let body = json!({"model": MODEL_ID, "temperature": 1.0, "seed": i, "max_tokens": 400,
                "messages": [{"role": "user", "content": prompts[i as usize % prompts.len()]}],
                "response_format": {"type": "json_schema",
                    "json_schema": {"name": "user", "strict": true, "schema": schema()}}});
            async move {
                let r = reqwest::Client::new()
                    .post(format!("{url}/v1/chat/completions"))
                    .json(&body)
                    .send()
                    .await?;
                r.json::<Value>().await
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    let mut texts = Vec::new();
    for r in answers {
        let r = r?;
        assert_eq!(r["choices"][0]["finish_reason"], "stop", "cut short: {r}");
        let text = r["choices"][0]["message"]["content"]
            .as_str()
            .ok_or("no content")?
            .to_string();
        let value: Value = serde_json::from_str(&text).map_err(|e| format!("{text:?}: {e}"))?;
        validate(&schema(), &value, "")?;
        texts.push(text);
    }
    let answers = texts;
    assert_eq!(answers.len(), 100);
    let distinct: std::collections::HashSet<&String> = answers.iter().collect();
    assert!(
        distinct.len() > 50,
        "sampling at temperature 1 varies the answers: {}",
        distinct.len()
    );
    let python = pyenv::python()?;
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), serde_json::to_string(&answers)?)?;
    let path = file.path().display().to_string();
    let out = pyenv::run(&python, PY_VALIDATE, &[&schema().to_string(), &path])?;
    assert_eq!(out.trim(), "100");
    Ok(())
}

#[tokio::test]
async fn json_object_answers_always_parse_streamed_or_not() -> TestResult {
    let server = Server::start(&["--slots", "2"])?;
    for seed in 0..6 {
        let body = json!({"model": MODEL_ID, "temperature": 1.0, "seed": seed, "max_tokens": 300,
            "messages": [{"role": "user", "content": "List three fruits."}],
            "response_format": {"type": "json_object"}});
        let (status, r) = chat(&server, body.clone()).await?;
        assert_eq!(status, 200, "{r}");
        let text = r["choices"][0]["message"]["content"].as_str().unwrap_or("");
        if r["choices"][0]["finish_reason"] == "stop" {
            let v: Value = serde_json::from_str(text).map_err(|e| format!("{text:?}: {e}"))?;
            assert!(v.is_object(), "{text}");
        }
        let mut streamed = body;
        streamed["stream"] = json!(true);
        let sse = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", server.url))
            .json(&streamed)
            .send()
            .await?
            .text()
            .await?;
        let mut joined = String::new();
        for data in common::sse_data(&sse) {
            let Ok(chunk) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            joined.push_str(
                chunk["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap_or(""),
            );
        }
        assert_eq!(joined, text, "the same seed streams the same answer");
    }
    Ok(())
}

#[tokio::test]
async fn async_openai_json_schema_request_is_enforced() -> TestResult {
    let server = Server::start(&[])?;
    let client = Client::with_config(
        OpenAIConfig::new()
            .with_api_base(server.v1())
            .with_api_key("unused"),
    );
    let req = CreateChatCompletionRequestArgs::default()
        .model(MODEL_ID)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Make up a person.")
            .build()?
            .into()])
        .response_format(ResponseFormat::JsonSchema {
            json_schema: ResponseFormatJsonSchema {
                name: "user".into(),
                description: None,
                schema: Some(schema()),
                strict: Some(true),
            },
        })
        .temperature(0.8)
        .max_tokens(400u32)
        .build()?;
    let r = client.chat().create(req).await?;
    let text = r.choices[0].message.content.clone().unwrap_or_default();
    validate(&schema(), &serde_json::from_str(&text)?, "")?;
    Ok(())
}

#[tokio::test]
async fn unsupported_schemas_are_400s_naming_the_keyword() -> TestResult {
    let server = Server::start(&[])?;
    let cases = [
        (
            json!({"type": "object", "properties": {"email": {"type": "string", "pattern": "@"}}}),
            "`pattern`",
        ),
        (
            json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}),
            "`minimum`",
        ),
        (json!({"allOf": [{"type": "object"}]}), "`allOf`"),
        (
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}),
            "\"b\"",
        ),
    ];
    for (schema, keyword) in cases {
        let (status, r) = chat(&server, json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})).await?;
        assert_eq!(status, 400, "{r}");
        assert_eq!(r["error"]["param"], "response_format");
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(keyword),
            "{r}"
        );
    }
    let (status, r) = chat(
        &server,
        json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "yaml"}}),
    )
    .await?;
    assert_eq!(status, 400, "{r}");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("yaml"));
    Ok(())
}

/// What agents send: the Python SDK's `chat.completions.parse` and
/// `responses.parse` with a Pydantic model (the SDK turns it into a strict
/// schema with `$defs`, `$ref`, enums, `anyOf` null, `title`s and
/// `description`s) and `pydantic_function_tool`; each answer is parsed back
/// into the model by the SDK itself. Lengths are bounded so that even a
/// 135M model's answer ends within the token budget.
#[tokio::test]
async fn the_python_sdk_parses_pydantic_models_from_chat_responses_and_tools() -> TestResult {
    let server = Server::start(&["--slots", "2"])?;
    let script = r#"
import enum, sys
from typing import Literal, Optional
import openai, pydantic
c = openai.OpenAI(base_url=sys.argv[1], api_key="x")
m = sys.argv[2]
Short = pydantic.constr(max_length=24)
class Priority(str, enum.Enum):
    low = "low"
    high = "high"
class Step(pydantic.BaseModel):
    title: Short = pydantic.Field(description="a short title")
    minutes: int
class Plan(pydantic.BaseModel):
    """A plan with a few steps."""
    goal: Short
    priority: Priority
    steps: list[Step] = pydantic.Field(max_length=3)
    owner: Optional[Short] = None
    kind: Literal["trip", "chore"]
for seed in (1, 2, 3):
    r = c.chat.completions.parse(model=m, messages=[{"role": "user", "content": "Plan a picnic."}],
                                 response_format=Plan, max_tokens=1500, temperature=0.7, seed=seed)
    assert isinstance(r.choices[0].message.parsed, Plan), r
r = c.responses.parse(model=m, input="Plan a picnic.", text_format=Plan, max_output_tokens=1500)
assert isinstance(r.output_parsed, Plan), r
class GetWeather(pydantic.BaseModel):
    city: Short
    unit: Literal["c", "f"] = "c"
r = c.chat.completions.parse(model=m, messages=[{"role": "user", "content": "Weather in Paris?"}],
                             tools=[openai.pydantic_function_tool(GetWeather)], tool_choice="required",
                             max_tokens=200)
call = r.choices[0].message.tool_calls[0]
assert isinstance(call.function.parsed_arguments, GetWeather), r
print("ok")
"#;
    let python = pyenv::python()?;
    let out = pyenv::run(&python, script, &[&server.v1(), MODEL_ID])?;
    assert_eq!(out.trim(), "ok");
    Ok(())
}
