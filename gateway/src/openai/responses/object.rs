//! The Response object and its output items, shaped as OpenAI's, and how a
//! chat completion's answer becomes one.

use super::request::{ResponsesRequest, Tool};
use crate::openai::response::unix_now;
use serde::Serialize;
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    InProgress,
    Completed,
    Incomplete,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResponseObject {
    pub id: String,
    pub object: &'static str,
    pub created_at: u64,
    pub status: Status,
    pub error: Option<ResponseError>,
    pub incomplete_details: Option<IncompleteDetails>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub model: String,
    pub output: Vec<OutputItem>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub tool_choice: Value,
    pub tools: Vec<Tool>,
    pub text: Value,
    pub store: bool,
    pub metadata: Map<String, Value>,
    pub usage: Option<ResponseUsage>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResponseError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct IncompleteDetails {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    Message {
        id: String,
        status: Status,
        role: &'static str,
        content: Vec<OutputText>,
    },
    FunctionCall {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
        status: Status,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputText {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: String,
    pub annotations: Vec<Value>,
}

impl OutputText {
    pub fn new(text: String) -> Self {
        Self {
            kind: "output_text",
            text,
            annotations: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ResponseUsage {
    pub input_tokens: u64,
    pub input_tokens_details: InputDetails,
    pub output_tokens: u64,
    pub output_tokens_details: OutputDetails,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct InputDetails {
    pub cached_tokens: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct OutputDetails {
    pub reasoning_tokens: u64,
}

impl ResponseUsage {
    /// From a chat completion's `usage` object.
    pub fn from_chat(usage: &Value) -> Self {
        let n = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
        let input = n(usage.get("prompt_tokens"));
        let output = n(usage.get("completion_tokens"));
        Self {
            input_tokens: input,
            input_tokens_details: InputDetails {
                cached_tokens: n(usage.pointer("/prompt_tokens_details/cached_tokens")),
            },
            output_tokens: output,
            output_tokens_details: OutputDetails::default(),
            total_tokens: input.saturating_add(output),
        }
    }
}

pub fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}_{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

impl ResponseObject {
    /// An in-progress response echoing the request's settings.
    pub fn start(req: &ResponsesRequest, store: bool) -> Self {
        Self {
            id: new_id("resp"),
            object: "response",
            created_at: unix_now(),
            status: Status::InProgress,
            error: None,
            incomplete_details: None,
            instructions: req.instructions.clone(),
            max_output_tokens: req.max_output_tokens,
            model: req.model.clone(),
            output: Vec::new(),
            parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
            previous_response_id: req.previous_response_id.clone(),
            temperature: req.temperature,
            top_p: req.top_p,
            tool_choice: req.tool_choice.clone().unwrap_or_else(|| json!("auto")),
            tools: req.tools.clone().unwrap_or_default(),
            text: req
                .text
                .as_ref()
                .and_then(|t| t.format.clone())
                .map_or_else(
                    || json!({"format": {"type": "text"}}),
                    |f| json!({"format": f}),
                ),
            store,
            metadata: req.metadata.clone().unwrap_or_default(),
            usage: None,
            user: req.user.clone(),
        }
    }

    /// Marks the end from chat's `finish_reason`.
    pub fn finish(&mut self, finish_reason: Option<&str>, usage: Option<ResponseUsage>) {
        self.usage = usage;
        if finish_reason == Some("length") {
            self.status = Status::Incomplete;
            self.incomplete_details = Some(IncompleteDetails {
                reason: "max_output_tokens",
            });
        } else {
            self.status = Status::Completed;
        }
    }

    /// Fills the output from a whole (non-streamed) chat completion body.
    pub fn complete_from_chat(&mut self, chat: &Value) {
        let choice = chat.pointer("/choices/0");
        let message = choice.and_then(|c| c.get("message"));
        if let Some(text) = message
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.output.push(OutputItem::Message {
                id: new_id("msg"),
                status: Status::Completed,
                role: "assistant",
                content: vec![OutputText::new(text.to_string())],
            });
        }
        let calls = message
            .and_then(|m| m.get("tool_calls"))
            .and_then(Value::as_array);
        for call in calls.into_iter().flatten() {
            let s = |p: &str| {
                call.pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            self.output.push(OutputItem::FunctionCall {
                id: new_id("fc"),
                call_id: s("/id"),
                name: s("/function/name"),
                arguments: s("/function/arguments"),
                status: Status::Completed,
            });
        }
        let finish = choice
            .and_then(|c| c.get("finish_reason"))
            .and_then(Value::as_str);
        self.finish(finish, chat.get("usage").map(ResponseUsage::from_chat));
    }

    /// The output as chat history: one assistant message with its text and calls.
    pub fn as_chat_messages(&self) -> Vec<Value> {
        let mut text = String::new();
        let mut calls = Vec::new();
        for item in &self.output {
            match item {
                OutputItem::Message { content, .. } => {
                    for part in content {
                        text.push_str(&part.text);
                    }
                }
                OutputItem::FunctionCall {
                    call_id,
                    name,
                    arguments,
                    ..
                } => calls.push(json!({
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                })),
            }
        }
        if text.is_empty() && calls.is_empty() {
            return Vec::new();
        }
        let mut msg = json!({"role": "assistant", "content": text});
        if !calls.is_empty() {
            msg["tool_calls"] = Value::Array(calls);
        }
        vec![msg]
    }
}
