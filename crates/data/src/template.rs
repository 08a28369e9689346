//! Record templates: sources whose records are not plain text but fields to render into one
//! training text, together with the byte ranges that are prompt rather than response (what
//! `loss_on: response` leaves out of the loss).
//! - `alpaca` is the LLM-Adapters / CommonSense-170k layout (`instruction`, `input`, `output`,
//!   `answer`) rendered with its Alpaca-style prompt, the response (`output`) appended, as
//!   CoreNet's `commonsense_170k` dataset trains on it. The prompt is everything before `output`.
//! - `chat` is an SFT conversation: `messages` (a list of `{role, content}`, roles `system`,
//!   `user`, `assistant`), or a `prompt` and a `completion` (strings, or message lists), rendered
//!   in the Zephyr layout alignment-handbook uses for models without a chat template of their
//!   own: `<|role|>\n{content}</s>\n` per message. The response is every assistant message's
//!   content and its `</s>`; the role headers and the other messages are prompt.

use std::ops::Range;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    Alpaca,
    Chat,
}

/// One Alpaca-layout record; extra fields (`answer`) are read and ignored.
#[derive(Debug, Deserialize)]
struct AlpacaRecord {
    instruction: String,
    #[serde(default)]
    input: String,
    output: String,
}

/// The end-of-turn marker of the chat layout (the text of LLaMA's and our tokenizers' EOS).
pub const CHAT_END_OF_TURN: &str = "</s>";

/// Where a checkpoint keeps the chat template of a run on chat data.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// The chat layout as a Jinja chat template, as HF tokenizers carry it (`chat_template` in
/// `tokenizer_config.json`): `apply_chat_template` renders exactly what `template: chat` trains
/// on, and with `add_generation_prompt` opens the assistant's turn as [`chat_prompt`] does.
pub const CHAT_TEMPLATE_JINJA: &str = "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '</s>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";

/// The model input that asks for the next assistant turn: the conversation so far (any roles
/// of system, user, assistant) in the chat layout, then `<|assistant|>\n`.
pub fn chat_prompt(messages: &[(String, String)]) -> std::result::Result<String, String> {
    let mut text = String::new();
    for (i, (role, content)) in messages.iter().enumerate() {
        if !ROLES.contains(&role.as_str()) {
            return Err(format!(
                "messages[{i}]: unknown role `{role}` (system, user or assistant)"
            ));
        }
        text.push_str(&format!("<|{role}|>\n{content}{CHAT_END_OF_TURN}\n"));
    }
    Ok(text + "<|assistant|>\n")
}

/// The roles a chat message may have.
const ROLES: [&str; 3] = ["system", "user", "assistant"];

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: String,
}

/// A string or a message list (a string prompt is a user message, a string completion an
/// assistant message).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Turns {
    Text(String),
    Messages(Vec<Message>),
}

impl Turns {
    fn into_messages(self, role: &str) -> Vec<Message> {
        match self {
            Turns::Text(content) => vec![Message {
                role: role.into(),
                content,
            }],
            Turns::Messages(m) => m,
        }
    }
}

#[derive(Debug, Deserialize)]
struct ChatRecord {
    messages: Option<Vec<Message>>,
    prompt: Option<Turns>,
    completion: Option<Turns>,
}

/// A rendered record: its text and the byte ranges of it that are prompt.
pub type Rendered = (String, Vec<Range<usize>>);

impl Template {
    /// The training text of one JSON record and the byte ranges of it that are prompt; the
    /// error says which field is missing or wrong.
    pub fn render(self, line: &[u8]) -> std::result::Result<Rendered, String> {
        match self {
            Template::Alpaca => {
                let r: AlpacaRecord = serde_json::from_slice(line).map_err(|e| e.to_string())?;
                let prompt = alpaca_prompt(&r.instruction, &r.input);
                let prompt_bytes = prompt.len();
                let hidden = std::iter::once(0..prompt_bytes).collect();
                Ok((prompt + &r.output, hidden))
            }
            Template::Chat => {
                let r: ChatRecord = serde_json::from_slice(line).map_err(|e| e.to_string())?;
                render_chat(&chat_messages(r)?)
            }
        }
    }
}

/// The conversation of a chat record, from `messages` or from `prompt` + `completion`.
fn chat_messages(r: ChatRecord) -> std::result::Result<Vec<Message>, String> {
    match (r.messages, r.prompt, r.completion) {
        (Some(m), None, None) => Ok(m),
        (None, Some(p), Some(c)) => {
            let mut m = p.into_messages("user");
            m.extend(c.into_messages("assistant"));
            Ok(m)
        }
        _ => Err("a chat record has `messages`, or `prompt` and `completion`".into()),
    }
}

