//! The edge for tools and structured output: `tools`, `tool_choice`,
//! `parallel_tool_calls` and `response_format` become the tools on offer
//! (their schemas converted to grammar rules here, so one that cannot be
//! enforced is a 400) or the grammar of the JSON answer. How calls look is
//! decided later, by the answering model's tool format (`chat`).

use crate::chat::{CallText, ToolDef, Tools};
use crate::grammar::tools::{self as tool_grammar, Choice, ToolSchema};
use crate::grammar::{json_object, schema};
use crate::openai::tools::{ResponseFormat, Tool, ToolCallIn, ToolChoice};
use crate::openai::ApiError;
use herd_engines::Grammar;
use serde_json::Value;
use std::collections::HashSet;

/// What the answer must look like.
#[derive(Debug, Default)]
pub struct Output {
    /// A JSON answer's grammar (`response_format`).
    pub grammar: Option<Grammar>,
    /// The tools the model may call (then `grammar` is `None`).
    pub tools: Option<Tools>,
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
        .map(|t| ToolSchema {
            name: &t.name,
            parameters: t.parameters.as_ref(),
        })
        .collect();
    let parallel = fields.parallel_tool_calls.unwrap_or(true);
    let grammar = tool_grammar::compile(&schemas, choice, parallel).map_err(|(i, e)| {
        ApiError::invalid(
            "tools",
            format!("`tools[{i}].function.parameters`: {}", e.message),
        )
    })?;
    Ok(Output {
        grammar: None,
        tools: Some(Tools {
            defs: tools,
            grammar,
        }),
    })
}

fn tools(tools: Vec<Tool>) -> Result<Vec<ToolDef>, ApiError> {
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
        valid.push(ToolDef {
            name: f.name,
            description: f.description,
            parameters: f.parameters,
        });
    }
    Ok(valid)
}

/// `None`: no tool may be called (no tools, or `none`).
fn choice(choice: Option<ToolChoice>, tools: &[ToolDef]) -> Result<Option<Choice>, ApiError> {
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
            if !tools.iter().any(|t| t.name == function.name) {
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

/// An assistant turn's calls, their arguments JSON text: kept as written (so
/// the prompt matches what the model wrote and its cached KV is reused);
/// anything else becomes a JSON string.
pub fn calls(calls: Vec<ToolCallIn>) -> Vec<CallText> {
    calls
        .into_iter()
        .map(|call| {
            let raw = call.function.arguments.trim();
            let arguments = match serde_json::from_str::<Value>(raw) {
                Ok(_) => raw.to_string(),
                Err(_) => Value::String(raw.to_string()).to_string(),
            };
            CallText {
                name: call.function.name,
                arguments,
            }
        })
        .collect()
}
