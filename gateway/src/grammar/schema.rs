//! JSON schema → grammar. Only keywords whose every use the grammar can
//! enforce are accepted; any other keyword is refused with its name and
//! where it appears, so an answer never silently ignores part of a schema.
//!
//! Properties come in the order the schema declares them, required ones
//! always, optional ones maybe; no undeclared property is ever produced,
//! which satisfies `additionalProperties` whatever its value.

use super::{literal, Rules};
use herd_engines::Grammar;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Keywords that shape the output.
pub const ENFORCED: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "$ref",
    "$defs",
    "definitions",
];

/// Keywords that only annotate: no effect on which documents are valid.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// How deep schemas may nest (and `$ref`s chain) before herd refuses them.
const MAX_DEPTH: usize = 64;
/// How many rules one grammar may have.
const MAX_RULES: usize = 2_000;

/// Why a schema cannot be enforced: a message naming the keyword and the
/// JSON pointer of the schema that holds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SchemaError {
    pub message: String,
}

fn error(path: &str, message: impl std::fmt::Display) -> SchemaError {
    let at = if path.is_empty() { "/" } else { path };
    SchemaError {
        message: format!("{message} (at {at})"),
    }
}

/// The grammar of documents valid against `schema`.
pub fn grammar(schema: &Value) -> Result<Grammar, SchemaError> {
    let mut rules = Rules::default();
    let root = convert_into(schema, "root-value", &mut rules)?;
    Ok(rules.grammar(&root))
}

/// Adds the rules for `schema` to `rules`; returns the expression that matches it.
pub fn convert_into(schema: &Value, hint: &str, rules: &mut Rules) -> Result<String, SchemaError> {
    let mut converter = Converter {
        root: schema,
        rules,
        refs: HashMap::new(),
    };
    converter.value(schema, "", hint, 0)
}

struct Converter<'a, 'r> {
    root: &'a Value,
    rules: &'r mut Rules,
    /// `$ref` target → its rule (defined once, so recursive schemas work).
    refs: HashMap<String, String>,
}

