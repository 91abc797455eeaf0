//! How a model writes tool calls, read from its chat template once at load.
//! llama.cpp applies templates to roles and texts only, so the gateway
//! describes the tools, renders calls and results in the history, constrains
//! the calls by grammar and parses them back, each in this format.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ToolFormat {
    /// Hermes/Qwen's `<tool_call>{"name": …, "arguments": {…}}</tool_call>`
    /// blocks: native to Hermes and Qwen, and what every model whose template
    /// knows no other format is held to.
    #[default]
    Hermes,
    /// Llama 3.1–3.3's JSON calls, `{"name": …, "parameters": {…}}` (maybe
    /// after `<|python_tag|>`), and tool results in the `ipython` role.
    Llama3,
}

impl ToolFormat {
    /// The format a chat template (its Jinja text) was written for: Llama 3.x's
    /// headers with its tool role or tag make Llama 3 (Llama 3.0's template,
    /// which has neither, knows no tools); anything else gets Hermes's.
    pub fn of_template(template: &str) -> Self {
        let llama3 = template.contains("<|start_header_id|>")
            && (template.contains("<|python_tag|>") || template.contains("ipython"));
        if llama3 {
            Self::Llama3
        } else {
            Self::Hermes
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ToolFormat;

    #[test]
    fn llama_3_1_templates_are_told_from_llama_3_0_and_others() {
        let llama31 = "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}{%- if tools %}Environment: ipython{% endif %}";
        assert_eq!(ToolFormat::of_template(llama31), ToolFormat::Llama3);
        let tagged = "<|start_header_id|>{{ role }}<|end_header_id|>{{ '<|python_tag|>' }}";
        assert_eq!(ToolFormat::of_template(tagged), ToolFormat::Llama3);
        let llama30 = "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{% endfor %}";
        assert_eq!(ToolFormat::of_template(llama30), ToolFormat::Hermes);
        let qwen = "<|im_start|>system\n<tools>{{ tools }}</tools><tool_call>";
        assert_eq!(ToolFormat::of_template(qwen), ToolFormat::Hermes);
        assert_eq!(ToolFormat::of_template(""), ToolFormat::Hermes);
    }

    #[test]
    fn an_engine_that_does_not_say_is_hermes() {
        assert_eq!(ToolFormat::default(), ToolFormat::Hermes);
        let json = serde_json::to_string(&ToolFormat::Llama3).unwrap_or_default();
        assert_eq!(json, "\"llama3\"");
    }
}
