//! The tools' description in the prompt, where and as each model family's
//! own template puts it (llama.cpp applies templates to roles and texts
//! only, so tools passed to a template would never reach the model).

use super::ToolDef;
use herd_engines::{ChatMessage, ToolFormat};
use serde::Serialize;
use serde_json::{json, Value};

pub fn add(messages: &mut Vec<ChatMessage>, tools: &[ToolDef], format: ToolFormat) {
    match format {
        ToolFormat::Hermes => {
            let system = system(messages);
            system.content = join(&system.content, &hermes(tools));
        }
        // Llama 3.1's template: the system turn says the tool environment is
        // on, and the first user turn lists the functions before its text.
        ToolFormat::Llama3 => {
            let user = first_user(messages);
            user.content = join(&llama3(tools), &user.content);
            let system = system(messages);
            system.content = join("Environment: ipython", &system.content);
        }
    }
}

/// The first message if it is the system's, else a new first message.
fn system(messages: &mut Vec<ChatMessage>) -> &mut ChatMessage {
    if messages.first().is_none_or(|m| m.role != "system") {
        messages.insert(0, message("system"));
    }
    &mut messages[0]
}

/// The first user message, else a new one after the system's.
fn first_user(messages: &mut Vec<ChatMessage>) -> &mut ChatMessage {
    let at = match messages.iter().position(|m| m.role == "user") {
        Some(at) => at,
        None => {
            let at = messages.iter().take_while(|m| m.role == "system").count();
            messages.insert(at, message("user"));
            at
        }
    };
    &mut messages[at]
}

fn message(role: &str) -> ChatMessage {
    ChatMessage {
        role: role.into(),
        content: String::new(),
    }
}

/// Two texts a blank line apart (just one if the other is empty).
fn join(first: &str, second: &str) -> String {
    match (first.is_empty(), second.is_empty()) {
        (_, true) => first.to_string(),
        (true, false) => second.to_string(),
        (false, false) => format!("{first}\n\n{second}"),
    }
}

/// Hermes/Qwen: the tools' signatures inside `<tools></tools>`, and how to call them.
fn hermes(tools: &[ToolDef]) -> String {
    let mut text = String::from(
        "# Tools\n\nYou may call one or more of these functions to help with the user's request. \
         Their signatures are inside <tools></tools>:\n<tools>\n",
    );
    for tool in tools {
        let tool = json!({"type": "function", "function": {
            "name": tool.name, "description": tool.description, "parameters": tool.parameters}});
        text.push_str(&tool.to_string());
        text.push('\n');
    }
    text.push_str(
        "</tools>\n\nTo call a function, answer with a JSON object holding its name and arguments inside <tool_call></tool_call>, one block per call:\n\
         <tool_call>\n{\"name\": <function-name>, \"arguments\": <arguments-json-object>}\n</tool_call>",
    );
    text
}

/// Llama 3.1's words, and each tool as its template's `tojson(indent=4)`
/// writes it (the missing space after "value}." is the template's).
fn llama3(tools: &[ToolDef]) -> String {
    let mut text = String::from(
        "Given the following functions, please respond with a JSON for a function call \
         with its proper arguments that best answers the given prompt.\n\n\
         Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.\
         Do not use variables.",
    );
    for tool in tools {
        let mut function = json!({"name": tool.name});
        if let Some(d) = &tool.description {
            function["description"] = json!(d);
        }
        if let Some(p) = &tool.parameters {
            function["parameters"] = p.clone();
        }
        text.push_str("\n\n");
        text.push_str(&indented(
            &json!({"type": "function", "function": function}),
        ));
    }
    text
}

/// JSON with 4-space indents, as Python's `json.dumps(indent=4)`.
fn indented(value: &Value) -> String {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    match value.serialize(&mut serializer) {
        Ok(()) => String::from_utf8(out).unwrap_or_default(),
        // A `Value` always serializes; keep the compact form if it ever does not.
        Err(_) => value.to_string(),
    }
}
