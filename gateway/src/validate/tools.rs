//! The edge for tools and structured output: `tools`, `tool_choice`,
//! `parallel_tool_calls` and `response_format` become the grammar the output
//! must match, the tools' description in the prompt, and whether the answer
//! is read back for tool calls. Tool calls and results in the history are
//! rendered as text here, since llama.cpp applies chat templates to roles
//! and contents only.

use crate::grammar::tools::{self as tool_grammar, Choice, ToolSchema};
use crate::grammar::{json_object, schema};
use crate::openai::tools::{ResponseFormat, Tool, ToolCallIn, ToolChoice};
use crate::openai::ApiError;
use herd_engines::{ChatMessage, Grammar};
use serde_json::Value;
use std::collections::HashSet;

/// What the answer must look like, and how it is read back.
#[derive(Debug, Default)]
pub struct Output {
    pub grammar: Option<Grammar>,
    /// The answer holds `<tool_call>` blocks to return as `tool_calls`.
    pub tool_calls: bool,
    /// The tools' description, for the system prompt.
    pub tools_prompt: Option<String>,
}

/// The request's output fields, as sent.
pub struct OutputFields {
    pub tools: Option<Vec<Tool>>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<ResponseFormat>,
}

pub fn output(fields: OutputFields) -> Result<Output, ApiError> {
    let tools = tools(fields.tools.unwrap_or_default())?;
    let choice = choice(fields.tool_choice, &tools)?;
    let format = response_format(fields.response_format)?;
    let Some(choice) = choice else {
        return Ok(Output {
            grammar: format,
            ..Output::default()
        });
    };
    if format.is_some() {
        return Err(ApiError::invalid(
            "response_format",
            "`response_format` json_object/json_schema cannot be combined with `tools` (unless `tool_choice` is \"none\"); ask for one or the other",
        ));
    }
    let schemas: Vec<ToolSchema> = tools
        .iter()
        .map(|(name, _, parameters)| ToolSchema {
            name,
            parameters: parameters.as_ref(),
        })
        .collect();
    let parallel = fields.parallel_tool_calls.unwrap_or(true);
    let grammar = tool_grammar::grammar(&schemas, &choice, parallel).map_err(|(i, e)| {
        ApiError::invalid(
            "tools",
            format!("`tools[{i}].function.parameters`: {}", e.message),
        )
    })?;
    Ok(Output {
        grammar: Some(grammar),
        tool_calls: true,
        tools_prompt: Some(prompt(&tools)),
    })
}

type ValidTool = (String, Option<String>, Option<Value>);

fn tools(tools: Vec<Tool>) -> Result<Vec<ValidTool>, ApiError> {
    let mut seen = HashSet::new();
    let mut valid = Vec::with_capacity(tools.len());
    for (i, tool) in tools.into_iter().enumerate() {
        let bad = |m: String| ApiError::invalid("tools", format!("`tools[{i}]`: {m}"));
        if tool.kind != "function" {
            return Err(bad(format!(
                "`type` must be \"function\", got {:?}",
                tool.kind
            )));
        }
        let Some(f) = tool.function else {
            return Err(bad("`function` is required".into()));
        };
        let name_ok = !f.name.is_empty()
            && f.name.len() <= 64
            && f.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name_ok {
            return Err(bad(format!(
                "`function.name` must be 1 to 64 letters, digits, _ or -, got {:?}",
                f.name
            )));
        }
        if !seen.insert(f.name.clone()) {
            return Err(bad(format!("the function name {:?} is used twice", f.name)));
        }
        valid.push((f.name, f.description, f.parameters));
    }
    Ok(valid)
}

