//! Reads tool calls back out of generated text as it streams, in the tool
//! format of the model that wrote it (`chat/syntax.rs`): Hermes's
//! `<tool_call>{"name": …, "arguments": {…}}</tool_call>` blocks, or Llama
//! 3's `{"name": …, "parameters": {…}}` (after an optional `<|python_tag|>`,
//! several separated by `;`). Either key is read in either format. Anything
//! else is the message's content.
//!
//! A call is announced (index, id, name) as soon as its name is complete,
//! then its arguments follow fragment by fragment, exactly the text the
//! model wrote: joined by `index`, as the OpenAI SDKs do, they are the call.

use super::tools::{new_call_id, FunctionCall, FunctionDelta, ToolCall, ToolCallDelta};
use crate::chat::syntax::ToolSyntax;
use herd_engines::ToolFormat;

/// The keys a call's arguments may come under.
const KEYS: [&str; 2] = ["\"arguments\"", "\"parameters\""];

/// What a piece of output turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Content(String),
    Call {
        index: u32,
        id: String,
        name: String,
    },
    Arguments {
        index: u32,
        fragment: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Leading whitespace: not yet known whether a call or content follows.
    Lead,
    Content,
    /// Inside a call's start up to its arguments, `<tool_call>{"name": "…", "arguments": ` (in `buf`).
    Header,
    /// Inside the arguments' JSON.
    Arguments {
        depth: u32,
        in_string: bool,
        escaped: bool,
    },
    /// After the arguments: `}` and the format's close, `</tool_call>` (in `buf`).
    Trailer,
    /// Between calls (`separated`: the format's separator was seen).
    Between {
        separated: bool,
    },
}

#[derive(Debug)]
pub struct ToolCallParser {
    syntax: ToolSyntax,
    state: State,
    buf: String,
    calls: u32,
    out: Vec<Piece>,
}

/// How far a buffered prefix matches what is expected.
enum Match {
    Partial,
    Done(String),
    No,
}

impl ToolCallParser {
    pub fn new(format: ToolFormat) -> Self {
        Self {
            syntax: ToolSyntax::of(format),
            state: State::Lead,
            buf: String::new(),
            calls: 0,
            out: Vec::new(),
        }
    }

    /// Whether any call was read (the answer's finish reason is then `tool_calls`).
    pub fn called(&self) -> bool {
        self.calls > 0
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        for c in text.chars() {
            self.char(c);
        }
        std::mem::take(&mut self.out)
    }

    /// The end of the output: what was held back is content after all
    /// (a call cut short keeps what it streamed).
    pub fn finish(&mut self) -> Vec<Piece> {
        if matches!(self.state, State::Lead | State::Header) {
            let held = std::mem::take(&mut self.buf);
            self.content(&held);
        }
        std::mem::take(&mut self.out)
    }

    fn char(&mut self, c: char) {
        let separator = self.syntax.separator.trim();
        match self.state {
            State::Content => self.content(&c.to_string()),
            State::Lead if c.is_whitespace() => self.buf.push(c),
            State::Between { .. } if c.is_whitespace() => {}
            State::Between { separated: false } if separator.starts_with(c) => {
                self.state = State::Between { separated: true }
            }
            State::Lead | State::Between { .. }
                if !matches!(header(&c.to_string(), &self.syntax), Match::No) =>
            {
                self.buf = c.to_string();
                self.state = State::Header;
            }
            State::Lead | State::Between { .. } => {
                let held = std::mem::take(&mut self.buf);
                self.state = State::Content;
                self.content(&held);
                self.content(&c.to_string());
            }
            State::Header => {
                self.buf.push(c);
                match header(&self.buf, &self.syntax) {
                    Match::Partial => {}
                    Match::Done(name) => {
                        self.out.push(Piece::Call {
                            index: self.calls,
                            id: new_call_id(),
                            name,
                        });
                        self.calls += 1;
                        self.buf.clear();
                        self.state = State::Arguments {
                            depth: 0,
                            in_string: false,
                            escaped: false,
                        };
                    }
                    Match::No => {
                        let held = std::mem::take(&mut self.buf);
                        self.state = State::Content;
                        self.content(&held);
                    }
                }
            }
            State::Arguments {
                depth,
                in_string,
                escaped,
            } => self.argument(c, depth, in_string, escaped),
            State::Trailer => {
                self.buf.push(c);
                let seen: String = self.buf.chars().filter(|c| !c.is_whitespace()).collect();
                let expected = format!("}}{}", self.syntax.close.trim());
                if seen == expected {
                    self.buf.clear();
                    self.state = State::Between { separated: false };
                } else if !expected.starts_with(&seen) {
                    let held = std::mem::take(&mut self.buf);
                    self.state = State::Content;
                    self.content(&held);
                }
            }
        }
    }

