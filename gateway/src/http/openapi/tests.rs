//! The document against the real router and the real validation.

use super::DOCUMENT;
use crate::cli::serve::gateway_app;
use crate::http::AppState;
use crate::keys::KeyStore;
use crate::openai::request::{ChatCompletionRequest, CompletionRequest};
use crate::router::Router as ModelRouter;
use crate::validate;
use axum::body::{to_bytes, Body};
use axum::http::Request;
use herd_cluster::{Agent, AgentConfig, Role};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use tower::ServiceExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";

fn doc() -> Value {
    serde_json::from_str(DOCUMENT).unwrap_or(Value::Null)
}

/// Follows local `$ref`s until a schema that is not one.
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        v = r
            .strip_prefix('#')
            .and_then(|p| doc.pointer(p))
            .unwrap_or(&Value::Null);
    }
    v
}

fn all_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|x| all_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| all_refs(x, out)),
        _ => {}
    }
}

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

#[test]
fn the_document_is_openapi_3_and_every_ref_resolves() {
    let doc = doc();
    assert!(doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.0.")));
    let mut refs = Vec::new();
    all_refs(&doc, &mut refs);
    assert!(refs.len() > 20);
    for r in &refs {
        let target = r.strip_prefix('#').and_then(|p| doc.pointer(p));
        assert!(target.is_some(), "{r} does not resolve");
    }
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            assert!(METHODS.contains(&method.as_str()), "{method} {path}");
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(
                ids.insert(id.to_string()),
                "{method} {path}: operationId {id:?}"
            );
            let responses = op["responses"].as_object().into_iter().flatten();
            for (status, response) in responses {
                let response = resolve(&doc, response);
                let schema = &response["content"]["application/json"]["schema"];
                // Every error is OpenAI's shape, but /health's 503, which is its status report.
                if status.as_str() >= "400" && path != "/health" {
                    assert_eq!(
                        schema["$ref"], "#/components/schemas/Error",
                        "{method} {path} {status}"
                    );
                    for example in response["content"]["application/json"]["examples"]
                        .as_object()
                        .into_iter()
                        .flatten()
                    {
                        let e = &example.1["value"]["error"];
                        assert!(e["message"].is_string() && e["type"].is_string(), "{e}");
                        assert!(e["code"].is_string() && e.get("param").is_some(), "{e}");
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_answers() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut config = AgentConfig::new(
        "openapi-test",
        "127.0.0.1:9".parse()?,
        dir.path().to_path_buf(),
        Role::Gateway,
    );
    config.discovery = false;
    let agent = Agent::start(config).await?;
    let state = AppState {
        router: ModelRouter::default(),
        keys: KeyStore::fixed(Vec::new()),
        max_body_bytes: 1 << 20,
        metrics: crate::metrics::Metrics::new()?,
        responses: Default::default(),
        usage: None,
    };
    // The runtime's own routes are all node-to-node, under /_herd/v1/.
    let app = gateway_app(state, agent.clone(), axum::Router::new());

    // axum lists no routes, but its Debug output names every path (with
    // "/" and a catch-all of its own for the fallback, checked below).
    let routed: BTreeSet<String> = format!("{app:?}")
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with('/') && !s.starts_with("/_herd/"))
        .filter(|s| *s != "/" && !s.contains("__private__axum_fallback"))
        .map(str::to_string)
        .collect();
    let root = app
        .clone()
        .oneshot(Request::get("/").body(Body::empty())?)
        .await?;
    let root = to_bytes(root.into_body(), 1 << 20).await?;
    assert!(
        String::from_utf8_lossy(&root).contains("unknown_url"),
        "GET / is served"
    );
    assert!(
        routed.contains("/health"),
        "axum's Debug output changed: {routed:?}"
    );
    let doc = doc();
    let documented: BTreeSet<String> = doc["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(routed, documented, "routes and document disagree");

    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        let uri = path
            .replace("{id}", "no-such-model")
            .replace("{name}", "no-such-key");
        for method in METHODS {
            let req = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&uri)
                .header("content-type", "application/json")
                .body(Body::from("{}"))?;
            let resp = app.clone().oneshot(req).await?;
            let status = resp.status();
            let body = to_bytes(resp.into_body(), 1 << 20).await?;
            let text = String::from_utf8_lossy(&body);
            match item.get(method) {
                // (HEAD is implied by GET, as in HTTP, and not listed.)
                None => assert_eq!(status, 405, "{method} {path} answers {status}: {text}"),
                Some(op) => assert!(
                    op["responses"].get(status.as_str()).is_some() && !text.contains("unknown_url"),
                    "{method} {path} answered {status}, which is not documented: {text}"
                ),
            }
        }
    }
    agent.shutdown().await;
    Ok(())
}

/// What herd does with a body: parse, then validate. Either failing is a 400.
fn accepted(endpoint: &str, body: &Value) -> bool {
    match endpoint {
        CHAT => serde_json::from_value::<ChatCompletionRequest>(body.clone())
            .is_ok_and(|r| validate::chat(r).is_ok()),
        _ => serde_json::from_value::<CompletionRequest>(body.clone())
            .is_ok_and(|r| validate::completion(r).is_ok()),
    }
}

/// The request body's media object: its schema and examples.
fn request_body<'a>(doc: &'a Value, endpoint: &str) -> &'a Value {
    &doc["paths"][endpoint]["post"]["requestBody"]["content"]["application/json"]
}

