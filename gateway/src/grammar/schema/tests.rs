use super::*;
use serde_json::json;

fn refused(schema: Value) -> String {
    let result = grammar(&schema);
    assert!(result.is_err(), "expected a refusal, got {result:?}");
    result.err().map(|e| e.message).unwrap_or_default()
}

#[test]
fn unsupported_keywords_are_named_with_their_location() {
    let m = refused(
        json!({"type": "object", "properties": {"id": {"type": "string", "pattern": "^a"}}}),
    );
    assert!(m.contains("`pattern`"), "{m}");
    assert!(m.contains("/properties/id"), "{m}");
    let m = refused(json!({"type": "integer", "minimum": 3}));
    assert!(m.contains("`minimum`") && m.contains("(at /)"), "{m}");
    let m = refused(json!({"allOf": [{"type": "string"}]}));
    assert!(m.contains("`allOf`"), "{m}");
    let m = refused(json!({"type": "array", "items": {"format": "date"}}));
    assert!(m.contains("`format`") && m.contains("/items"), "{m}");
}

#[test]
fn malformed_schemas_are_refused_not_ignored() {
    assert!(
        refused(json!({"type": "object", "properties": {}, "required": ["x"]})).contains("\"x\"")
    );
    assert!(refused(json!({"type": "array", "minItems": 3, "maxItems": 1})).contains("maxItems"));
    assert!(refused(json!({"enum": []})).contains("enum"));
    assert!(refused(json!({"$ref": "#/$defs/missing"})).contains("names nothing"));
    assert!(refused(json!({"$ref": "other.json#/x"})).contains("into this schema"));
    assert!(refused(json!({"type": "decimal"})).contains("decimal"));
    assert!(refused(json!(false)).contains("object or `true`"));
}

#[test]
fn annotations_are_accepted() {
    let g =
        grammar(&json!({"title": "t", "description": "d", "type": "string", "examples": ["x"]}));
    assert!(g.is_ok());
}

#[test]
fn required_properties_are_always_present_optional_ones_maybe() {
    let g = grammar(&json!({
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "integer"}, "c": {"type": "boolean"}},
        "required": ["b"]
    }))
    .map(|g| g.gbnf)
    .unwrap_or_default();
    let obj = g
        .lines()
        .find(|l| l.contains("-obj ::="))
        .unwrap_or_default();
    // Either a first then b, or b first; c is optional after b.
    assert!(
        obj.contains(r#""\"a\"" ws ":" ws string ws "," ws "\"b\"" ws ":" ws integer ws"#),
        "{obj}"
    );
    assert!(
        obj.contains(r#"| "\"b\"" ws ":" ws integer ws ("," ws "\"c\"" ws ":" ws boolean ws)?"#),
        "{obj}"
    );
    assert!(
        !obj.contains(")? \"}\""),
        "an object with a required member cannot be empty: {obj}"
    );
}

#[test]
fn enums_consts_and_nullable_types_become_alternatives() {
    let g = grammar(&json!({"type": "object", "properties": {
        "size": {"enum": ["small", "large", 3, null]},
        "kind": {"const": "x"},
        "note": {"type": ["string", "null"]}
    }}))
    .map(|g| g.gbnf)
    .unwrap_or_default();
    assert!(
        g.contains(r#"("\"small\"" | "\"large\"" | "3" | "null")"#),
        "{g}"
    );
    assert!(g.contains(r#""\"x\"""#), "{g}");
    assert!(g.contains("(string | null)"), "{g}");
}

#[test]
fn arrays_honour_item_counts() {
    let g = grammar(
        &json!({"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4}),
    )
    .map(|g| g.gbnf)
    .unwrap_or_default();
    assert!(g.contains(r#"integer ws ("," ws integer ws){1,3}"#), "{g}");
}

#[test]
fn recursive_refs_terminate() {
    let g = grammar(&json!({
        "$defs": {"node": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
        "$ref": "#/$defs/node"
    }))
    .map(|g| g.gbnf)
    .unwrap_or_default();
    assert!(g.starts_with("root ::= node\n"), "{g}");
    assert!(g.contains("node ::= node-obj"), "{g}");
}

#[test]
fn absurd_nesting_is_refused() {
    let mut schema = json!({"type": "string"});
    for _ in 0..100 {
        schema = json!({"type": "array", "items": schema});
    }
    assert!(refused(schema).contains("deeper"));
}
