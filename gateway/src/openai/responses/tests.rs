use super::events::{Converter, EventBody};
use super::object::{OutputItem, ResponseObject, Status};
use super::request::{translate, ResponsesRequest};
use super::store::ResponseStore;
use serde_json::{json, Value};

fn req(v: Value) -> ResponsesRequest {
    serde_json::from_value(v).unwrap()
}

#[test]
fn a_string_input_becomes_one_user_message_after_the_instructions() {
    let r = req(
        json!({"model": "m", "input": "hi", "instructions": "be brief",
        "max_output_tokens": 20, "temperature": 0.5, "stream": true}),
    );
    let t = translate(&r, Vec::new()).unwrap();
    assert_eq!(
        t.chat["messages"],
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    );
    assert_eq!(t.chat["max_tokens"], 20);
    assert_eq!(t.chat["temperature"], 0.5);
    assert_eq!(t.chat["stream_options"]["include_usage"], true);
    // Instructions do not carry over to a follow-up.
    assert_eq!(t.history, vec![json!({"role": "user", "content": "hi"})]);
    assert!(t.store);
}

#[test]
fn function_calls_join_one_assistant_message_and_outputs_become_tool_messages() {
    let r = req(json!({"model": "m", "input": [
        {"role": "developer", "content": [{"type": "input_text", "text": "sys"}]},
        {"type": "message", "role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{\"city\":\"A\"}"},
        {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{\"city\":\"B\"}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    ]}));
    let t = translate(&r, vec![json!({"role": "user", "content": "earlier"})]).unwrap();
    let m = t.chat["messages"].as_array().unwrap();
    assert_eq!(m.len(), 5);
    assert_eq!(m[0], json!({"role": "user", "content": "earlier"}));
    assert_eq!(m[1]["role"], "system");
    assert_eq!(m[3]["tool_calls"].as_array().unwrap().len(), 2);
    assert_eq!(
        m[3]["tool_calls"][1]["function"]["arguments"],
        "{\"city\":\"B\"}"
    );
    assert_eq!(
        m[4],
        json!({"role": "tool", "tool_call_id": "c1", "content": "sunny"})
    );
}

#[test]
fn tools_choice_and_text_format_map_to_their_chat_forms() {
    let r = req(json!({"model": "m", "input": "x",
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": true}],
        "tool_choice": {"type": "function", "name": "f"},
        "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}, "strict": true}}}));
    let t = translate(&r, Vec::new()).unwrap();
    assert_eq!(
        t.chat["tools"],
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": true}}])
    );
    assert_eq!(
        t.chat["tool_choice"],
        json!({"type": "function", "function": {"name": "f"}})
    );
    assert_eq!(
        t.chat["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}, "strict": true}})
    );
}

#[test]
fn what_herd_cannot_honor_is_refused_by_name() {
    let cases = [
        (json!({"background": true}), "background"),
        (json!({"reasoning": {"effort": "high"}}), "reasoning"),
        (json!({"truncation": "auto"}), "truncation"),
        (json!({"include": ["file_search_call.results"]}), "include"),
        (json!({"tools": [{"type": "web_search"}]}), "tools"),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}),
            "input",
        ),
        (
            json!({"input": [{"type": "reasoning", "id": "r"}]}),
            "input",
        ),
        (json!({"input": []}), "input"),
        (json!({"text": {"format": {"type": "yaml"}}}), "text.format"),
    ];
    for (extra, param) in cases {
        let mut body = json!({"model": "m", "input": "x"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let e = translate(&req(body.clone()), Vec::new()).unwrap_err();
        assert_eq!(e.envelope().error.param, Some(param), "{body}");
    }
}

fn names(events: &[super::events::StreamEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.name()).collect()
}

#[test]
fn a_chat_stream_becomes_responses_events_in_order() {
    let r = req(json!({"model": "m", "input": "x"}));
    let mut c = Converter::new(ResponseObject::start(&r, true));
    let mut all = c.start();
    all.extend(
        c.chunk(&json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})),
    );
    all.extend(c.chunk(&json!({"choices": [{"index": 0, "delta": {"content": "Hel"}}]})));
    all.extend(c.chunk(&json!({"choices": [{"index": 0, "delta": {"content": "lo"}}]})));
    all.extend(c.chunk(&json!({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]})));
    all.extend(
        c.chunk(&json!({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": "{\"a\":"}}]}}]})),
    );
    all.extend(
        c.chunk(&json!({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": "1}"}}]}, "finish_reason": "tool_calls"}]})),
    );
    all.extend(c.chunk(
        &json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 3}}}),
    ));
    let (last, object) = c.finish();
    all.extend(last);
    assert_eq!(
        names(&all),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let seqs: Vec<u64> = all.iter().map(|e| e.sequence_number).collect();
    assert_eq!(seqs, (0..all.len() as u64).collect::<Vec<_>>());
    assert_eq!(object.status, Status::Completed);
    let usage = object.usage.unwrap();
    assert_eq!(
        (usage.input_tokens, usage.output_tokens, usage.total_tokens),
        (7, 5, 12)
    );
    assert_eq!(usage.input_tokens_details.cached_tokens, 3);
    match &object.output[..] {
        [OutputItem::Message { content, .. }, OutputItem::FunctionCall {
            call_id,
            name,
            arguments,
            ..
        }] => {
            assert_eq!(content[0].text, "Hello");
            assert_eq!(
                (call_id.as_str(), name.as_str(), arguments.as_str()),
                ("call_1", "f", "{\"a\":1}")
            );
        }
        other => panic!("unexpected output {other:?}"),
    }
    // The wire form: `type` and `sequence_number` beside the body's fields.
    let wire = serde_json::to_value(&all[4]).unwrap();
    assert_eq!(wire["type"], "response.output_text.delta");
    assert_eq!(wire["delta"], "Hel");
    assert_eq!(wire["output_index"], 0);
    assert_eq!(wire["sequence_number"], 4);
    // History for a follow-up: one assistant message with its text and call.
    let h = object.as_chat_messages();
    assert_eq!(h[0]["content"], "Hello");
    assert_eq!(h[0]["tool_calls"][0]["id"], "call_1");
}

