//! One request against the target server, timed: time to first token, the
//! gaps between content chunks, end-to-end latency and token counts.

use super::args::{BenchArgs, Endpoint};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Why a request failed; its `key()` is the bucket in "errors by status".
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("HTTP {status}: {message}")]
    Status {
        status: u16,
        message: String,
        /// The response's Retry-After, in seconds, when it had one.
        retry_after: Option<u64>,
    },
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("no complete answer within the --timeout")]
    Timeout,
    #[error("transport error: {0}")]
    Transport(String),
    #[error("error event in the stream: {0}")]
    StreamError(String),
    #[error("malformed response: {0}")]
    Protocol(String),
}

impl Failure {
    pub fn key(&self) -> String {
        match self {
            Failure::Status { status, .. } => status.to_string(),
            Failure::Connect(_) => "connect".into(),
            Failure::Timeout => "timeout".into(),
            Failure::Transport(_) => "transport".into(),
            Failure::StreamError(_) => "stream_error".into(),
            Failure::Protocol(_) => "protocol".into(),
        }
    }

    /// The server's Retry-After (seconds) on an error status.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Failure::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_connect() {
            Failure::Connect(chain(&e))
        } else if e.is_timeout() {
            Failure::Timeout
        } else {
            Failure::Transport(chain(&e))
        }
    }
}

/// The error and its causes: reqwest's own message ("error sending request")
/// does not say what went wrong underneath (a reset, a closed connection).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// A request that completed.
#[derive(Debug, Default)]
pub struct Done {
    /// First content chunk (streaming only).
    pub ttft: Option<Duration>,
    pub e2e: Duration,
    /// From the server's `usage`, else the number of content chunks.
    pub output_tokens: u64,
    pub prompt_tokens: Option<u64>,
    /// Between consecutive content chunks (streaming only).
    pub gaps: Vec<Duration>,
    /// Sent a second time after a transport error before any response.
    pub retried: bool,
}

/// What every request shares: the client, URL and body fields.
pub struct Target {
    client: reqwest::Client,
    url: String,
    endpoint: Endpoint,
    model: String,
    api_key: Option<String>,
    max_tokens: u32,
    temperature: f64,
    ignore_eos: bool,
    stream: bool,
    timeout: Duration,
}

impl Target {
    pub fn new(args: &BenchArgs, model: String) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(args.concurrency.max(1))
            // Drop idle connections before servers with short keep-alive (llama-server:
            // 5 s) close them, so a request never races a closing socket.
            .pool_idle_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        let base = args.base_url.trim_end_matches('/');
        let path = match args.endpoint {
            Endpoint::Chat => "chat/completions",
            Endpoint::Completions => "completions",
            Endpoint::Models => "models",
        };
        Ok(Self {
            client,
            url: format!("{base}/{path}"),
            endpoint: args.endpoint,
            model,
            api_key: args.api_key.clone(),
            max_tokens: args.max_tokens,
            temperature: args.temperature,
            ignore_eos: args.ignore_eos,
            stream: args.stream,
            timeout: Duration::from_secs_f64(args.timeout.max(0.001)),
        })
    }

    pub fn body(&self, prompt: &str) -> Value {
        let mut body = json!({
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stream": self.stream,
        });
        match self.endpoint {
            Endpoint::Completions => body["prompt"] = json!(prompt),
            _ => body["messages"] = json!([{"role": "user", "content": prompt}]),
        }
        if self.stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        if self.ignore_eos {
            body["ignore_eos"] = json!(true);
        }
        body
    }

    /// Sends one request; never takes longer than the timeout.
    pub async fn send(&self, prompt: &str) -> Result<Done, Failure> {
        let start = Instant::now();
        match tokio::time::timeout(self.timeout, self.exchange(prompt, start)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout),
        }
    }

    fn request(&self, prompt: &str) -> reqwest::RequestBuilder {
        let request = match self.endpoint {
            Endpoint::Models => self.client.get(&self.url),
            _ => self.client.post(&self.url).json(&self.body(prompt)),
        };
        match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    async fn exchange(&self, prompt: &str, start: Instant) -> Result<Done, Failure> {
        // A server may close a kept-alive connection just as a request goes out on it
        // (llama-server does): like OpenAI's SDKs, send once more on a transport error
        // before any response, and count it.
        let (response, retried) = match self.request(prompt).send().await {
            Ok(response) => (response, false),
            Err(e) if !e.is_connect() && !e.is_timeout() => {
                let response = self.request(prompt).send().await;
                (response.map_err(Failure::from_reqwest)?, true)
            }
            Err(e) => return Err(Failure::from_reqwest(e)),
        };
        let mut done = self.read(response, start).await?;
        done.retried = retried;
        Ok(done)
    }

    async fn read(&self, response: reqwest::Response, start: Instant) -> Result<Done, Failure> {
        let status = response.status();
        if !status.is_success() {
            // Only the delay-seconds form: herd and llama-server send no HTTP dates.
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.trim().parse().ok());
            let text = response.text().await.unwrap_or_default();
            return Err(Failure::Status {
                status: status.as_u16(),
                message: error_message(&text),
                retry_after,
            });
        }
        if self.stream && self.endpoint != Endpoint::Models {
            return read_stream(response, start).await;
        }
        let value: Value = response.json().await.map_err(|e| {
            if e.is_decode() {
                Failure::Protocol(e.to_string())
            } else {
                Failure::from_reqwest(e)
            }
        })?;
        let (completion, prompt_tokens) = usage(&value);
        Ok(Done {
            e2e: start.elapsed(),
            output_tokens: completion.unwrap_or(0),
            prompt_tokens,
            ..Done::default()
        })
    }
}