    fn argument(&mut self, c: char, mut depth: u32, mut in_string: bool, mut escaped: bool) {
        if depth == 0 && c.is_whitespace() {
            return;
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else {
            match c {
                '"' => in_string = true,
                '{' | '[' => depth += 1,
                '}' | ']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        let index = self.calls.saturating_sub(1);
        match self.out.last_mut() {
            Some(Piece::Arguments { index: i, fragment }) if *i == index => fragment.push(c),
            _ => self.out.push(Piece::Arguments {
                index,
                fragment: c.to_string(),
            }),
        }
        self.state = if depth == 0 && !in_string {
            State::Trailer
        } else {
            State::Arguments {
                depth,
                in_string,
                escaped,
            }
        };
    }

    fn content(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        match self.out.last_mut() {
            Some(Piece::Content(s)) => s.push_str(text),
            _ => self.out.push(Piece::Content(text.to_string())),
        }
    }
}

/// Matches a call's start up to its arguments, `<tool_call>{"name": "NAME",
/// "arguments":` (any whitespace between the parts), against the start of `buf`.
fn header(buf: &str, syntax: &ToolSyntax) -> Match {
    let mut rest = buf;
    if let Some(lead) = syntax.lead {
        // Optional: absent unless `buf` starts with (a part of) it.
        if let Match::Partial = expect(&mut rest, &[lead]) {
            return Match::Partial;
        }
    }
    let open = syntax.open.trim();
    for part in [open, "{", "\"name\"", ":"] {
        match expect(&mut rest, &[part]) {
            Match::Done(_) => {}
            other => return other,
        }
    }
    rest = rest.trim_start();
    if rest.is_empty() {
        return Match::Partial;
    }
    if !rest.starts_with('"') {
        return Match::No;
    }
    let Some(end) = string_end(rest) else {
        return Match::Partial;
    };
    let Ok(name) = serde_json::from_str::<String>(&rest[..end]) else {
        return Match::No;
    };
    rest = &rest[end..];
    for parts in [&[","][..], &KEYS, &[":"]] {
        match expect(&mut rest, parts) {
            Match::Done(_) => {}
            other => return other,
        }
    }
    Match::Done(name)
}

/// Skips whitespace, then one of `parts`; `Partial` if `rest` ends inside one.
fn expect(rest: &mut &str, parts: &[&str]) -> Match {
    let r = rest.trim_start();
    for part in parts {
        if let Some(after) = r.strip_prefix(part) {
            *rest = after;
            return Match::Done(String::new());
        }
    }
    if parts.iter().any(|part| part.starts_with(r)) {
        Match::Partial
    } else {
        Match::No
    }
}

/// The byte just past the JSON string that opens `s`, if it is complete.
fn string_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// A whole answer: its content (`None` if there was none besides calls) and calls.
pub fn split(text: &str, format: ToolFormat) -> (Option<String>, Vec<ToolCall>) {
    let mut parser = ToolCallParser::new(format);
    let mut pieces = parser.push(text);
    pieces.extend(parser.finish());
    let mut content = String::new();
    let mut calls: Vec<ToolCall> = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Content(s) => content.push_str(&s),
            Piece::Call { id, name, .. } => calls.push(ToolCall {
                id,
                kind: "function",
                function: FunctionCall {
                    name,
                    arguments: String::new(),
                },
            }),
            Piece::Arguments { index, fragment } => {
                if let Some(call) = calls.get_mut(index as usize) {
                    call.function.arguments.push_str(&fragment);
                }
            }
        }
    }
    let content = (!content.is_empty() || calls.is_empty()).then_some(content);
    (content, calls)
}

/// A call piece as a stream delta (`None` for content).
pub fn delta(piece: Piece) -> Result<ToolCallDelta, String> {
    match piece {
        Piece::Content(s) => Err(s),
        Piece::Call { index, id, name } => Ok(ToolCallDelta {
            index,
            id: Some(id),
            kind: Some("function"),
            function: FunctionDelta {
                name: Some(name),
                arguments: Some(String::new()),
            },
        }),
        Piece::Arguments { index, fragment } => Ok(ToolCallDelta {
            index,
            id: None,
            kind: None,
            function: FunctionDelta {
                name: None,
                arguments: Some(fragment),
            },
        }),
    }
}

#[cfg(test)]
mod tests;
