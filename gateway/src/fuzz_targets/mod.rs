//! Fuzz harnesses for the gateway's untrusted inputs. Each takes raw bytes,
//! drives one boundary exactly as the server does, and asserts what must hold
//! for every input (a failed assertion is a finding). `gateway/fuzz` runs
//! them under libFuzzer for hours; `tests/fuzz.rs` runs them over the seed
//! corpus and a few thousand mutations in every `cargo test`. Not an API.

mod request;
mod sse;

pub use request::{chat_request, completion_request, plan_body};
pub use sse::sse_stream;

use crate::openai::ApiError;
use serde_json::Value;

/// A refusal of client input: a 4xx whose body is OpenAI's error object.
fn assert_client_error(e: &ApiError) {
    let status = e.status();
    assert!(status.is_client_error(), "{status} for {e:?}");
    assert_error_shape(&serde_json::to_value(e.envelope()).unwrap_or_default());
}

/// `{"error": {"message": "...", "type": "...", "param": null|"...", "code": null|"..."}}`.
pub fn assert_error_shape(body: &Value) {
    assert!(is_error_shape(body), "not an OpenAI error object: {body}");
}

fn is_error_shape(body: &Value) -> bool {
    let Some(outer) = body.as_object().filter(|o| o.len() == 1) else {
        return false;
    };
    let Some(error) = outer.get("error").and_then(Value::as_object) else {
        return false;
    };
    let text = |k: &str| {
        error
            .get(k)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    let nullable = |k: &str| error.get(k).is_some_and(|v| v.is_null() || v.is_string());
    error.len() == 4 && text("message") && text("type") && nullable("param") && nullable("code")
}