async fn read_stream(response: reqwest::Response, start: Instant) -> Result<Done, Failure> {
    let mut events = response.bytes_stream().eventsource();
    let mut done = Done::default();
    let mut chunks = 0u64;
    let mut usage_tokens = None;
    let mut last = None::<Instant>;
    let mut finished = false;
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| Failure::Transport(e.to_string()))?;
        if event.data.trim() == "[DONE]" {
            finished = true;
            break;
        }
        let value: Value = serde_json::from_str(&event.data)
            .map_err(|e| Failure::Protocol(format!("event is not JSON ({e})")))?;
        if let Some(err) = value.get("error") {
            return Err(Failure::StreamError(error_message(&err.to_string())));
        }
        let (completion, prompt_tokens) = usage(&value);
        usage_tokens = completion.or(usage_tokens);
        done.prompt_tokens = prompt_tokens.or(done.prompt_tokens);
        if has_content(&value) {
            let now = Instant::now();
            match last {
                None => done.ttft = Some(now - start),
                Some(prev) => done.gaps.push(now - prev),
            }
            last = Some(now);
            chunks += 1;
        }
    }
    if !finished {
        return Err(Failure::Protocol("the stream ended without [DONE]".into()));
    }
    done.e2e = start.elapsed();
    done.output_tokens = usage_tokens.unwrap_or(chunks);
    Ok(done)
}

/// A chunk carrying generated text (chat `delta.content` or completion `text`).
fn has_content(value: &Value) -> bool {
    value["choices"].as_array().is_some_and(|choices| {
        choices.iter().any(|c| {
            let text = c["delta"]["content"].as_str().or(c["text"].as_str());
            text.is_some_and(|t| !t.is_empty())
        })
    })
}

/// (completion_tokens, prompt_tokens) of a body or chunk that has `usage`.
fn usage(value: &Value) -> (Option<u64>, Option<u64>) {
    let u = &value["usage"];
    (u["completion_tokens"].as_u64(), u["prompt_tokens"].as_u64())
}

/// The `error.message` of an OpenAI-shaped error body, else the text itself (shortened).
fn error_message(text: &str) -> String {
    let parsed = serde_json::from_str::<Value>(text).ok();
    let message = parsed.as_ref().and_then(|v| {
        v["error"]["message"]
            .as_str()
            .or(v["message"].as_str())
            .map(str::to_string)
    });
    let mut message = message.unwrap_or_else(|| text.trim().to_string());
    if message.len() > 200 {
        let mut cut = 200;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_found_in_chat_and_completion_chunks_only_when_non_empty() {
        assert!(has_content(
            &json!({"choices":[{"delta":{"content":"hi"}}]})
        ));
        assert!(has_content(&json!({"choices":[{"text":"hi"}]})));
        assert!(!has_content(
            &json!({"choices":[{"delta":{"role":"assistant","content":""}}]})
        ));
        assert!(!has_content(
            &json!({"choices":[],"usage":{"completion_tokens":3}})
        ));
    }

    #[test]
    fn usage_and_error_messages_are_read_from_openai_shapes() {
        let v = json!({"usage":{"completion_tokens":7,"prompt_tokens":12}});
        assert_eq!(usage(&v), (Some(7), Some(12)));
        assert_eq!(usage(&json!({"usage":null})), (None, None));
        let body =
            r#"{"error":{"message":"queue full","type":"rate_limit","param":null,"code":null}}"#;
        assert_eq!(error_message(body), "queue full");
        assert_eq!(error_message("plain text"), "plain text");
        assert_eq!(error_message(&"é".repeat(150)).len(), 200);
    }
}