#[test]
fn a_length_cut_is_incomplete_and_an_error_is_failed() {
    let r = req(json!({"model": "m", "input": "x"}));
    let mut c = Converter::new(ResponseObject::start(&r, true));
    c.start();
    c.chunk(
        &json!({"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": "length"}]}),
    );
    let (last, object) = c.finish();
    assert_eq!(last.last().unwrap().name(), "response.incomplete");
    assert_eq!(object.status, Status::Incomplete);
    assert_eq!(
        object.incomplete_details.unwrap().reason,
        "max_output_tokens"
    );

    let mut c = Converter::new(ResponseObject::start(&r, true));
    c.start();
    c.chunk(&json!({"choices": [{"index": 0, "delta": {"content": "a"}}]}));
    let (last, object) = c.fail("engine_crashed", "boom");
    assert_eq!(names(&last).last(), Some(&"response.failed"));
    assert!(matches!(
        &last.last().unwrap().body,
        EventBody::Failed { .. }
    ));
    assert_eq!(object.status, Status::Failed);
    assert_eq!(object.error.unwrap().code, "engine_crashed");
    // The text streamed before the failure is kept in the output.
    assert_eq!(object.output.len(), 1);
}

#[test]
fn a_whole_chat_completion_becomes_a_response() {
    let r = req(json!({"model": "m", "input": "x", "metadata": {"k": "v"}}));
    let mut o = ResponseObject::start(&r, false);
    o.complete_from_chat(&json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi",
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 2, "completion_tokens": 3}}));
    let v = serde_json::to_value(&o).unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(v["output"][1]["type"], "function_call");
    assert_eq!(v["output"][1]["call_id"], "c");
    assert_eq!(v["usage"]["total_tokens"], 5);
    assert_eq!(v["metadata"]["k"], "v");
    assert_eq!(v["store"], false);
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
}

#[test]
fn the_store_evicts_the_oldest_past_its_bounds() {
    let store = ResponseStore::new(2, usize::MAX);
    let r = req(json!({"model": "m", "input": "x"}));
    let ids: Vec<String> = (0..3)
        .map(|_| {
            let o = ResponseObject::start(&r, true);
            let id = o.id.clone();
            store.insert(o, vec![json!({"role": "user", "content": "x"})]);
            id
        })
        .collect();
    assert!(store.get(&ids[0]).is_none());
    assert!(store.get(&ids[2]).is_some());
    assert!(store.remove(&ids[1]));
    assert!(!store.remove(&ids[1]));
    assert_eq!(store.len(), 1);

    let tiny = ResponseStore::new(100, 600);
    for _ in 0..5 {
        tiny.insert(ResponseObject::start(&r, true), Vec::new());
    }
    assert!(tiny.len() < 5, "the byte bound holds");
}