#[test]
fn the_request_examples_pass_herd_validation() {
    let doc = doc();
    for endpoint in [CHAT, COMPLETIONS] {
        let examples = request_body(&doc, endpoint)["examples"].as_object();
        assert!(examples.is_some_and(|e| e.len() >= 2), "{endpoint}");
        for (name, example) in examples.into_iter().flatten() {
            assert!(
                accepted(endpoint, &example["value"]),
                "{endpoint} example {name}"
            );
        }
    }
}

fn sample_tool() -> Value {
    json!({"type": "function", "function": {"name": "f"}})
}

fn with(base: &Value, key: &str, value: Value) -> Value {
    let mut body = base.clone();
    body[key] = value;
    body
}

/// A bound plus `delta` as JSON: an exact integer for integer fields when
/// one fits (past i64/u64 a float, which herd refuses for those fields too).
fn number(bound: &Value, delta: i32, integer: bool) -> Value {
    if !integer {
        return json!(bound.as_f64().unwrap_or(f64::NAN) + f64::from(delta) / 1000.0);
    }
    let exact = bound
        .as_i64()
        .map(i128::from)
        .or(bound.as_u64().map(i128::from));
    let Some(n) = exact.map(|b| b + i128::from(delta)) else {
        return Value::Null;
    };
    if let Ok(v) = i64::try_from(n) {
        json!(v)
    } else if let Ok(v) = u64::try_from(n) {
        json!(v)
    } else {
        json!(n as f64)
    }
}

/// Checks one schema alternative's bounds by sending values at and past them.
fn check_bounds(endpoint: &str, base: &Value, key: &str, alt: &Value, sample: &Value) {
    let ok = |v: Value| {
        assert!(
            accepted(endpoint, &with(base, key, v.clone())),
            "{endpoint}: `{key}` = {v} refused"
        )
    };
    let refused = |v: Value| {
        assert!(
            !accepted(endpoint, &with(base, key, v.clone())),
            "{endpoint}: `{key}` = {v} accepted"
        )
    };
    if alt["nullable"] == true {
        ok(Value::Null);
    }
    match alt["type"].as_str().unwrap_or_default() {
        kind @ ("number" | "integer") => {
            let integer = kind == "integer";
            let (max, min) = (&alt["maximum"], &alt["minimum"]);
            if !max.is_null() {
                ok(number(max, 0, integer));
                refused(number(max, 1, integer));
            }
            if !min.is_null() {
                if alt["exclusiveMinimum"] == true {
                    refused(number(min, 0, integer));
                    ok(number(min, 1, integer));
                } else {
                    ok(number(min, 0, integer));
                }
                refused(number(min, -1, integer));
            }
        }
        "array" => {
            let items = |n: u64| Value::Array(vec![sample.clone(); n as usize]);
            // Without a maximum, one item (copies of one tool would be a duplicate name).
            let max = alt["maxItems"].as_u64().unwrap_or(1);
            ok(items(max));
            if alt.get("maxItems").is_some() {
                refused(items(max + 1));
            }
            if let Some(min) = alt["minItems"].as_u64().filter(|m| *m > 0) {
                refused(items(min - 1));
            }
        }
        "string" if alt["enum"].is_array() => {
            for value in alt["enum"].as_array().into_iter().flatten() {
                ok(value.clone());
            }
            refused(json!("some text"));
        }
        "string" => {
            ok(json!("some text"));
            if alt["minLength"] == 1 {
                refused(json!(""));
            }
        }
        "boolean" => {
            ok(json!(true));
            ok(json!(false));
        }
        "object" if alt["required"].is_array() => refused(json!({})),
        "object" => ok(json!({})),
        other => unreachable!("{endpoint}: `{key}` has an unchecked type {other:?}"),
    }
}

