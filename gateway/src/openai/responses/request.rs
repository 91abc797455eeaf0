//! `POST /v1/responses` bodies as OpenAI clients send them, and their
//! translation into the chat request herd's pipeline serves. Fields herd
//! cannot honor are declared so that they are refused by name, not ignored.

use crate::openai::ApiError;
use serde::Deserialize;
use serde_json::{json, Map, Value};

#[derive(Debug, Deserialize)]
pub struct ResponsesRequest {
    pub model: String,
    pub input: Input,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub tools: Option<Vec<Tool>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub text: Option<TextConfig>,
    #[serde(default)]
    pub max_output_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub seed: Option<i64>,
    /// Not in OpenAI's Responses reference, but sent by clients written for
    /// chat servers (Fabric sets them when configured): passed to the chat request.
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    // Declared only to be refused (or accepted in their no-op form).
    #[serde(default)]
    pub background: Option<bool>,
    #[serde(default)]
    pub reasoning: Option<Value>,
    #[serde(default)]
    pub truncation: Option<String>,
    #[serde(default)]
    pub include: Option<Vec<String>>,
    #[serde(default)]
    pub conversation: Option<Value>,
    #[serde(default)]
    pub prompt: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Items(Vec<Value>),
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct TextConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Value>,
}

/// A request checked and turned into a chat completion body, with what the
/// response object echoes back.
#[derive(Debug)]
pub struct Translated {
    /// The chat completion request body herd's pipeline runs.
    pub chat: Value,
    /// The conversation so far (without `instructions`, which do not carry
    /// over to a follow-up), as chat messages: stored for follow-ups.
    pub history: Vec<Value>,
    pub stream: bool,
    pub store: bool,
}

/// Checks what herd cannot honor and builds the chat body. `previous` is the
/// stored conversation of `previous_response_id`, already looked up.
pub fn translate(req: &ResponsesRequest, previous: Vec<Value>) -> Result<Translated, ApiError> {
    refuse_unsupported(req)?;
    let mut history = previous;
    match &req.input {
        Input::Text(t) => history.push(json!({"role": "user", "content": t})),
        Input::Items(items) => {
            if items.is_empty() {
                return Err(ApiError::invalid(
                    "input",
                    "`input` must hold at least one item",
                ));
            }
            append_items(items, &mut history)?;
        }
    }
    let mut messages = Vec::with_capacity(history.len() + 1);
    if let Some(i) = &req.instructions {
        messages.push(json!({"role": "system", "content": i}));
    }
    messages.extend(history.iter().cloned());

    let stream = req.stream.unwrap_or(false);
    let mut chat = Map::new();
    chat.insert("model".into(), json!(req.model));
    chat.insert("messages".into(), Value::Array(messages));
    chat.insert("stream".into(), json!(stream));
    if stream {
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    put(
        &mut chat,
        "max_tokens",
        req.max_output_tokens.map(Value::from),
    );
    put(&mut chat, "temperature", req.temperature.map(Value::from));
    put(&mut chat, "top_p", req.top_p.map(Value::from));
    put(&mut chat, "seed", req.seed.map(Value::from));
    put(
        &mut chat,
        "presence_penalty",
        req.presence_penalty.map(Value::from),
    );
    put(
        &mut chat,
        "frequency_penalty",
        req.frequency_penalty.map(Value::from),
    );
    put(&mut chat, "user", req.user.clone().map(Value::from));
    put(
        &mut chat,
        "parallel_tool_calls",
        req.parallel_tool_calls.map(Value::from),
    );
    if let Some(tools) = &req.tools {
        if !tools.is_empty() {
            chat.insert("tools".into(), chat_tools(tools)?);
        }
    }
    if let Some(choice) = &req.tool_choice {
        chat.insert("tool_choice".into(), chat_tool_choice(choice)?);
    }
    if let Some(format) = req.text.as_ref().and_then(|t| t.format.as_ref()) {
        if let Some(rf) = response_format(format)? {
            chat.insert("response_format".into(), rf);
        }
    }
    Ok(Translated {
        chat: Value::Object(chat),
        history,
        stream,
        store: req.store.unwrap_or(true),
    })
}

fn put(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        map.insert(key.into(), v);
    }
}

fn refuse_unsupported(req: &ResponsesRequest) -> Result<(), ApiError> {
    if req.background == Some(true) {
        return Err(ApiError::invalid(
            "background",
            "background responses are not supported by herd; stream instead",
        ));
    }
    if req.reasoning.as_ref().is_some_and(|r| !r.is_null()) {
        return Err(ApiError::invalid(
            "reasoning",
            "`reasoning` is not supported with this model (herd serves no reasoning models)",
        ));
    }
    if req.truncation.as_deref().is_some_and(|t| t != "disabled") {
        return Err(ApiError::invalid(
            "truncation",
            "only `truncation: \"disabled\"` is supported: an input over the context is a 400",
        ));
    }
    if let Some(inc) = req.include.as_ref().and_then(|i| i.first()) {
        return Err(ApiError::invalid(
            "include",
            format!("`include` value `{inc}` is not supported by herd"),
        ));
    }
    if req.conversation.as_ref().is_some_and(|c| !c.is_null()) {
        return Err(ApiError::invalid(
            "conversation",
            "conversations are not supported by herd; use `previous_response_id`",
        ));
    }
    if req.prompt.as_ref().is_some_and(|p| !p.is_null()) {
        return Err(ApiError::invalid(
            "prompt",
            "prompt templates are not supported by herd; send `input` and `instructions`",
        ));
    }
    Ok(())
}

