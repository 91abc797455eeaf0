use super::*;
use crate::grammar::tools::{compile, Choice, ToolSchema};
use serde_json::json;

fn turn(role: Role, content: &str) -> Turn {
    Turn {
        role,
        content: content.into(),
        calls: Vec::new(),
    }
}

fn history() -> Vec<Turn> {
    vec![
        turn(Role::System, "Be brief."),
        turn(Role::User, "Weather in Paris?"),
        Turn {
            role: Role::Assistant,
            content: String::new(),
            calls: vec![
                CallText {
                    name: "get_weather".into(),
                    arguments: r#"{"city": "Paris"}"#.into(),
                },
                CallText {
                    name: "now".into(),
                    arguments: "{}".into(),
                },
            ],
        },
        turn(Role::Tool, "sunny"),
    ]
}

fn tools() -> Tools {
    let parameters = json!({"type": "object", "properties": {"city": {"type": "string"}}});
    let schemas = [ToolSchema {
        name: "get_weather",
        parameters: Some(&parameters),
    }];
    let grammar = compile(&schemas, Choice::Required, true);
    let Ok(grammar) = grammar else {
        unreachable!("the schema converts")
    };
    Tools {
        defs: vec![ToolDef {
            name: "get_weather".into(),
            description: Some("Weather now".into()),
            parameters: Some(parameters),
        }],
        grammar,
    }
}

fn pairs(r: &Rendered) -> Vec<(&str, &str)> {
    r.messages
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect()
}

#[test]
fn hermes_history_has_tool_call_blocks_and_results_as_user_turns() {
    let chat = Chat {
        turns: history(),
        tools: None,
    };
    let r = chat.render(ToolFormat::Hermes);
    assert_eq!(
        pairs(&r),
        vec![
            ("system", "Be brief."),
            ("user", "Weather in Paris?"),
            ("assistant", "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>"),
            ("user", "<tool_response>\nsunny\n</tool_response>"),
        ]
    );
    assert_eq!(r.grammar, None);
}

#[test]
fn llama3_history_has_json_calls_and_results_in_the_ipython_role() {
    let chat = Chat {
        turns: history(),
        tools: None,
    };
    let r = chat.render(ToolFormat::Llama3);
    assert_eq!(
        pairs(&r),
        vec![
            ("system", "Be brief."),
            ("user", "Weather in Paris?"),
            (
                "assistant",
                r#"{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "now", "parameters": {}}"#
            ),
            ("ipython", "sunny"),
        ]
    );
}

#[test]
fn content_comes_before_the_calls() {
    let mut turns = history();
    turns[2].content = "Let me look.".into();
    turns[2].calls.truncate(1);
    let chat = Chat { turns, tools: None };
    let r = chat.render(ToolFormat::Llama3);
    assert_eq!(
        r.messages[2].content,
        "Let me look.\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}"
    );
}

#[test]
fn hermes_tools_go_at_the_end_of_the_system_prompt() {
    let chat = Chat {
        turns: history(),
        tools: Some(tools()),
    };
    let r = chat.render(ToolFormat::Hermes);
    let system = &r.messages[0].content;
    assert!(system.starts_with("Be brief.\n\n# Tools\n"), "{system}");
    assert!(
        system.contains(r#"{"type":"function","function":{"name":"get_weather","description":"Weather now","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}"#),
        "{system}"
    );
    assert_eq!(r.messages[1].content, "Weather in Paris?");
    let gbnf = r.grammar.map(|g| g.gbnf).unwrap_or_default();
    assert!(gbnf.contains("<tool_call>"), "{gbnf}");
}

#[test]
fn llama3_tools_go_before_the_first_user_message_as_its_template_puts_them() {
    let chat = Chat {
        turns: history(),
        tools: Some(tools()),
    };
    let r = chat.render(ToolFormat::Llama3);
    assert_eq!(r.messages[0].content, "Environment: ipython\n\nBe brief.");
    let expected = "Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\n\
        Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.Do not use variables.\n\n\
        {\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": \"get_weather\",\n        \"description\": \"Weather now\",\n        \
        \"parameters\": {\n            \"type\": \"object\",\n            \"properties\": {\n                \"city\": {\n                    \"type\": \"string\"\n                }\n            }\n        }\n    }\n}\n\n\
        Weather in Paris?";
    assert_eq!(r.messages[1].content, expected);
    assert_eq!(r.messages.len(), 4);
    let gbnf = r.grammar.map(|g| g.gbnf).unwrap_or_default();
    assert!(gbnf.contains("\\\"parameters\\\": "), "{gbnf}");
}

#[test]
fn llama3_tools_get_their_own_turns_when_there_is_no_system_or_user_message() {
    let chat = Chat {
        turns: vec![turn(Role::Assistant, "Hello.")],
        tools: Some(tools()),
    };
    let r = chat.render(ToolFormat::Llama3);
    let roles: Vec<&str> = r.messages.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant"]);
    assert_eq!(r.messages[0].content, "Environment: ipython");
    assert!(r.messages[1]
        .content
        .starts_with("Given the following functions"));
    assert!(
        r.messages[1].content.ends_with("}\n}"),
        "{}",
        r.messages[1].content
    );
}
