use super::*;

/// Feeds `text` in pieces of `step` characters and joins what comes out per call.
fn run(text: &str, step: usize) -> (String, Vec<(String, String)>, bool) {
    let mut parser = ToolCallParser::default();
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
    let mut parser = ToolCallParser::default();
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
    let (content, calls) = split(TWO);
    assert_eq!(content, None);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].function.name, "now");
    assert_ne!(calls[0].id, calls[1].id);
    let (content, calls) = split("just text");
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