/// Input items become chat messages; consecutive function calls join one
/// assistant message, as chat history carries them.
fn append_items(items: &[Value], out: &mut Vec<Value>) -> Result<(), ApiError> {
    for item in items {
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        match kind {
            "message" => out.push(message(item)?),
            "function_call" => {
                let call = json!({
                    "id": str_field(item, "call_id")?,
                    "type": "function",
                    "function": {
                        "name": str_field(item, "name")?,
                        "arguments": str_field(item, "arguments")?,
                    },
                });
                let joined = out.last_mut().and_then(|last| {
                    let open = last.get("role").and_then(Value::as_str) == Some("assistant")
                        && last.get("tool_calls").is_some();
                    open.then(|| last.get_mut("tool_calls").and_then(Value::as_array_mut))
                        .flatten()
                });
                match joined {
                    Some(calls) => calls.push(call),
                    None => out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            "function_call_output" => out.push(json!({
                "role": "tool",
                "tool_call_id": str_field(item, "call_id")?,
                "content": text_of(item.get("output"), "input.output")?,
            })),
            other => {
                return Err(ApiError::invalid(
                    "input",
                    format!("input items of type `{other}` are not supported by herd (messages, function_call and function_call_output are)"),
                ))
            }
        }
    }
    Ok(())
}

fn message(item: &Value) -> Result<Value, ApiError> {
    let role = match item.get("role").and_then(Value::as_str) {
        Some("developer" | "system") => "system",
        Some(r @ ("user" | "assistant")) => r,
        Some(other) => {
            return Err(ApiError::invalid(
                "input",
                format!(
                    "input message role `{other}` is not one of user, assistant, system, developer"
                ),
            ))
        }
        None => {
            return Err(ApiError::invalid(
                "input",
                "an input message needs a `role`",
            ))
        }
    };
    Ok(json!({"role": role, "content": text_of(item.get("content"), "input.content")?}))
}

/// A string, or content parts of text types joined by newlines.
fn text_of(content: Option<&Value>, what: &str) -> Result<String, ApiError> {
    match content {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for p in parts {
                let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
                match kind {
                    "input_text" | "output_text" | "text" => {
                        texts.push(p.get("text").and_then(Value::as_str).ok_or_else(|| {
                            ApiError::invalid("input", format!("a `{kind}` part needs `text`"))
                        })?)
                    }
                    "refusal" => texts.push(p.get("refusal").and_then(Value::as_str).unwrap_or("")),
                    other => {
                        return Err(ApiError::invalid(
                            "input",
                            format!(
                            "content parts of type `{other}` are not supported by herd (text only)"
                        ),
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(ApiError::invalid(
            "input",
            format!("`{what}` must be a string or a list of text parts"),
        )),
    }
}

fn str_field<'a>(item: &'a Value, name: &str) -> Result<&'a str, ApiError> {
    item.get(name).and_then(Value::as_str).ok_or_else(|| {
        ApiError::invalid(
            "input",
            format!("a function call item needs a string `{name}`"),
        )
    })
}

fn chat_tools(tools: &[Tool]) -> Result<Value, ApiError> {
    let mut out = Vec::with_capacity(tools.len());
    for t in tools {
        if t.kind != "function" {
            return Err(ApiError::invalid(
                "tools",
                format!(
                    "tools of type `{}` are not supported by herd (only `function`)",
                    t.kind
                ),
            ));
        }
        let Some(name) = &t.name else {
            return Err(ApiError::invalid("tools", "a function tool needs a `name`"));
        };
        let mut f = Map::new();
        f.insert("name".into(), json!(name));
        put(
            &mut f,
            "description",
            t.description.clone().map(Value::from),
        );
        put(&mut f, "parameters", t.parameters.clone());
        put(&mut f, "strict", t.strict.map(Value::from));
        out.push(json!({"type": "function", "function": f}));
    }
    Ok(Value::Array(out))
}

fn chat_tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(_) => Ok(choice.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o.get("name").and_then(Value::as_str).ok_or_else(|| {
                ApiError::invalid("tool_choice", "a function `tool_choice` needs a `name`")
            })?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(ApiError::invalid(
            "tool_choice",
            "`tool_choice` must be auto, none, required or {\"type\": \"function\", \"name\": …}",
        )),
    }
}

/// `text.format` as chat's `response_format`; plain text needs none.
fn response_format(format: &Value) -> Result<Option<Value>, ApiError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            for key in ["name", "schema", "strict", "description"] {
                put(&mut schema, key, format.get(key).cloned());
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(ApiError::invalid(
            "text.format",
            "`text.format.type` must be text, json_object or json_schema",
        )),
    }
}
