//! Responses API stream events, and the converter that turns a chat
//! completion stream (text deltas, tool-call deltas, usage) into them, in
//! the order OpenAI sends them: created, in_progress, then per output item
//! added → deltas → done, then completed / incomplete / failed.

use super::object::ResponseUsage;
use super::object::{new_id, OutputItem, OutputText, ResponseError, ResponseObject, Status};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type")]
pub enum EventBody {
    #[serde(rename = "response.created")]
    Created { response: ResponseObject },
    #[serde(rename = "response.in_progress")]
    InProgress { response: ResponseObject },
    #[serde(rename = "response.output_item.added")]
    ItemAdded {
        output_index: usize,
        item: OutputItem,
    },
    #[serde(rename = "response.content_part.added")]
    PartAdded {
        item_id: String,
        output_index: usize,
        content_index: u32,
        part: OutputText,
    },
    #[serde(rename = "response.output_text.delta")]
    TextDelta {
        item_id: String,
        output_index: usize,
        content_index: u32,
        delta: String,
        logprobs: Vec<Value>,
    },
    #[serde(rename = "response.output_text.done")]
    TextDone {
        item_id: String,
        output_index: usize,
        content_index: u32,
        text: String,
        logprobs: Vec<Value>,
    },
    #[serde(rename = "response.content_part.done")]
    PartDone {
        item_id: String,
        output_index: usize,
        content_index: u32,
        part: OutputText,
    },
    #[serde(rename = "response.function_call_arguments.delta")]
    ArgumentsDelta {
        item_id: String,
        output_index: usize,
        delta: String,
    },
    #[serde(rename = "response.function_call_arguments.done")]
    ArgumentsDone {
        item_id: String,
        output_index: usize,
        name: String,
        arguments: String,
    },
    #[serde(rename = "response.output_item.done")]
    ItemDone {
        output_index: usize,
        item: OutputItem,
    },
    #[serde(rename = "response.completed")]
    Completed { response: ResponseObject },
    #[serde(rename = "response.incomplete")]
    Incomplete { response: ResponseObject },
    #[serde(rename = "response.failed")]
    Failed { response: ResponseObject },
}

/// One event: its body and its place in the stream.
#[derive(Debug, Clone, Serialize)]
pub struct StreamEvent {
    #[serde(flatten)]
    pub body: EventBody,
    pub sequence_number: u64,
}

impl StreamEvent {
    /// The SSE `event:` name (the same as the body's `type`).
    pub fn name(&self) -> &'static str {
        match &self.body {
            EventBody::Created { .. } => "response.created",
            EventBody::InProgress { .. } => "response.in_progress",
            EventBody::ItemAdded { .. } => "response.output_item.added",
            EventBody::PartAdded { .. } => "response.content_part.added",
            EventBody::TextDelta { .. } => "response.output_text.delta",
            EventBody::TextDone { .. } => "response.output_text.done",
            EventBody::PartDone { .. } => "response.content_part.done",
            EventBody::ArgumentsDelta { .. } => "response.function_call_arguments.delta",
            EventBody::ArgumentsDone { .. } => "response.function_call_arguments.done",
            EventBody::ItemDone { .. } => "response.output_item.done",
            EventBody::Completed { .. } => "response.completed",
            EventBody::Incomplete { .. } => "response.incomplete",
            EventBody::Failed { .. } => "response.failed",
        }
    }
}