/// `<|role|>\n{content}</s>\n` per message; assistant contents and their end marker are the
/// response, the rest is prompt.
fn render_chat(messages: &[Message]) -> std::result::Result<Rendered, String> {
    let mut text = String::new();
    let mut hidden: Vec<Range<usize>> = Vec::new();
    let mut hide = |range: Range<usize>| match hidden.last_mut() {
        Some(last) if last.end == range.start => last.end = range.end,
        _ => hidden.push(range),
    };
    for (i, m) in messages.iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            return Err(format!(
                "messages[{i}]: unknown role `{}` (system, user or assistant)",
                m.role
            ));
        }
        let start = text.len();
        text.push_str(&format!("<|{}|>\n", m.role));
        let body = text.len();
        text.push_str(&m.content);
        text.push_str(CHAT_END_OF_TURN);
        let end = text.len();
        text.push('\n');
        match m.role == "assistant" {
            true => {
                hide(start..body);
                hide(end..text.len());
            }
            false => hide(start..text.len()),
        }
    }
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err("the conversation has no assistant turn to train on".into());
    }
    Ok((text, hidden))
}

/// LLM-Adapters' prompt up to and including `### Response:\n` (the no-input form when `input`
/// is empty).
pub fn alpaca_prompt(instruction: &str, input: &str) -> String {
    match input.is_empty() {
        true => format!(
            "Below is an instruction that describes a task. Write a response that appropriately completes the request. \n\n### Instruction:\n{instruction}\n\n### Response:\n"
        ),
        false => format!(
            "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request. \n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_commonsense_record_with_and_without_input() {
        let line = br#"{"instruction": "Is the sky blue?", "input": "", "output": "the correct answer is true", "answer": "true"}"#;
        let (text, prompt) = Template::Alpaca.render(line).expect("render");
        assert!(text.starts_with("Below is an instruction that describes a task. Write"));
        assert!(text.ends_with(
            "### Instruction:\nIs the sky blue?\n\n### Response:\nthe correct answer is true"
        ));
        let response = text.len() - "the correct answer is true".len();
        assert!(
            prompt.len() == 1 && prompt[0] == (0..response),
            "{prompt:?}"
        );
        let line = br#"{"instruction": "Pick one.", "input": "a or b", "output": "a"}"#;
        let (text, prompt) = Template::Alpaca.render(line).expect("render");
        assert!(text.contains("paired with an input"));
        assert!(text.ends_with("### Input:\na or b\n\n### Response:\na"));
        assert_eq!(&text[prompt[0].end..], "a");
    }

    /// The response of a rendered chat: the text outside the prompt ranges.
    fn response(text: &str, hidden: &[Range<usize>]) -> String {
        let mut at = 0;
        let mut out = String::new();
        for r in hidden {
            out.push_str(&text[at..r.start]);
            at = r.end;
        }
        out + &text[at..]
    }

    #[test]
    fn chats_render_in_the_zephyr_layout_with_assistant_turns_as_response() {
        let line = br#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]}"#;
        let (text, hidden) = Template::Chat.render(line).expect("render");
        assert_eq!(
            text,
            "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello.</s>\n<|user|>\nBye</s>\n<|assistant|>\nBye!</s>\n"
        );
        assert_eq!(response(&text, &hidden), "Hello.</s>Bye!</s>");
        assert_eq!(
            hidden.len(),
            3,
            "neighbouring prompt ranges merge: {hidden:?}"
        );
        let pair = br#"{"prompt": "Hi", "completion": "Hello."}"#;
        let (text, hidden) = Template::Chat.render(pair).expect("render");
        assert_eq!(text, "<|user|>\nHi</s>\n<|assistant|>\nHello.</s>\n");
        assert_eq!(response(&text, &hidden), "Hello.</s>");
        let lists = br#"{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello."}]}"#;
        assert_eq!(Template::Chat.render(lists).expect("render").0, text);
    }

    #[test]
    fn the_generation_prompt_opens_the_assistant_turn() {
        let turns = [("user".to_string(), "Hi".to_string())];
        assert_eq!(
            chat_prompt(&turns).expect("prompt"),
            "<|user|>\nHi</s>\n<|assistant|>\n"
        );
        assert!(chat_prompt(&[("bot".into(), "x".into())]).is_err());
    }

    #[test]
    fn bad_chats_say_what_is_wrong() {
        for (line, expected) in [
            (
                &br#"{"messages": [{"role": "user", "content": "Hi"}]}"#[..],
                "no assistant turn",
            ),
            (
                br#"{"messages": [{"role": "bot", "content": "Hi"}]}"#,
                "unknown role `bot`",
            ),
            (br#"{"prompt": "Hi"}"#, "`prompt` and `completion`"),
            (br#"{"messages": [{"role": "user"}]}"#, "content"),
        ] {
            let err = Template::Chat.render(line).expect_err("bad chat");
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn a_record_without_its_fields_says_which() {
        let err = Template::Alpaca
            .render(br#"{"instruction": "x"}"#)
            .expect_err("no output");
        assert!(err.contains("output"), "{err}");
        assert!(Template::Alpaca.render(b"not json").is_err());
    }
}