/// `None`: no tool may be called (no tools, or `none`).
fn choice(choice: Option<ToolChoice>, tools: &[ValidTool]) -> Result<Option<Choice>, ApiError> {
    let bad = |m: String| Err(ApiError::invalid("tool_choice", m));
    let choice = match choice {
        None if tools.is_empty() => return Ok(None),
        None => Choice::Auto,
        Some(ToolChoice::Mode(mode)) => match mode.as_str() {
            "none" => return Ok(None),
            "auto" => Choice::Auto,
            "required" => Choice::Required,
            other => return bad(format!("`tool_choice` must be \"none\", \"auto\", \"required\" or a named function, got {other:?}")),
        },
        Some(ToolChoice::Named { kind, function }) => {
            if kind != "function" {
                return bad(format!("`tool_choice.type` must be \"function\", got {kind:?}"));
            }
            if !tools.iter().any(|(name, _, _)| *name == function.name) {
                return bad(format!("`tool_choice` names {:?}, which is not in `tools`", function.name));
            }
            Choice::Named(function.name)
        }
    };
    match (tools.is_empty(), choice) {
        (true, Choice::Auto) => Ok(None),
        (true, _) => bad("`tool_choice` \"required\" or a named function needs `tools`".into()),
        (false, choice) => Ok(Some(choice)),
    }
}

fn response_format(format: Option<ResponseFormat>) -> Result<Option<Grammar>, ApiError> {
    let Some(format) = format else {
        return Ok(None);
    };
    match format.kind.as_str() {
        "text" => Ok(None),
        "json_object" => Ok(Some(json_object())),
        "json_schema" => {
            let schema = format.json_schema.and_then(|s| s.schema).ok_or_else(|| {
                ApiError::invalid(
                    "response_format",
                    "`response_format.json_schema.schema` is required for type \"json_schema\"",
                )
            })?;
            schema::grammar(&schema).map(Some).map_err(|e| {
                ApiError::invalid(
                    "response_format",
                    format!("`response_format.json_schema.schema`: {}", e.message),
                )
            })
        }
        other => Err(ApiError::invalid(
            "response_format",
            format!("`response_format.type` must be \"text\", \"json_object\" or \"json_schema\", got {other:?}"),
        )),
    }
}

/// The tools and how to call them, for the system prompt.
fn prompt(tools: &[ValidTool]) -> String {
    let mut text = String::from(
        "# Tools\n\nYou may call one or more of these functions to help with the user's request. \
         Their signatures are inside <tools></tools>:\n<tools>\n",
    );
    for (name, description, parameters) in tools {
        let tool = serde_json::json!({"type": "function", "function": {
            "name": name, "description": description, "parameters": parameters}});
        text.push_str(&tool.to_string());
        text.push('\n');
    }
    text.push_str(
        "</tools>\n\nTo call a function, answer with a JSON object holding its name and arguments inside <tool_call></tool_call>, one block per call:\n\
         <tool_call>\n{\"name\": <function-name>, \"arguments\": <arguments-json-object>}\n</tool_call>",
    );
    text
}

/// Puts the tools' description in the system prompt (the first message if
/// it is the system's, else a new first message).
pub fn add_tools_prompt(messages: &mut Vec<ChatMessage>, tools_prompt: String) {
    match messages.first_mut() {
        Some(first) if first.role == "system" => {
            first.content = format!("{}\n\n{tools_prompt}", first.content);
        }
        _ => messages.insert(
            0,
            ChatMessage {
                role: "system".into(),
                content: tools_prompt,
            },
        ),
    }
}

/// An assistant turn's calls as the model writes them, after its content.
pub fn render_calls(content: &mut String, calls: &[ToolCallIn]) {
    for call in calls {
        // Arguments are JSON text, kept as written (so the prompt matches what
        // the model wrote and its cached KV is reused); anything else becomes a JSON string.
        let raw = call.function.arguments.trim();
        let arguments = match serde_json::from_str::<Value>(raw) {
            Ok(_) => raw.to_string(),
            Err(_) => Value::String(raw.to_string()).to_string(),
        };
        let name = Value::String(call.function.name.clone());
        if !content.is_empty() {
            content.push('\n');
        }
        content.push_str(&format!(
            "<tool_call>\n{{\"name\": {name}, \"arguments\": {arguments}}}\n</tool_call>"
        ));
    }
}

/// A tool's result as the model reads it: a user turn, as Hermes and Qwen templates render it.
pub fn render_result(content: &str) -> String {
    format!("<tool_response>\n{content}\n</tool_response>")
}
