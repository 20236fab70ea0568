//! Chat templates: the Jinja template a model ships — `chat_template.jinja` or `chat_template` in
//! a Hugging Face snapshot's `tokenizer_config.json`, `tokenizer.chat_template` in GGUF metadata —
//! rendered with [minijinja] the way transformers' `apply_chat_template` renders it (trimmed and
//! left-stripped blocks, loop controls, Python's string methods, `raise_exception`,
//! `strftime_now`, an unescaped `tojson`, the special tokens as variables), and conversations
//! tokenised with the tokens of the assistant's turns marked.
//!
//! The assistant's tokens are found by rendering the conversation's prefixes: turn `i` of the
//! assistant spans from the end of `messages[..i]` rendered with the generation prompt to the end
//! of `messages[..=i]`, so it covers the reply and whatever the template closes it with
//! (`<|im_end|>\n` in ChatML) — what a model must learn to produce, and what transformers marks
//! when a template wraps the same text in `{% generation %}`. Templates whose prefixes do not
//! render as prefixes of the whole conversation are refused with an error saying so.

use std::path::{Path, PathBuf};

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::tokenizer::TextTokenizer;

/// One turn of a conversation (`{"role": ..., "content": ...}`, as in TRL's `messages`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` (or whatever roles the template knows).
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl Message {
    /// A turn of `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A model's chat template and the special tokens it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    origin: PathBuf,
    bos_token: String,
    eos_token: String,
}

/// A tokenised conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTokens {
    /// Token ids of the rendered conversation (the template's own special tokens, nothing added).
    pub ids: Vec<u32>,
    /// Per token: whether it belongs to one of the assistant's turns (holds any of their text, as
    /// transformers' `char_to_token` marks them).
    pub assistant: Vec<bool>,
}

fn template_err(origin: &Path, msg: impl std::fmt::Display) -> ModelError {
    ModelError::Config {
        path: origin.to_path_buf(),
        msg: format!("chat template: {msg}"),
    }
}

/// A special token in `tokenizer_config.json`: a string or an `AddedToken` object.
fn token_field(config: &serde_json::Value, key: &str) -> String {
    match config.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// A template from its Jinja source; `origin` names where it came from in errors. The
    /// source is checked (parsed) here.
    pub fn new(
        source: impl Into<String>,
        origin: impl Into<PathBuf>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self> {
        let t = Self {
            source: strip_generation_tags(&source.into()),
            origin: origin.into(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        };
        t.environment()?;
        Ok(t)
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where the template came from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The template of a Hugging Face snapshot directory: `chat_template.jinja`, else
    /// `chat_template` in `tokenizer_config.json` (a string, or a list of named templates of
    /// which `default` is taken); `None` when it has neither.
    pub fn from_hf_dir(dir: &Path) -> Result<Option<Self>> {
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| ModelError::config(&config_path, format!("not JSON: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Value::Null,
            Err(e) => return Err(ModelError::io(&config_path, e)),
        };
        let (bos, eos) = (
            token_field(&config, "bos_token"),
            token_field(&config, "eos_token"),
        );
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            let source = std::fs::read_to_string(&jinja).map_err(|e| ModelError::io(&jinja, e))?;
            return Self::new(source, jinja, bos, eos).map(Some);
        }
        Self::from_tokenizer_config(&config, &config_path, bos, eos)
    }

    fn from_tokenizer_config(
        config: &serde_json::Value,
        path: &Path,
        bos: String,
        eos: String,
    ) -> Result<Option<Self>> {
        let source = match config.get("chat_template") {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(named)) => {
                let pick = named
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .or_else(|| named.first());
                match pick
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                {
                    Some(s) => s.to_string(),
                    None => {
                        return Err(template_err(
                            path,
                            "`chat_template` is a list without a `default` template",
                        ));
                    }
                }
            }
            Some(_) => {
                return Err(template_err(
                    path,
                    "`chat_template` is neither a string nor a list of named templates",
                ));
            }
        };
        Self::new(source, path, bos, eos).map(Some)
    }

    /// A template named on the command line: a Jinja file, or a `tokenizer_config.json` holding
    /// one. The special tokens come from `tokenizer` (its BOS and first EOS token).
    pub fn from_file(path: &Path, tokenizer: &TextTokenizer) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let bos = tokenizer
            .bos
            .map(|id| tokenizer.token_text(id))
            .unwrap_or_default();
        let eos = tokenizer
            .eos
            .first()
            .map(|&id| tokenizer.token_text(id))
            .unwrap_or_default();
        if path.extension().is_some_and(|e| e == "json") {
            let config: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::config(path, format!("not JSON: {e}")))?;
            let (b, e) = (
                token_field(&config, "bos_token"),
                token_field(&config, "eos_token"),
            );
            let bos = if b.is_empty() { bos } else { b };
            let eos = if e.is_empty() { eos } else { e };
            return Self::from_tokenizer_config(&config, path, bos, eos)?
                .ok_or_else(|| template_err(path, "this file has no `chat_template`"));
        }
        Self::new(text, path, bos, eos)
    }

    fn environment(&self) -> Result<Environment<'_>> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| template_err(&self.origin, describe(&e)))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template("chat", &self.source)
            .map_err(|e| template_err(&self.origin, describe(&e)))?;
        Ok(env)
    }

    /// The conversation as text, exactly as transformers' `apply_chat_template(messages,
    /// tokenize=False, add_generation_prompt=...)` renders it.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let env = self.environment()?;
        let template = env
            .get_template("chat")
            .map_err(|e| template_err(&self.origin, describe(&e)))?;
        let ctx = minijinja::context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        template
            .render(ctx)
            .map_err(|e| template_err(&self.origin, describe(&e)))
    }

    /// Token ids of the conversation and which of them are the assistant's (see the module
    /// documentation). The text is tokenised as a whole, without added special tokens, as
    /// `apply_chat_template(..., tokenize=True)` does.
    pub fn encode(&self, tokenizer: &TextTokenizer, messages: &[Message]) -> Result<ChatTokens> {
        let full = self.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let before = self.render(&messages[..i], true)?;
            let through = self.render(&messages[..=i], false)?;
            if !through.starts_with(&before) || !full.starts_with(&through) {
                return Err(template_err(
                    &self.origin,
                    format!(
                        "rendering the first {} turns does not give a prefix of the whole conversation, so the assistant's tokens cannot be located; train on every token with --train-on-prompt, or pass a template with --chat-template",
                        i + 1
                    ),
                ));
            }
            spans.push(before.len()..through.len());
        }
        let (ids, offsets) = tokenizer.encode_with_offsets(&full)?;
        let assistant = offsets
            .iter()
            .map(|&(start, end)| {
                spans
                    .iter()
                    .any(|s| start < s.end && end > s.start || start == end && s.contains(&start))
            })
            .collect();
        Ok(ChatTokens { ids, assistant })
    }

    /// The prompt of a conversation: `messages` with the generation prompt, for sampling.
    pub fn prompt(&self, messages: &[Message]) -> Result<String> {
        self.render(messages, true)
    }
}

