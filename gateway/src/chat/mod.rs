//! A chat as validated at the edge, neutral as to how a model writes tool
//! calls: its turns (with the calls and results of earlier rounds) and the
//! tools on offer. Once the answering model and so its tool format is known
//! (`generate/local.rs`; an upstream gets the client's body instead),
//! [`Chat::render`] writes it out in that format: the messages llama.cpp's
//! template gets (it renders roles and texts only) and the grammar calls
//! must match.

mod describe;
pub mod syntax;

use crate::grammar::tools::ToolGrammar;
use herd_engines::{ChatMessage, Grammar, ToolFormat};
use serde_json::Value;
use syntax::ToolSyntax;

#[derive(Debug, Clone)]
pub struct Chat {
    pub turns: Vec<Turn>,
    /// `None`: no tool may be called (none offered, or `tool_choice: "none"`).
    pub tools: Option<Tools>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub role: Role,
    pub content: String,
    /// An assistant turn's calls, written after its content.
    pub calls: Vec<CallText>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// A tool's result.
    Tool,
}

/// A call of the history.
#[derive(Debug, Clone, PartialEq)]
pub struct CallText {
    pub name: String,
    /// JSON text: as the client sent it when it parses (so the prompt matches
    /// what the model wrote and its cached KV is reused), else a JSON string.
    pub arguments: String,
}

/// The tools on offer: their description for the prompt, and their calls' grammar.
#[derive(Debug, Clone)]
pub struct Tools {
    pub defs: Vec<ToolDef>,
    pub grammar: ToolGrammar,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolDef {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Option<Value>,
}

/// A chat as one model reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub messages: Vec<ChatMessage>,
    /// What calls must look like (`None` when no tool may be called).
    pub grammar: Option<Grammar>,
}

impl Chat {
    /// The chat for a model that writes tool calls in `format`.
    pub fn render(&self, format: ToolFormat) -> Rendered {
        let syntax = ToolSyntax::of(format);
        let mut messages: Vec<ChatMessage> =
            self.turns.iter().map(|t| message(t, &syntax)).collect();
        if let Some(tools) = &self.tools {
            describe::add(&mut messages, &tools.defs, format);
        }
        Rendered {
            messages,
            grammar: self.tools.as_ref().map(|t| t.grammar.grammar(format)),
        }
    }
}

fn message(turn: &Turn, syntax: &ToolSyntax) -> ChatMessage {
    let (role, content) = match turn.role {
        Role::System => ("system", turn.content.clone()),
        Role::User => ("user", turn.content.clone()),
        Role::Assistant => {
            let calls: Vec<String> = turn
                .calls
                .iter()
                .map(|c| syntax.call(&c.name, &c.arguments))
                .collect();
            let calls = calls.join(syntax.separator);
            let content = match (turn.content.is_empty(), calls.is_empty()) {
                (_, true) => turn.content.clone(),
                (true, false) => calls,
                (false, false) => format!("{}\n{calls}", turn.content),
            };
            ("assistant", content)
        }
        Role::Tool => (
            syntax.result_role,
            format!(
                "{}{}{}",
                syntax.result_open, turn.content, syntax.result_close
            ),
        ),
    };
    ChatMessage {
        role: role.to_string(),
        content,
    }
}

#[cfg(test)]
mod tests;
