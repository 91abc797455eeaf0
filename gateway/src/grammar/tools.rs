//! The grammar of tool calls: `<tool_call>` blocks whose `name` is one of the
//! tools and whose `arguments` match that tool's parameter schema.

use super::schema::{convert_into, SchemaError};
use super::{literal, Rules};
use herd_engines::Grammar;
use serde_json::Value;

/// What the model may answer, from `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Text, or calls: the first character decides.
    Auto,
    /// One call or more.
    Required,
    /// Exactly one call of this function.
    Named(String),
}

/// A tool as the grammar sees it.
pub struct ToolSchema<'a> {
    pub name: &'a str,
    pub parameters: Option<&'a Value>,
}

/// `Err((i, e))`: the parameters of `tools[i]` cannot be enforced.
pub fn grammar(
    tools: &[ToolSchema],
    choice: &Choice,
    parallel: bool,
) -> Result<Grammar, (usize, SchemaError)> {
    let mut rules = Rules::default();
    let mut calls = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        if let Choice::Named(name) = choice {
            if name != tool.name {
                continue;
            }
        }
        let arguments = match tool.parameters {
            Some(schema) => convert_into(schema, &format!("{}-args", tool.name), &mut rules)
                .map_err(|e| (i, e))?,
            None => r#"("{" ws "}")"#.to_string(),
        };
        let name = serde_json::to_string(tool.name).unwrap_or_default();
        let head = format!("<tool_call>\n{{\"name\": {name}, \"arguments\": ");
        let body = format!(
            "{} {arguments} {}",
            literal(&head),
            literal("}\n</tool_call>")
        );
        calls.push(rules.add(&format!("call-{}", tool.name), body));
    }
    let call = rules.add("tool-call", calls.join(" | "));
    let calls = if parallel && !matches!(choice, Choice::Named(_)) {
        rules.add("tool-calls", format!(r#"{call} ("\n" {call})*"#))
    } else {
        call
    };
    let root = match choice {
        Choice::Required | Choice::Named(_) => calls,
        // Text may not open like a call (nor with whitespace, which would let
        // the model postpone the choice): the first character decides.
        Choice::Auto => {
            let text = rules.add("text", r#"[^<\x00-\x20] [^\x00]*"#.to_string());
            format!("({calls} | {text})")
        }
    };
    Ok(rules.grammar(&root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools(params: &Value) -> Vec<ToolSchema<'_>> {
        vec![
            ToolSchema {
                name: "get_weather",
                parameters: Some(params),
            },
            ToolSchema {
                name: "now",
                parameters: None,
            },
        ]
    }

    #[test]
    fn a_named_choice_allows_only_that_function_once() {
        let params = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
        let g = grammar(&tools(&params), &Choice::Named("now".into()), true)
            .map(|g| g.gbnf)
            .unwrap_or_default();
        assert!(g.starts_with("root ::= tool-call\n"), "{g}");
        assert!(
            g.contains(r#""\"now\"""#) || g.contains(r#"\"name\": \"now\""#),
            "{g}"
        );
        assert!(!g.contains("get_weather"), "{g}");
        assert!(!g.contains("tool-calls"), "{g}");
    }

    #[test]
    fn required_allows_several_calls_when_parallel() {
        let params = json!({"type": "object"});
        let g = grammar(&tools(&params), &Choice::Required, true)
            .map(|g| g.gbnf)
            .unwrap_or_default();
        assert!(g.starts_with("root ::= tool-calls\n"), "{g}");
        let g = grammar(&tools(&params), &Choice::Required, false)
            .map(|g| g.gbnf)
            .unwrap_or_default();
        assert!(g.starts_with("root ::= tool-call\n"), "{g}");
    }

    #[test]
    fn auto_allows_text_that_does_not_open_like_a_call() {
        let params = json!({"type": "object"});
        let g = grammar(&tools(&params), &Choice::Auto, false)
            .map(|g| g.gbnf)
            .unwrap_or_default();
        assert!(g.starts_with("root ::= (tool-call | text)\n"), "{g}");
    }

    #[test]
    fn a_tool_whose_schema_cannot_be_enforced_is_named_by_index() {
        let bad =
            json!({"type": "object", "properties": {"when": {"type": "string", "format": "date"}}});
        let result = grammar(&tools(&bad), &Choice::Auto, false);
        assert!(result.is_err(), "expected a refusal");
        let (i, e) = result.err().unwrap_or((
            9,
            SchemaError {
                message: String::new(),
            },
        ));
        assert_eq!(i, 0);
        assert!(e.message.contains("`format`"), "{}", e.message);
    }
}