/// The template with transformers' `{% generation %}` / `{% endgeneration %}` markers removed
/// (minijinja has no such tag; the assistant's tokens are located by prefixes instead).
fn strip_generation_tags(source: &str) -> String {
    let re = regex::Regex::new(r"\{%-?\s*(end)?generation\s*-?%\}").expect("valid regex");
    re.replace_all(source, "").into_owned()
}

/// minijinja's error with its line, on one line.
fn describe(e: &JinjaError) -> String {
    let mut msg = e.to_string();
    if let Some(line) = e.line() {
        msg = format!("{msg} (template line {line})");
    }
    msg.replace('\n', " ")
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`, as transformers' `tojson`
/// (no HTML escaping; `", "` and `": "` separators when not indented).
fn tojson(value: Value, indent: Option<usize>) -> std::result::Result<Value, JinjaError> {
    let json = serde_json::to_value(&value)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    write_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn write_json(v: &serde_json::Value, indent: Option<usize>, level: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let (item_sep, key_sep) = if indent.is_some() {
        (",", ": ")
    } else {
        (", ", ": ")
    };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                write_json(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push_str(key_sep);
                write_json(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
        other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
    }
}

/// `strftime_now(format)`: the current UTC time with the directives chat templates use
/// (`%Y %m %d %B %b %H %M %S %%`).
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    strftime(secs, &format)
}

fn strftime(secs: i64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('B') => out.push_str(name),
            Some('b') => out.push_str(&name[..3]),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_and_without_the_generation_prompt() {
        let t = ChatTemplate::new(CHATML, "test", "", "").unwrap();
        let m = [
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello"),
        ];
        assert_eq!(
            t.render(&m, false).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
        );
        assert_eq!(
            t.render(&m[..1], true).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_blocks_and_exceptions_behave_as_in_transformers() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first turn must be the user') }}{% endif %}\n{% for m in messages %}\n  [{{ m['content'].strip() }}]\n{% endfor %}";
        let t = ChatTemplate::new(src, "t", "<s>", "</s>").unwrap();
        // trim_blocks and lstrip_blocks: the block lines leave nothing behind.
        assert_eq!(
            t.render(&[Message::new("user", "  a  ")], false).unwrap(),
            "  [a]\n"
        );
        let err = t
            .render(&[Message::new("assistant", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("first turn must be the user"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn generation_tags_are_accepted_and_dropped() {
        let src = "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}";
        let t = ChatTemplate::new(src, "t", "", "").unwrap();
        let m = [Message::new("user", "q"), Message::new("assistant", "a")];
        assert_eq!(t.render(&m, false).unwrap(), "qa");
    }

    #[test]
    fn tojson_writes_python_json() {
        let v = Value::from(minijinja::value::Serde(
            serde_json::json!({"a": [1, "<b>"], "c": {}}),
        ));
        assert_eq!(
            tojson(v.clone(), None).unwrap().to_string(),
            r#"{"a": [1, "<b>"], "c": {}}"#
        );
        assert_eq!(
            tojson(v, Some(2)).unwrap().to_string(),
            "{\n  \"a\": [\n    1,\n    \"<b>\"\n  ],\n  \"c\": {}\n}"
        );
    }

    #[test]
    fn strftime_formats_a_known_instant() {
        // 2024-07-26 13:05:09 UTC.
        assert_eq!(
            strftime(1_721_999_109, "%d %b %Y %H:%M:%S %B %%"),
            "26 Jul 2024 13:05:09 July %"
        );
        assert_eq!(strftime(0, "%Y-%m-%d"), "1970-01-01");
    }

    #[test]
    fn a_bad_template_is_a_one_line_error_naming_its_origin() {
        let err = ChatTemplate::new("{% for %}", "/x/tokenizer_config.json", "", "")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/x/tokenizer_config.json: chat template:"),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }
}
