//! Record templates: sources whose records are not plain text but fields to render into one
//! training text. `alpaca` is the LLM-Adapters / CommonSense-170k layout (`instruction`, `input`,
//! `output`, `answer`) rendered with its Alpaca-style prompt, the response (`output`) appended,
//! as CoreNet's `commonsense_170k` dataset trains on it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    Alpaca,
}

/// One Alpaca-layout record; extra fields (`answer`) are read and ignored.
#[derive(Debug, Deserialize)]
struct AlpacaRecord {
    instruction: String,
    #[serde(default)]
    input: String,
    output: String,
}

impl Template {
    /// The training text of one JSON record and the length in bytes of its prompt (the text
    /// before the response, which `loss_on: response` leaves out of the loss); the error says
    /// which field is missing or wrong.
    pub fn render(self, line: &[u8]) -> std::result::Result<(String, usize), String> {
        match self {
            Template::Alpaca => {
                let r: AlpacaRecord = serde_json::from_slice(line).map_err(|e| e.to_string())?;
                let prompt = alpaca_prompt(&r.instruction, &r.input);
                let prompt_bytes = prompt.len();
                Ok((prompt + &r.output, prompt_bytes))
            }
        }
    }
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
        assert_eq!(&text[prompt..], "the correct answer is true");
        let line = br#"{"instruction": "Pick one.", "input": "a or b", "output": "a"}"#;
        let (text, prompt) = Template::Alpaca.render(line).expect("render");
        assert!(text.contains("paired with an input"));
        assert!(text.ends_with("### Input:\na or b\n\n### Response:\na"));
        assert_eq!(&text[prompt..], "a");
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
