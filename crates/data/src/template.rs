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
//! - `preference` is a DPO pair in the UltraFeedback-binarized layout: a `prompt` and the
//!   `chosen` and `rejected` answers (strings, or message lists that may repeat the prompt's
//!   messages first). Each answer renders as a chat of the prompt and that answer; only the
//!   answer's assistant turns are response. The rejected rendering rides with the record.

use std::ops::Range;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    Alpaca,
    Chat,
    Preference,
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
        push_turn(&mut text, i, role, content)?;
    }
    Ok(text + "<|assistant|>\n")
}

/// Appends message `i` as `<|role|>\n{content}</s>\n`; returns where its content and end
/// marker lie (`body..end`) in `text`, or the error for a role the layout does not have.
fn push_turn(
    text: &mut String,
    i: usize,
    role: &str,
    content: &str,
) -> std::result::Result<Range<usize>, String> {
    if !ROLES.contains(&role) {
        return Err(format!(
            "messages[{i}]: unknown role `{role}` (system, user or assistant)"
        ));
    }
    text.push_str(&format!("<|{role}|>\n"));
    let body = text.len();
    text.push_str(content);
    text.push_str(CHAT_END_OF_TURN);
    let end = text.len();
    text.push('\n');
    Ok(body..end)
}

/// The roles a chat message may have.
const ROLES: [&str; 3] = ["system", "user", "assistant"];

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

/// A preference pair; extra fields (`messages`, scores, ids) are read and ignored.
#[derive(Debug, Deserialize)]
struct PreferenceRecord {
    prompt: Turns,
    chosen: Turns,
    rejected: Turns,
}

/// A rendered record: its text and the byte ranges of it that are prompt.
pub type Rendered = (String, Vec<Range<usize>>);

/// A rendered record and, for a preference pair, its rejected answer rendered alike (the text
/// is then the chosen one).
pub type RenderedRecord = (Rendered, Option<Rendered>);

impl Template {
    /// The training text of one JSON record and the byte ranges of it that are prompt; the
    /// error says which field is missing or wrong. A preference pair gives its chosen side.
    pub fn render(self, line: &[u8]) -> std::result::Result<Rendered, String> {
        self.render_record(line).map(|(text, _)| text)
    }

    /// [`Self::render`], with a preference pair's rejected side.
    pub fn render_record(self, line: &[u8]) -> std::result::Result<RenderedRecord, String> {
        match self {
            Template::Alpaca => {
                let r: AlpacaRecord = serde_json::from_slice(line).map_err(|e| e.to_string())?;
                let prompt = alpaca_prompt(&r.instruction, &r.input);
                let prompt_bytes = prompt.len();
                let hidden = std::iter::once(0..prompt_bytes).collect();
                Ok(((prompt + &r.output, hidden), None))
            }
            Template::Chat => {
                let r: ChatRecord = serde_json::from_slice(line).map_err(|e| e.to_string())?;
                Ok((render_turns(&chat_messages(r)?, 0)?, None))
            }
            Template::Preference => {
                let r: PreferenceRecord =
                    serde_json::from_slice(line).map_err(|e| e.to_string())?;
                render_pair(r).map(|(chosen, rejected)| (chosen, Some(rejected)))
            }
        }
    }
}

/// Both sides of a pair, each the prompt's messages then that answer's (an answer that
/// repeats the prompt's messages first, as UltraFeedback's do, has them dropped).
fn render_pair(r: PreferenceRecord) -> std::result::Result<(Rendered, Rendered), String> {
    let prompt = r.prompt.into_messages("user");
    let answer = |turns: Turns, side: &str| -> std::result::Result<Vec<Message>, String> {
        let mut messages = turns.into_messages("assistant");
        if messages.starts_with(&prompt) {
            messages.drain(..prompt.len());
        }
        match messages.iter().any(|m| m.role == "assistant") {
            true => Ok(messages),
            false => Err(format!("the {side} answer has no assistant turn")),
        }
    };
    let (chosen, rejected) = (answer(r.chosen, "chosen")?, answer(r.rejected, "rejected")?);
    if chosen == rejected {
        return Err("chosen and rejected are identical: the pair prefers nothing".into());
    }
    let side = |answer: Vec<Message>| {
        let mut turns = prompt.clone();
        turns.extend(answer);
        render_turns(&turns, prompt.len())
    };
    Ok((side(chosen)?, side(rejected)?))
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

/// `<|role|>\n{content}</s>\n` per message; the contents and end markers of the assistant
/// messages from `response_from` on are the response, the rest is prompt.
fn render_turns(
    messages: &[Message],
    response_from: usize,
) -> std::result::Result<Rendered, String> {
    let mut text = String::new();
    let mut hidden: Vec<Range<usize>> = Vec::new();
    let mut hide = |range: Range<usize>| match hidden.last_mut() {
        Some(last) if last.end == range.start => last.end = range.end,
        _ => hidden.push(range),
    };
    for (i, m) in messages.iter().enumerate() {
        let start = text.len();
        let body = push_turn(&mut text, i, &m.role, &m.content)?;
        match i >= response_from && m.role == "assistant" {
            true => {
                hide(start..body.start);
                hide(body.end..text.len());
            }
            false => hide(start..text.len()),
        }
    }
    let answers = &messages[response_from.min(messages.len())..];
    if !answers.iter().any(|m| m.role == "assistant") {
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
    fn preference_pairs_render_both_answers_after_one_prompt() {
        // UltraFeedback-binarized: each answer repeats the prompt as its first message.
        let line = br#"{"prompt": "Hi", "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}], "score_chosen": 8.0}"#;
        let ((chosen, hidden), rejected) = Template::Preference.render_record(line).expect("pair");
        let (rejected, rejected_hidden) = rejected.expect("rejected side");
        assert_eq!(chosen, "<|user|>\nHi</s>\n<|assistant|>\nHello.</s>\n");
        assert_eq!(rejected, "<|user|>\nHi</s>\n<|assistant|>\nGo away.</s>\n");
        assert_eq!(response(&chosen, &hidden), "Hello.</s>");
        assert_eq!(response(&rejected, &rejected_hidden), "Go away.</s>");
        // Plain strings: the prompt is a user turn, each answer an assistant turn.
        let strings = br#"{"prompt": "Hi", "chosen": "Hello.", "rejected": "Go away."}"#;
        let ((text, _), other) = Template::Preference.render_record(strings).expect("pair");
        assert_eq!((text, other.map(|o| o.0)), (chosen, Some(rejected)));
        // An assistant turn inside the prompt stays prompt.
        let multi = br#"{"prompt": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}, {"role": "user", "content": "C"}], "chosen": "D", "rejected": "E"}"#;
        let ((text, hidden), _) = Template::Preference.render_record(multi).expect("pair");
        assert_eq!(response(&text, &hidden), "D</s>");
    }

    #[test]
    fn bad_pairs_say_what_is_wrong() {
        for (line, expected) in [
            (
                &br#"{"prompt": "Hi", "chosen": "Same.", "rejected": "Same."}"#[..],
                "identical",
            ),
            (
                br#"{"prompt": "Hi", "chosen": [{"role": "user", "content": "Hi"}], "rejected": "No."}"#,
                "chosen answer has no assistant turn",
            ),
            (
                br#"{"prompt": [{"role": "robot", "content": "Hi"}], "chosen": "Yes.", "rejected": "No."}"#,
                "unknown role `robot`",
            ),
            (br#"{"prompt": "Hi", "chosen": "Yes."}"#, "rejected"),
        ] {
            let err = Template::Preference
                .render_record(line)
                .expect_err("bad pair");
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
