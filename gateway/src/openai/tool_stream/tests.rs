use super::*;

/// Feeds `text` in pieces of `step` characters and joins what comes out per call.
fn run(text: &str, step: usize) -> (String, Vec<(String, String)>, bool) {
    run_as(ToolFormat::Hermes, text, step)
}

fn run_as(format: ToolFormat, text: &str, step: usize) -> (String, Vec<(String, String)>, bool) {
    let mut parser = ToolCallParser::new(format);
    let chars: Vec<char> = text.chars().collect();
    let mut pieces = Vec::new();
    for chunk in chars.chunks(step) {
        pieces.extend(parser.push(&chunk.iter().collect::<String>()));
    }
    pieces.extend(parser.finish());
    let mut content = String::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    for p in pieces {
        match p {
            Piece::Content(s) => content.push_str(&s),
            Piece::Call { index, id, name } => {
                assert_eq!(index as usize, calls.len(), "indexes count from 0");
                assert!(id.starts_with("call_"));
                calls.push((name, String::new()));
            }
            Piece::Arguments { index, fragment } => calls[index as usize].1.push_str(&fragment),
        }
    }
    (content, calls, parser.called())
}

const TWO: &str = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris \\\"}\", \"days\": [1, {\"x\": 2}]}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>";

#[test]
fn calls_are_read_whatever_the_chunking() {
    for step in [1, 2, 3, 7, 1000] {
        let (content, calls, called) = run(TWO, step);
        assert_eq!(content, "", "step {step}");
        assert!(called);
        assert_eq!(
            calls,
            vec![
                (
                    "get_weather".to_string(),
                    r#"{"city": "Paris \"}", "days": [1, {"x": 2}]}"#.to_string()
                ),
                ("now".to_string(), "{}".to_string()),
            ],
            "step {step}"
        );
    }
}

#[test]
fn arguments_stream_before_the_call_is_complete() {
    let mut parser = ToolCallParser::new(ToolFormat::Hermes);
    let first = parser.push("<tool_call>{\"name\": \"f\", \"arguments\": {\"a\"");
    assert!(matches!(&first[0], Piece::Call { name, index: 0, .. } if name == "f"));
    assert_eq!(
        first[1],
        Piece::Arguments {
            index: 0,
            fragment: "{\"a\"".into()
        }
    );
    assert_eq!(
        parser.push(": 1}"),
        vec![Piece::Arguments {
            index: 0,
            fragment: ": 1}".into()
        }]
    );
    assert!(parser.push("}</tool_call>").is_empty());
}

#[test]
fn plain_text_is_content_including_leading_whitespace() {
    for step in [1, 4, 100] {
        let (content, calls, called) = run("  Hello <b>there</b>", step);
        assert_eq!(content, "  Hello <b>there</b>");
        assert!(calls.is_empty() && !called);
    }
}

#[test]
fn a_tag_that_is_not_a_call_is_content() {
    let (content, calls, _) = run("<tool>not a call</tool>", 1);
    assert_eq!(content, "<tool>not a call</tool>");
    assert!(calls.is_empty());
    let (content, _, _) = run("<tool_call>{\"nom\": 1}", 3);
    assert_eq!(content, "<tool_call>{\"nom\": 1}");
}

#[test]
fn an_unfinished_header_at_the_end_is_content() {
    let (content, calls, called) = run("<tool_call>{\"na", 2);
    assert_eq!(content, "<tool_call>{\"na");
    assert!(calls.is_empty() && !called);
}

#[test]
fn split_gives_null_content_beside_calls() {
    let (content, calls) = split(TWO, ToolFormat::Hermes);
    assert_eq!(content, None);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].function.name, "now");
    assert_ne!(calls[0].id, calls[1].id);
    let (content, calls) = split("just text", ToolFormat::Hermes);
    assert_eq!(content.as_deref(), Some("just text"));
    assert!(calls.is_empty());
}

