//! Output grammars (llama.cpp's GBNF) built at the edge: from a JSON schema
//! (`response_format`, tool parameters) or for tool calls. The engine only
//! runs them; every grammar it gets was built here, from keywords this
//! converter knows how to enforce, and anything else is a 400 naming it.

pub mod schema;
pub mod tools;

use herd_engines::Grammar;
use std::collections::BTreeSet;

/// JSON's building blocks. Whitespace is bounded (a small model at a high
/// temperature otherwise can spend its whole budget on indentation) and so
/// are the digits of a number (an exponent of 2 digits keeps it finite as a
/// double); no limit makes a valid document invalid. An integer is never
/// `-0`, which parsers read as a float.
const PRIMITIVES: &str = r#"ws ::= | " " | "\n" [ \t]{0,20}
char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
string ::= "\"" char* "\""
integer ::= "0" | "-"? [1-9] [0-9]{0,15}
number ::= "-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,2})?
boolean ::= "true" | "false"
null ::= "null"
value ::= object | array | string | number | boolean | null
member ::= string ws ":" ws value ws
object ::= "{" ws (member ("," ws member)*)? "}"
array ::= "[" ws (value ws ("," ws value ws)*)? "]"
"#;

/// Named rules of one grammar, emitted after [`PRIMITIVES`].
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<(String, String)>,
    taken: BTreeSet<String>,
}

impl Rules {
    /// Reserves a unique rule name derived from `hint` (defined later with [`Rules::define`]).
    pub fn reserve(&mut self, hint: &str) -> String {
        let mut base: String = hint
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        if base.is_empty() || PRIMITIVES.contains(&format!("\n{base} ::=")) || base == "ws" {
            base.insert_str(0, "r-");
        }
        let mut name = base.clone();
        let mut n = 1;
        while self.taken.contains(&name) {
            n += 1;
            name = format!("{base}-{n}");
        }
        self.taken.insert(name.clone());
        name
    }

    pub fn define(&mut self, name: String, body: String) {
        self.rules.push((name, body));
    }

    /// A new rule for `body`, by a name derived from `hint`.
    pub fn add(&mut self, hint: &str, body: String) -> String {
        let name = self.reserve(hint);
        self.define(name.clone(), body);
        name
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The whole grammar with `root` as its start.
    pub fn grammar(&self, root: &str) -> Grammar {
        let mut gbnf = format!("root ::= {root}\n{PRIMITIVES}");
        for (name, body) in &self.rules {
            gbnf.push_str(name);
            gbnf.push_str(" ::= ");
            gbnf.push_str(body);
            gbnf.push('\n');
        }
        Grammar { gbnf }
    }
}

/// `text` as a GBNF string literal.
pub fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `response_format: {"type": "json_object"}`: any JSON object.
pub fn json_object() -> Grammar {
    Rules::default().grammar("object")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape_quotes_backslashes_and_controls() {
        assert_eq!(literal(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(literal("x\ny\u{1}"), r#""x\ny\x01""#);
        assert_eq!(literal("héllo"), "\"héllo\"");
    }

    #[test]
    fn rule_names_are_unique_and_never_shadow_primitives() {
        let mut rules = Rules::default();
        let a = rules.reserve("my prop");
        let b = rules.reserve("my prop");
        assert_eq!(a, "my-prop");
        assert_eq!(b, "my-prop-2");
        assert_eq!(rules.reserve("string"), "r-string");
        assert_eq!(rules.reserve("ws"), "r-ws");
        assert_eq!(rules.reserve(""), "r-");
    }

    #[test]
    fn json_object_grammar_starts_at_an_object() {
        assert!(json_object().gbnf.starts_with("root ::= object\n"));
    }
}
