//! The grammar of tool calls: calls whose `name` is one of the tools and
//! whose arguments match that tool's parameter schema, written in the tool
//! format of the model that answers. The schemas are converted at the edge
//! ([`compile`]: one that cannot be enforced is a 400 there); the calls'
//! syntax is added once the answering model is known ([`ToolGrammar::grammar`]).

use super::schema::{convert_into, SchemaError};
use super::{literal, Rules};
use crate::chat::syntax::ToolSyntax;
use herd_engines::{Grammar, ToolFormat};
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

/// The tools' argument rules, ready to be wrapped in any format's call syntax.
#[derive(Debug, Clone)]
pub struct ToolGrammar {
    rules: Rules,
    /// Each callable tool's name and the rule (or expression) of its arguments.
    calls: Vec<(String, String)>,
    choice: Choice,
    parallel: bool,
}

/// `Err((i, e))`: the parameters of `tools[i]` cannot be enforced.
pub fn compile(
    tools: &[ToolSchema],
    choice: Choice,
    parallel: bool,
) -> Result<ToolGrammar, (usize, SchemaError)> {
    let mut rules = Rules::default();
    let mut calls = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        if let Choice::Named(name) = &choice {
            if name != tool.name {
                continue;
            }
        }
        let arguments = match tool.parameters {
            Some(schema) => convert_into(schema, &format!("{}-args", tool.name), &mut rules)
                .map_err(|e| (i, e))?,
            None => r#"("{" ws "}")"#.to_string(),
        };
        calls.push((tool.name.to_string(), arguments));
    }
    // A named choice is one call.
    let parallel = parallel && !matches!(choice, Choice::Named(_));
    Ok(ToolGrammar {
        rules,
        calls,
        choice,
        parallel,
    })
}

impl ToolGrammar {
    pub fn choice(&self) -> &Choice {
        &self.choice
    }

    /// Whether more than one call may be made.
    pub fn parallel(&self) -> bool {
        self.parallel
    }

    /// The grammar for a model that writes calls in `format`.
    pub fn grammar(&self, format: ToolFormat) -> Grammar {
        let syntax = ToolSyntax::of(format);
        let mut rules = self.rules.clone();
        let mut calls = Vec::with_capacity(self.calls.len());
        for (name, arguments) in &self.calls {
            let (head, tail) = (literal(&syntax.head(name)), literal(&syntax.tail()));
            calls.push(rules.add(
                &format!("call-{name}"),
                format!("{head} {arguments} {tail}"),
            ));
        }
        let call = rules.add("tool-call", calls.join(" | "));
        let mut calls = if self.parallel {
            let separator = literal(syntax.separator);
            rules.add("tool-calls", format!("{call} ({separator} {call})*"))
        } else {
            call
        };
        if let Some(lead) = syntax.lead {
            calls = format!("{}? {calls}", literal(lead));
        }
        let root = match self.choice {
            Choice::Required | Choice::Named(_) => calls,
            // Text may not open like a call (nor with whitespace, which would let
            // the model postpone the choice): the first character decides.
            Choice::Auto => {
                let first = syntax.not_first;
                let text = rules.add("text", format!(r#"[^{first}\x00-\x20] [^\x00]*"#));
                format!("({calls} | {text})")
            }
        };
        rules.grammar(&root)
    }
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

    fn gbnf(params: &Value, choice: Choice, parallel: bool, format: ToolFormat) -> String {
        compile(&tools(params), choice, parallel)
            .map(|g| g.grammar(format).gbnf)
            .unwrap_or_default()
    }

    #[test]
    fn a_named_choice_allows_only_that_function_once() {
        let params = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
        let named = || Choice::Named("now".into());
        let g = gbnf(&params, named(), true, ToolFormat::Hermes);
        assert!(g.starts_with("root ::= tool-call\n"), "{g}");
        assert!(
            g.contains(r#""<tool_call>\n{\"name\": \"now\", \"arguments\": " ("{" ws "}") "}\n</tool_call>""#),
            "{g}"
        );
        assert!(!g.contains("get_weather"), "{g}");
        assert!(!g.contains("tool-calls"), "{g}");
        let g = gbnf(&params, named(), true, ToolFormat::Llama3);
        assert!(
            g.starts_with("root ::= \"<|python_tag|>\"? tool-call\n"),
            "{g}"
        );
        assert!(
            g.contains(r#""{\"name\": \"now\", \"parameters\": " ("{" ws "}") "}""#),
            "{g}"
        );
        assert!(
            !g.contains("get_weather") && !g.contains("tool_call>"),
            "{g}"
        );
    }

    #[test]
    fn required_allows_several_calls_when_parallel() {
        let params = json!({"type": "object"});
        let g = gbnf(&params, Choice::Required, true, ToolFormat::Hermes);
        assert!(g.starts_with("root ::= tool-calls\n"), "{g}");
        assert!(
            g.contains("tool-calls ::= tool-call (\"\\n\" tool-call)*"),
            "{g}"
        );
        let g = gbnf(&params, Choice::Required, false, ToolFormat::Hermes);
        assert!(g.starts_with("root ::= tool-call\n"), "{g}");
        let g = gbnf(&params, Choice::Required, true, ToolFormat::Llama3);
        assert!(
            g.starts_with("root ::= \"<|python_tag|>\"? tool-calls\n"),
            "{g}"
        );
        assert!(
            g.contains("tool-calls ::= tool-call (\"; \" tool-call)*"),
            "{g}"
        );
        assert!(
            g.contains("tool-call ::= call-get-weather | call-now"),
            "{g}"
        );
    }

    #[test]
    fn auto_allows_text_that_does_not_open_like_a_call() {
        let params = json!({"type": "object"});
        let g = gbnf(&params, Choice::Auto, false, ToolFormat::Hermes);
        assert!(g.starts_with("root ::= (tool-call | text)\n"), "{g}");
        assert!(g.contains(r#"text ::= [^<\x00-\x20] [^\x00]*"#), "{g}");
        let g = gbnf(&params, Choice::Auto, false, ToolFormat::Llama3);
        assert!(
            g.starts_with("root ::= (\"<|python_tag|>\"? tool-call | text)\n"),
            "{g}"
        );
        assert!(g.contains(r#"text ::= [^{<\x00-\x20] [^\x00]*"#), "{g}");
    }

    #[test]
    fn the_arguments_rules_are_shared_by_every_format() {
        let params = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
        let compiled = compile(&tools(&params), Choice::Auto, true);
        let Ok(compiled) = compiled else {
            unreachable!("the schema converts")
        };
        let hermes = compiled.grammar(ToolFormat::Hermes).gbnf;
        let llama = compiled.grammar(ToolFormat::Llama3).gbnf;
        let args = |g: &str| {
            g.lines()
                .filter(|l| l.starts_with("get-weather-args"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert!(!args(&hermes).is_empty(), "{hermes}");
        assert_eq!(args(&hermes), args(&llama));
        assert!(compiled.parallel() && *compiled.choice() == Choice::Auto);
    }

    #[test]
    fn a_tool_whose_schema_cannot_be_enforced_is_named_by_index() {
        let bad =
            json!({"type": "object", "properties": {"when": {"type": "string", "format": "date"}}});
        let result = compile(&tools(&bad), Choice::Auto, false);
        let Err((i, e)) = result else {
            unreachable!("expected a refusal")
        };
        assert_eq!(i, 0);
        assert!(e.message.contains("`format`"), "{}", e.message);
    }
}
