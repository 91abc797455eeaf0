//! The bytes that cross to and from an upstream. Requests go out as the
//! client wrote them but for `model` (the upstream's name) and, when the
//! client streams, `stream_options.include_usage` (so usage is counted even
//! when the client did not ask). Answers are read only as far as herd needs
//! (text or not, finish reason, usage, error) and relayed unchanged.

use herd_engines::{FinishReason, Usage};
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// The top-level fields of a JSON object, in order, values unparsed.
struct Fields<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(12));
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(V)
    }
}

/// The client's body with `model` set to `model` and, if `stream`,
/// `stream_options.include_usage = true`.
pub fn rewrite(raw: &[u8], model: &str, stream: bool) -> Result<Vec<u8>, serde_json::Error> {
    let Fields(fields) = serde_json::from_slice(raw)?;
    let mut out = Vec::with_capacity(raw.len() + 48);
    out.push(b'{');
    let mut asked_usage = false;
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, key)?;
        out.push(b':');
        match key.as_str() {
            "model" => serde_json::to_writer(&mut out, model)?,
            "stream_options" if stream => {
                let mut options: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(value.get()).unwrap_or_default();
                options.insert("include_usage".into(), true.into());
                serde_json::to_writer(&mut out, &options)?;
                asked_usage = true;
            }
            _ => out.extend_from_slice(value.get().as_bytes()),
        }
    }
    if stream && !asked_usage {
        if !fields.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
    }
    out.push(b'}');
    Ok(out)
}

/// What herd reads of an answer or a stream chunk.
#[derive(Debug, Default, Deserialize)]
pub struct Peek<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<ChoicePeek<'a>>>,
    #[serde(default)]
    usage: Option<UsageIn>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct ChoicePeek<'a> {
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    delta: Option<DeltaPeek<'a>>,
    #[serde(default, borrow)]
    message: Option<DeltaPeek<'a>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct DeltaPeek<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
struct UsageIn {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
    #[serde(default)]
    prompt_tokens_details: Option<CachedIn>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
struct CachedIn {
    #[serde(default)]
    cached_tokens: Option<u32>,
}

impl<'a> Peek<'a> {
    pub fn parse(data: &'a str) -> Option<Self> {
        serde_json::from_str(data).ok()
    }

    /// An `{"error": ...}` object instead of an answer.
    pub fn is_error(&self) -> bool {
        self.error.is_some()
    }

    /// Whether it carries generated output (text or a tool call).
    pub fn has_output(&self) -> bool {
        self.choices.iter().flatten().any(|c| {
            let part = c.delta.as_ref().or(c.message.as_ref());
            c.text.as_ref().is_some_and(|t| !t.is_empty())
                || part.is_some_and(|d| {
                    d.content.as_ref().is_some_and(|t| !t.is_empty()) || d.tool_calls.is_some()
                })
        })
    }

    /// `length` is a length stop; every other reason (stop, tool_calls,
    /// content_filter) is counted as a stop.
    pub fn finish(&self) -> Option<FinishReason> {
        self.choices
            .iter()
            .flatten()
            .find_map(|c| c.finish_reason.as_deref())
            .map(|r| match r {
                "length" => FinishReason::Length,
                _ => FinishReason::Stop,
            })
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage.map(|u| Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
        })
    }

    /// The chunk `stream_options.include_usage` adds: usage and no choices.
    pub fn is_usage_only(&self) -> bool {
        self.usage.is_some() && self.choices.as_ref().is_none_or(Vec::is_empty)
    }
}

/// The message of an error answer: OpenAI's `{"error": {"message"}}`, vLLM's
/// `{"message"}`, else the start of the text. `true` when it is OpenAI-shaped
/// (and so can be passed to the client as is): `type`, `param` and `code`
/// strings or null, as OpenAI's clients read them. llama-server's numeric
/// `"code": 400` is not, and strict clients (async-openai) cannot read it.
pub fn error_message(body: &[u8]) -> (String, bool) {
    #[derive(Deserialize)]
    struct Inner {
        message: Option<String>,
        #[serde(default, rename = "type")]
        kind: Option<serde_json::Value>,
        #[serde(default)]
        param: Option<serde_json::Value>,
        #[serde(default)]
        code: Option<serde_json::Value>,
    }
    #[derive(Deserialize)]
    struct Outer {
        error: Option<Inner>,
        message: Option<String>,
    }
    let text_or_null =
        |v: &Option<serde_json::Value>| v.as_ref().is_none_or(|v| v.is_string() || v.is_null());
    match serde_json::from_slice::<Outer>(body) {
        Ok(Outer {
            error:
                Some(Inner {
                    message: Some(m),
                    kind,
                    param,
                    code,
                }),
            ..
        }) => {
            let shaped = [&kind, &param, &code].into_iter().all(text_or_null);
            (m, shaped)
        }
        Ok(Outer {
            message: Some(m), ..
        }) => (m, false),
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let cut = text.char_indices().nth(200).map_or(text.len(), |(i, _)| i);
            (text[..cut].to_string(), false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(raw: &str, stream: bool) -> String {
        rewrite(raw.as_bytes(), "up", stream)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn only_model_and_stream_options_change() {
        assert_eq!(
            rewritten(
                r#"{"model":"a","messages":[{"role":"user","content":"h\u00e9"}],"tools":[]}"#,
                false
            ),
            r#"{"model":"up","messages":[{"role":"user","content":"h\u00e9"}],"tools":[]}"#
        );
        assert_eq!(
            rewritten(r#"{"stream":true,"model":"a"}"#, true),
            r#"{"stream":true,"model":"up","stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            rewritten(
                r#"{"model":"a","stream_options":{"include_usage":false,"x":1},"stream":true}"#,
                true
            ),
            r#"{"model":"up","stream_options":{"include_usage":true,"x":1},"stream":true}"#
        );
    }

    #[test]
    fn peeks_read_text_finish_and_usage() {
        let p = Peek::parse(
            r#"{"id":"x","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#,
        );
        assert!(p
            .as_ref()
            .is_some_and(|p| p.has_output() && p.finish().is_none()));
        let p = Peek::parse(
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#,
        );
        let p = p.unwrap_or_default();
        assert!(p.is_usage_only());
        assert_eq!(
            p.usage().map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((5, 2))
        );
        let p = Peek::parse(r#"{"choices":[{"text":"","finish_reason":"length"}],"usage":null}"#)
            .unwrap_or_default();
        assert!(!p.has_output() && !p.is_usage_only());
        assert_eq!(p.finish(), Some(FinishReason::Length));
        assert!(Peek::parse(r#"{"error":{"message":"boom"}}"#).is_some_and(|p| p.is_error()));
    }

    #[test]
    fn error_messages_come_from_any_shape() {
        assert_eq!(
            error_message(br#"{"error":{"message":"no","type":"x"}}"#),
            ("no".to_string(), true)
        );
        // llama-server's: readable, but not as is by OpenAI's clients.
        assert_eq!(
            error_message(
                br#"{"error":{"code":400,"message":"too long","type":"exceed_context_size_error"}}"#
            ),
            ("too long".to_string(), false)
        );
        assert_eq!(
            error_message(br#"{"error":{"message":"x","type":null,"param":"model","code":null}}"#),
            ("x".to_string(), true)
        );
        assert_eq!(
            error_message(br#"{"object":"error","message":"bad"}"#),
            ("bad".to_string(), false)
        );
        assert_eq!(error_message(b"<html>502</html>").0, "<html>502</html>");
    }
}
