//! What each tool format looks like, in one place: the grammar writes calls
//! with it (`grammar/tools.rs`), the history renders earlier calls and
//! results with it (`chat`), and the stream parser reads calls back with it
//! (`openai/tool_stream.rs`).

use herd_engines::ToolFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolSyntax {
    /// Opens each call, before its JSON.
    pub open: &'static str,
    /// May come once before the calls (a Llama 3 model's `<|python_tag|>`).
    pub lead: Option<&'static str>,
    /// The key of the arguments in the call's JSON.
    pub key: &'static str,
    /// Closes each call, after its JSON.
    pub close: &'static str,
    /// Between two calls.
    pub separator: &'static str,
    /// Characters text may not start with (besides whitespace), so that the
    /// first character decides between text and calls (a GBNF class's body).
    pub not_first: &'static str,
    /// The role a tool's result is given, and the text around it.
    pub result_role: &'static str,
    pub result_open: &'static str,
    pub result_close: &'static str,
}

impl ToolSyntax {
    pub fn of(format: ToolFormat) -> Self {
        match format {
            // As the Hermes and Qwen templates render calls and results.
            ToolFormat::Hermes => Self {
                open: "<tool_call>\n",
                lead: None,
                key: "arguments",
                close: "\n</tool_call>",
                separator: "\n",
                not_first: "<",
                result_role: "user",
                result_open: "<tool_response>\n",
                result_close: "\n</tool_response>",
            },
            // As Meta's Llama 3.1 template renders them; it renders one call
            // per turn, so several are separated by "; " as vLLM's
            // llama3_json parser reads them.
            ToolFormat::Llama3 => Self {
                open: "",
                lead: Some("<|python_tag|>"),
                key: "parameters",
                close: "",
                separator: "; ",
                not_first: "{<",
                result_role: "ipython",
                result_open: "",
                result_close: "",
            },
        }
    }

    /// A call up to its arguments: `open{"name": "NAME", "KEY": `.
    pub fn head(&self, name: &str) -> String {
        let name = serde_json::Value::String(name.to_string());
        format!("{}{{\"name\": {name}, \"{}\": ", self.open, self.key)
    }

    /// A call after its arguments.
    pub fn tail(&self) -> String {
        format!("}}{}", self.close)
    }

    /// A whole call; `arguments` is JSON text.
    pub fn call(&self, name: &str, arguments: &str) -> String {
        format!("{}{arguments}{}", self.head(name), self.tail())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_written_as_each_family_writes_them() {
        let hermes = ToolSyntax::of(ToolFormat::Hermes);
        assert_eq!(
            hermes.call("f", r#"{"a": 1}"#),
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>"
        );
        let llama = ToolSyntax::of(ToolFormat::Llama3);
        assert_eq!(
            llama.call("f", r#"{"a": 1}"#),
            r#"{"name": "f", "parameters": {"a": 1}}"#
        );
    }
}
