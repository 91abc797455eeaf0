use super::*;
use axum::body::to_bytes;
use herd_engines::Usage;
use serde_json::Value;

async fn sse_lines<T: Serialize + Send + Sync + 'static>(payloads: Vec<T>) -> Vec<String> {
    let sse = Sse::new(encode(futures::stream::iter(payloads)).map(Ok::<_, Infallible>));
    let body = sse.into_response().into_body();
    let bytes = to_bytes(body, usize::MAX).await.unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect()
}

/// A value serde refuses to encode, as a foreign type with a bad `Serialize` might.
struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refused"))
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum Mixed {
    Fine(u32),
    Bad(Unencodable),
}

#[tokio::test]
async fn an_unencodable_event_ends_the_stream_with_an_error_not_an_empty_event() {
    let lines = sse_lines(vec![
        Mixed::Fine(1),
        Mixed::Bad(Unencodable),
        Mixed::Fine(2),
    ])
    .await;
    assert_eq!(lines, vec!["1", ENCODING_FAILED, "[DONE]"]);
}

#[tokio::test]
async fn every_payload_encodes() {
    let mut payloads = Vec::new();
    for endpoint in [Endpoint::Chat, Endpoint::Completions] {
        let c = Chunker::new(endpoint, "m".into());
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            cached_tokens: 1,
        };
        payloads.push(c.event(Some(String::new()), true, None, None));
        payloads.push(c.event(Some("tok \" \u{0} é".into()), false, None, None));
        for reason in [FinishReason::Stop, FinishReason::Length] {
            payloads.push(c.event(None, false, Some(reason), None));
        }
        payloads.push(c.event(None, false, None, Some(usage)));
    }
    payloads.push(Payload::Error(
        ApiError::Engine(EngineError::Crashed("x".into())).envelope(),
    ));
    let count = payloads.len();
    let lines = sse_lines(payloads).await;
    assert_eq!(lines.len(), count + 1);
    assert_eq!(lines.last().map(String::as_str), Some("[DONE]"));
    for line in &lines[..count] {
        let v: Result<Value, _> = serde_json::from_str(line);
        assert!(
            v.is_ok_and(|v| {
                let id = v["id"].as_str().unwrap_or("");
                v.is_object()
                    && (id.starts_with("chatcmpl-")
                        || id.starts_with("cmpl-")
                        || v["error"].is_object())
            }),
            "{line}"
        );
    }
}