/// The output item being streamed.
enum Open {
    Text {
        id: String,
        text: String,
    },
    Call {
        chat_index: u64,
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

pub struct Converter {
    response: ResponseObject,
    seq: u64,
    open: Option<Open>,
    finish_reason: Option<String>,
    usage: Option<ResponseUsage>,
    out: Vec<StreamEvent>,
}

impl Converter {
    pub fn new(response: ResponseObject) -> Self {
        Self {
            response,
            seq: 0,
            open: None,
            finish_reason: None,
            usage: None,
            out: Vec::new(),
        }
    }

    fn emit(&mut self, body: EventBody) {
        self.out.push(StreamEvent {
            body,
            sequence_number: self.seq,
        });
        self.seq += 1;
    }

    fn drain(&mut self) -> Vec<StreamEvent> {
        std::mem::take(&mut self.out)
    }

    pub fn start(&mut self) -> Vec<StreamEvent> {
        self.emit(EventBody::Created {
            response: self.response.clone(),
        });
        self.emit(EventBody::InProgress {
            response: self.response.clone(),
        });
        self.drain()
    }

    /// One chat completion chunk (its JSON payload).
    pub fn chunk(&mut self, chunk: &Value) -> Vec<StreamEvent> {
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(ResponseUsage::from_chat(usage));
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return self.drain();
        };
        if let Some(text) = choice
            .pointer("/delta/content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.text(text);
        }
        let calls = choice
            .pointer("/delta/tool_calls")
            .and_then(Value::as_array);
        for call in calls.into_iter().flatten() {
            self.call(call);
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(reason.to_string());
        }
        self.drain()
    }

    fn text(&mut self, delta: &str) {
        if !matches!(self.open, Some(Open::Text { .. })) {
            self.close();
            let id = new_id("msg");
            let output_index = self.response.output.len();
            self.emit(EventBody::ItemAdded {
                output_index,
                item: OutputItem::Message {
                    id: id.clone(),
                    status: Status::InProgress,
                    role: "assistant",
                    content: Vec::new(),
                },
            });
            self.emit(EventBody::PartAdded {
                item_id: id.clone(),
                output_index,
                content_index: 0,
                part: OutputText::new(String::new()),
            });
            self.open = Some(Open::Text {
                id,
                text: String::new(),
            });
        }
        let output_index = self.response.output.len();
        if let Some(Open::Text { id, text }) = &mut self.open {
            text.push_str(delta);
            let item_id = id.clone();
            self.emit(EventBody::TextDelta {
                item_id,
                output_index,
                content_index: 0,
                delta: delta.to_string(),
                logprobs: Vec::new(),
            });
        }
    }

    fn call(&mut self, call: &Value) {
        let chat_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let same = matches!(&self.open, Some(Open::Call { chat_index: i, .. }) if *i == chat_index);
        if !same {
            self.close();
            let id = new_id("fc");
            let call_id = call
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| new_id("call"), str::to_string);
            let name = call
                .pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            self.emit(EventBody::ItemAdded {
                output_index: self.response.output.len(),
                item: OutputItem::FunctionCall {
                    id: id.clone(),
                    call_id: call_id.clone(),
                    name: name.clone(),
                    arguments: String::new(),
                    status: Status::InProgress,
                },
            });
            self.open = Some(Open::Call {
                chat_index,
                id,
                call_id,
                name,
                arguments: String::new(),
            });
        }
        let fragment = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty());
        let output_index = self.response.output.len();
        if let (Some(delta), Some(Open::Call { id, arguments, .. })) = (fragment, &mut self.open) {
            arguments.push_str(delta);
            let item_id = id.clone();
            self.emit(EventBody::ArgumentsDelta {
                item_id,
                output_index,
                delta: delta.to_string(),
            });
        }
    }

    /// Ends the open item, if any, and adds it to the output.
    fn close(&mut self) {
        let output_index = self.response.output.len();
        let item = match self.open.take() {
            None => return,
            Some(Open::Text { id, text }) => {
                let part = OutputText::new(text.clone());
                self.emit(EventBody::TextDone {
                    item_id: id.clone(),
                    output_index,
                    content_index: 0,
                    text,
                    logprobs: Vec::new(),
                });
                self.emit(EventBody::PartDone {
                    item_id: id.clone(),
                    output_index,
                    content_index: 0,
                    part: part.clone(),
                });
                OutputItem::Message {
                    id,
                    status: Status::Completed,
                    role: "assistant",
                    content: vec![part],
                }
            }
            Some(Open::Call {
                id,
                call_id,
                name,
                arguments,
                ..
            }) => {
                self.emit(EventBody::ArgumentsDone {
                    item_id: id.clone(),
                    output_index,
                    name: name.clone(),
                    arguments: arguments.clone(),
                });
                OutputItem::FunctionCall {
                    id,
                    call_id,
                    name,
                    arguments,
                    status: Status::Completed,
                }
            }
        };
        self.emit(EventBody::ItemDone {
            output_index,
            item: item.clone(),
        });
        self.response.output.push(item);
    }

    /// The chat stream ended normally (`[DONE]`).
    pub fn finish(&mut self) -> (Vec<StreamEvent>, ResponseObject) {
        self.close();
        let (reason, usage) = (self.finish_reason.take(), self.usage.take());
        self.response.finish(reason.as_deref(), usage);
        let response = self.response.clone();
        if response.status == Status::Incomplete {
            self.emit(EventBody::Incomplete {
                response: response.clone(),
            });
        } else {
            self.emit(EventBody::Completed {
                response: response.clone(),
            });
        }
        (self.drain(), response)
    }

    /// The chat stream ended with an error event (or broke).
    pub fn fail(&mut self, code: &str, message: &str) -> (Vec<StreamEvent>, ResponseObject) {
        self.close();
        self.response.status = Status::Failed;
        self.response.usage = self.usage.take();
        self.response.error = Some(ResponseError {
            code: code.to_string(),
            message: message.to_string(),
        });
        let response = self.response.clone();
        self.emit(EventBody::Failed {
            response: response.clone(),
        });
        (self.drain(), response)
    }
}