impl<'a> Converter<'a, '_> {
    fn value(
        &mut self,
        schema: &'a Value,
        path: &str,
        hint: &str,
        depth: usize,
    ) -> Result<String, SchemaError> {
        if depth > MAX_DEPTH {
            return Err(error(
                path,
                format!("the schema nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        if self.rules.len() > MAX_RULES {
            return Err(error(path, "the schema is too large to enforce"));
        }
        let map = match schema {
            Value::Bool(true) => return Ok("value".into()),
            Value::Object(map) => map,
            _ => return Err(error(path, "a schema must be an object or `true`")),
        };
        if let Some(keyword) = map
            .keys()
            .find(|k| !ENFORCED.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str()))
        {
            return Err(error(
                path,
                format!(
                    "the JSON schema keyword `{keyword}` is not supported (herd enforces: {})",
                    ENFORCED.join(", ")
                ),
            ));
        }
        if let Some(target) = map.get("$ref") {
            if map.keys().any(|k| {
                !ANNOTATIONS.contains(&k.as_str())
                    && !matches!(k.as_str(), "$ref" | "$defs" | "definitions")
            }) {
                return Err(error(
                    path,
                    "`$ref` beside other constraining keywords is not supported",
                ));
            }
            return self.reference(target, path, depth);
        }
        if let Some(c) = map.get("const") {
            return Ok(json_literal(c));
        }
        if let Some(options) = map.get("enum") {
            let Some(options) = options.as_array().filter(|o| !o.is_empty()) else {
                return Err(error(path, "`enum` must be a non-empty array"));
            };
            let alts: Vec<String> = options.iter().map(json_literal).collect();
            return Ok(format!("({})", alts.join(" | ")));
        }
        for keyword in ["anyOf", "oneOf"] {
            if let Some(options) = map.get(keyword) {
                return self.alternatives(keyword, options, path, hint, depth);
            }
        }
        let types: Vec<&str> = match map.get("type") {
            None if map.contains_key("properties") => vec!["object"],
            None if map.contains_key("items") => vec!["array"],
            None => return Ok("value".into()),
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) if !ts.is_empty() => ts
                .iter()
                .map(|t| {
                    t.as_str()
                        .ok_or_else(|| error(path, "`type` entries must be strings"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(error(
                    path,
                    "`type` must be a string or a non-empty array of strings",
                ))
            }
        };
        let mut alts = Vec::with_capacity(types.len());
        for t in types {
            alts.push(match t {
                "object" => self.object(map, path, hint, depth)?,
                "array" => self.array(map, path, hint, depth)?,
                "string" => string(map, path)?,
                "integer" | "number" | "boolean" | "null" => t.to_string(),
                other => return Err(error(path, format!("unknown `type` {other:?}"))),
            });
        }
        Ok(if alts.len() == 1 {
            alts.remove(0)
        } else {
            format!("({})", alts.join(" | "))
        })
    }

    fn alternatives(
        &mut self,
        keyword: &str,
        options: &'a Value,
        path: &str,
        hint: &str,
        depth: usize,
    ) -> Result<String, SchemaError> {
        let Some(options) = options.as_array().filter(|o| !o.is_empty()) else {
            return Err(error(
                path,
                format!("`{keyword}` must be a non-empty array of schemas"),
            ));
        };
        let mut alts = Vec::with_capacity(options.len());
        for (i, option) in options.iter().enumerate() {
            alts.push(self.value(option, &format!("{path}/{keyword}/{i}"), hint, depth + 1)?);
        }
        Ok(format!("({})", alts.join(" | ")))
    }

    fn reference(
        &mut self,
        target: &Value,
        path: &str,
        depth: usize,
    ) -> Result<String, SchemaError> {
        let Some(pointer) = target.as_str().and_then(|t| t.strip_prefix('#')) else {
            return Err(error(
                path,
                "`$ref` must point into this schema (\"#/$defs/...\")",
            ));
        };
        if let Some(rule) = self.refs.get(pointer) {
            return Ok(rule.clone());
        }
        let root = self.root;
        let Some(resolved) = root.pointer(pointer) else {
            return Err(error(
                path,
                format!("`$ref` {pointer:?} names nothing in this schema"),
            ));
        };
        let hint = pointer.rsplit('/').next().unwrap_or("ref");
        let name = self.rules.reserve(hint);
        self.refs.insert(pointer.to_string(), name.clone());
        let body = self.value(resolved, pointer, hint, depth + 1)?;
        self.rules.define(name.clone(), body);
        Ok(name)
    }

    fn object(
        &mut self,
        map: &'a Map<String, Value>,
        path: &str,
        hint: &str,
        depth: usize,
    ) -> Result<String, SchemaError> {
        let required: Vec<&str> = match map.get("required") {
            None => Vec::new(),
            Some(Value::Array(names)) => names
                .iter()
                .map(|n| {
                    n.as_str()
                        .ok_or_else(|| error(path, "`required` must list property names"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(error(path, "`required` must be an array of property names")),
        };
        match map.get("additionalProperties") {
            None | Some(Value::Bool(_) | Value::Object(_)) => {}
            Some(_) => {
                return Err(error(
                    path,
                    "`additionalProperties` must be a boolean or a schema",
                ))
            }
        }
        let properties = match map.get("properties") {
            None => {
                if let Some(name) = required.first() {
                    return Err(error(
                        path,
                        format!("`required` names {name:?}, which `properties` does not declare"),
                    ));
                }
                let closed = map.get("additionalProperties") == Some(&Value::Bool(false));
                return Ok(if closed {
                    r#"("{" ws "}")"#.into()
                } else {
                    "object".into()
                });
            }
            Some(Value::Object(p)) => p,
            Some(_) => return Err(error(path, "`properties` must be an object")),
        };
        if let Some(name) = required.iter().find(|n| !properties.contains_key(**n)) {
            return Err(error(
                path,
                format!("`required` names {name:?}, which `properties` does not declare"),
            ));
        }
        let mut members = Vec::with_capacity(properties.len());
        for (name, schema) in properties {
            let key = serde_json::to_string(name).unwrap_or_default();
            let child = format!(
                "{path}/properties/{}",
                name.replace('~', "~0").replace('/', "~1")
            );
            let value = self.value(schema, &child, name, depth + 1)?;
            let value = self.named(name, value);
            members.push((
                format!("{} ws \":\" ws {value} ws", literal(&key)),
                required.contains(&name.as_str()),
            ));
        }
        let rest = |from: usize| -> String {
            members[from..]
                .iter()
                .map(|(m, req)| {
                    if *req {
                        format!(" \",\" ws {m}")
                    } else {
                        format!(" (\",\" ws {m})?")
                    }
                })
                .collect()
        };
        // The first member present decides the commas: every member after it takes one.
        let mut firsts = Vec::new();
        let mut any_required = false;
        for (i, (member, req)) in members.iter().enumerate() {
            firsts.push(format!("{member}{}", rest(i + 1)));
            if *req {
                any_required = true;
                break;
            }
        }
        let body = match (firsts.is_empty(), any_required) {
            (true, _) => r#""{" ws "}""#.to_string(),
            (false, true) => format!(r#""{{" ws ({}) "}}""#, firsts.join(" | ")),
            (false, false) => format!(r#""{{" ws ({})? "}}""#, firsts.join(" | ")),
        };
        Ok(self.rules.add(&format!("{hint}-obj"), body))
    }

    fn array(
        &mut self,
        map: &'a Map<String, Value>,
        path: &str,
        hint: &str,
        depth: usize,
    ) -> Result<String, SchemaError> {
        let item = match map.get("items") {
            None => "value".to_string(),
            Some(items) => {
                let item = self.value(items, &format!("{path}/items"), hint, depth + 1)?;
                self.named(&format!("{hint}-item"), item)
            }
        };
        let (min, max) = bounds(map, "minItems", "maxItems", path)?;
        let more = format!(r#"("," ws {item} ws)"#);
        let body = match (min, max) {
            (_, Some(0)) => String::new(),
            (0, None) => format!("({item} ws {more}*)?"),
            (0, Some(max)) => format!("({item} ws {more}{{0,{}}})?", max - 1),
            (min, None) => format!("{item} ws {more}{{{},}}", min - 1),
            (min, Some(max)) => format!("{item} ws {more}{{{},{}}}", min - 1, max - 1),
        };
        Ok(self
            .rules
            .add(&format!("{hint}-arr"), format!(r#""[" ws {body} "]""#)))
    }

    /// A rule name for `expr`, so that long expressions are written once.
    fn named(&mut self, hint: &str, expr: String) -> String {
        if expr.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            expr
        } else {
            self.rules.add(hint, expr)
        }
    }
}

fn string(map: &Map<String, Value>, path: &str) -> Result<String, SchemaError> {
    Ok(match bounds(map, "minLength", "maxLength", path)? {
        (0, None) => "string".into(),
        (min, None) => format!(r#"("\"" char{{{min},}} "\"")"#),
        (min, Some(max)) => format!(r#"("\"" char{{{min},{max}}} "\"")"#),
    })
}

/// A `min`/`max` pair of counts; the max is at least the min.
fn bounds(
    map: &Map<String, Value>,
    lo: &str,
    hi: &str,
    path: &str,
) -> Result<(u64, Option<u64>), SchemaError> {
    let count = |key: &str| -> Result<Option<u64>, SchemaError> {
        match map.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64().filter(|n| *n <= 10_000) {
                Some(n) => Ok(Some(n)),
                None => Err(error(
                    path,
                    format!("`{key}` must be a whole number from 0 to 10000, got {v}"),
                )),
            },
        }
    };
    let min = count(lo)?.unwrap_or(0);
    let max = count(hi)?;
    if max.is_some_and(|m| m < min) {
        return Err(error(path, format!("`{hi}` is smaller than `{lo}`")));
    }
    Ok((min, max))
}

/// A JSON value as the exact text the output must hold.
fn json_literal(value: &Value) -> String {
    literal(&serde_json::to_string(value).unwrap_or_default())
}

#[cfg(test)]
mod tests;