#[test]
fn deltas_name_the_call_once_then_carry_fragments() {
    let start = delta(Piece::Call {
        index: 0,
        id: "call_1".into(),
        name: "f".into(),
    });
    let json = serde_json::to_value(start.clone().map_err(|_| ())).unwrap_or_default();
    assert_eq!(
        json["Ok"],
        serde_json::json!({"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}})
    );
    let more = delta(Piece::Arguments {
        index: 0,
        fragment: "{}".into(),
    });
    let json = serde_json::to_value(more.map_err(|_| ())).unwrap_or_default();
    assert_eq!(
        json["Ok"],
        serde_json::json!({"index": 0, "function": {"arguments": "{}"}})
    );
    assert_eq!(delta(Piece::Content("x".into())), Err("x".to_string()));
}

const LLAMA_TWO: &str = "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris \\\"}\", \"days\": [1, {\"x\": 2}]}}; {\"name\": \"now\", \"parameters\": {}}";

#[test]
fn llama_calls_are_read_whatever_the_chunking() {
    let untagged = LLAMA_TWO.trim_start_matches("<|python_tag|>");
    let newlines = untagged.replace("; ", "\n");
    for text in [LLAMA_TWO, untagged, &newlines] {
        for step in [1, 2, 3, 7, 1000] {
            let (content, calls, called) = run_as(ToolFormat::Llama3, text, step);
            assert_eq!(content, "", "step {step}: {text}");
            assert!(called);
            assert_eq!(
                calls,
                vec![
                    (
                        "get_weather".to_string(),
                        r#"{"city": "Paris \"}", "days": [1, {"x": 2}]}"#.to_string()
                    ),
                    ("now".to_string(), "{}".to_string()),
                ],
                "step {step}: {text}"
            );
        }
    }
}

#[test]
fn llama_text_and_json_that_is_not_a_call_are_content() {
    for text in [
        "Sunny, {\"x\": 1}",
        "{\"answer\": 42}",
        "<|python_tag|>print(1)",
        "; {\"name\": \"f\", \"parameters\": {}}",
    ] {
        let (content, calls, called) = run_as(ToolFormat::Llama3, text, 2);
        assert_eq!(content, text);
        assert!(calls.is_empty() && !called, "{text}");
    }
    // One separator between calls; a second is where content starts.
    let (content, calls, _) = run_as(
        ToolFormat::Llama3,
        "{\"name\": \"f\", \"parameters\": {}};; then",
        1,
    );
    assert_eq!(calls.len(), 1);
    assert_eq!(content, "; then");
}

#[test]
fn each_format_reads_either_key_and_only_its_own_wrapping() {
    let hermes = "<tool_call>{\"name\": \"f\", \"parameters\": {\"a\": 1}}</tool_call>";
    let (_, calls, _) = run_as(ToolFormat::Hermes, hermes, 3);
    assert_eq!(calls, vec![("f".to_string(), r#"{"a": 1}"#.to_string())]);
    let (content, calls, _) = run_as(ToolFormat::Llama3, hermes, 3);
    assert!(calls.is_empty());
    assert_eq!(content, hermes);
    let llama = "{\"name\": \"f\", \"arguments\": {\"a\": 1}}";
    let (_, calls, _) = run_as(ToolFormat::Llama3, llama, 3);
    assert_eq!(calls, vec![("f".to_string(), r#"{"a": 1}"#.to_string())]);
    let (content, calls, _) = run_as(ToolFormat::Hermes, llama, 3);
    assert!(calls.is_empty());
    assert_eq!(content, llama);
}

#[test]
fn llama_split_gives_the_calls_of_a_whole_answer() {
    let (content, calls) = split(LLAMA_TWO, ToolFormat::Llama3);
    assert_eq!(content, None);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].function.name, "get_weather");
    assert_eq!(calls[1].function.arguments, "{}");
}