#[test]
fn each_bound_in_the_schemas_is_the_bound_validation_enforces() {
    let doc = doc();
    for endpoint in [CHAT, COMPLETIONS] {
        let media = request_body(&doc, endpoint);
        let base = &media["examples"]["short"]["value"];
        assert!(accepted(endpoint, base));
        let schema = resolve(&doc, &media["schema"]);
        let properties = schema["properties"].as_object().into_iter().flatten();
        for (key, prop) in properties {
            let prop = resolve(&doc, prop);
            let alternatives: Vec<&Value> = match prop["oneOf"].as_array() {
                Some(alts) => alts.iter().map(|a| resolve(&doc, a)).collect(),
                None => vec![prop],
            };
            let sample = match key.as_str() {
                "messages" => base["messages"][0].clone(),
                "tools" => sample_tool(),
                _ => json!("text"),
            };
            // `tool_choice` other than none needs tools to choose from.
            let base = match key.as_str() {
                "tool_choice" => with(base, "tools", json!([sample_tool()])),
                _ => base.clone(),
            };
            // A field that needs another (`top_logprobs` needs `logprobs: true`) is checked with it.
            let mut base = base.clone();
            for (k, v) in prop["x-herd-requires"].as_object().into_iter().flatten() {
                base[k] = v.clone();
            }
            for alt in alternatives {
                check_bounds(endpoint, &base, key, alt, &sample);
            }
        }
        for required in schema["required"].as_array().into_iter().flatten() {
            let mut body = base.clone();
            body.as_object_mut()
                .map(|b| b.remove(required.as_str().unwrap_or_default()));
            assert!(!accepted(endpoint, &body), "{endpoint} without {required}");
        }
    }
    // A message: every documented role is accepted, others refused; text only, without NUL.
    let base = &request_body(&doc, CHAT)["examples"]["short"]["value"];
    let message = |m: Value| with(base, "messages", json!([m]));
    let roles = resolve(&doc, &json!({"$ref": "#/components/schemas/ChatMessage"}))["properties"]
        ["role"]["enum"]
        .clone();
    for role in roles.as_array().into_iter().flatten() {
        assert!(
            accepted(CHAT, &message(json!({"role": role, "content": "hi"}))),
            "{role}"
        );
    }
    assert!(!accepted(
        CHAT,
        &message(json!({"role": "robot", "content": "hi"}))
    ));
    assert!(accepted(CHAT, &message(json!({"role": "user"}))));
    assert!(!accepted(
        CHAT,
        &message(json!({"role": "user", "content": "a\u{0}b"}))
    ));
    let part = |p: Value| message(json!({"role": "user", "content": [p]}));
    assert!(accepted(CHAT, &part(json!({"type": "text", "text": "hi"}))));
    assert!(!accepted(
        CHAT,
        &part(json!({"type": "text", "text": "a\u{0}b"}))
    ));
    assert!(!accepted(
        CHAT,
        &part(json!({"type": "image_url", "text": "hi"}))
    ));
    assert!(!accepted(CHAT, &part(json!({"type": "text"}))));
}

#[test]
fn the_document_passes_openapi_spec_validator_when_installed() {
    use std::process::Command;
    let installed = Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!("openapi-spec-validator is not installed (pip install openapi-spec-validator): structural checks only");
        return;
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/openapi.json");
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator", path])
        .output();
    assert!(out.as_ref().is_ok_and(|o| o.status.success()), "{out:?}");
}

/// OpenAPI 3.0 describes a `text/event-stream` body one event at a time, as
/// the object an SSE parser yields (`{"data": "..."}`); a plain string schema
/// made every streamed answer fail schema-driven checks (found by
/// bench/schemathesis).
#[test]
fn the_event_stream_schema_describes_one_event() {
    let doc = doc();
    for endpoint in [CHAT, COMPLETIONS] {
        let media = &doc["paths"][endpoint]["post"]["responses"]["200"]["content"];
        let event = resolve(&doc, &media["text/event-stream"]["schema"]);
        assert_eq!(event["type"], "object", "{endpoint}");
        assert_eq!(event["properties"]["data"]["type"], "string", "{endpoint}");
        assert_eq!(event["required"], json!(["data"]), "{endpoint}");
    }
}
