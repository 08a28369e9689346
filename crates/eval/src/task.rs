//! The zero-shot multiple-choice tasks, read from their public jsonl layouts, with
//! lm-evaluation-harness's prompt templates (docs/evaluation.md lists them). Every choice becomes
//! a request `(context, " " + choice)`; WinoGrande instead varies the context per option and
//! scores the shared suffix (the harness's partial evaluation).

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::request::Request;

/// The harness's `target_delimiter`, put before every continuation.
const DELIMITER: &str = " ";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    ArcEasy,
    ArcChallenge,
    Boolq,
    Hellaswag,
    Piqa,
    Sciq,
    Winogrande,
}

impl Task {
    pub const ALL: [Task; 7] = [
        Task::ArcEasy,
        Task::ArcChallenge,
        Task::Boolq,
        Task::Hellaswag,
        Task::Piqa,
        Task::Sciq,
        Task::Winogrande,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Task::ArcEasy => "arc_easy",
            Task::ArcChallenge => "arc_challenge",
            Task::Boolq => "boolq",
            Task::Hellaswag => "hellaswag",
            Task::Piqa => "piqa",
            Task::Sciq => "sciq",
            Task::Winogrande => "winogrande",
        }
    }

    pub fn from_name(name: &str) -> Result<Task> {
        Task::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| {
                let known: Vec<_> = Task::ALL.iter().map(|t| t.name()).collect();
                Error::config(
                    "eval.task",
                    format!("unknown task `{name}` (known: {})", known.join(", ")),
                )
            })
    }

    /// Whether the harness's config of this task lists acc_norm among its metrics.
    pub fn reports_acc_norm(self) -> bool {
        !matches!(self, Task::Boolq | Task::Winogrande)
    }
}

/// One item: a request per choice, the length of each choice's text for acc_norm (in
/// characters, as the harness's Python `len`), and the index of the right choice.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub requests: Vec<Request>,
    pub choice_lengths: Vec<usize>,
    pub gold: usize,
}

/// Reads every item of a task file (one JSON object per line; blank lines are skipped).
pub fn load_docs(task: Task, path: &Path) -> Result<Vec<Doc>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut docs = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io("read", path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let item = Item {
            path,
            line: i + 1,
            value: serde_json::from_str(&line).map_err(|e| Error::EvalLine {
                path: path.to_path_buf(),
                line: i + 1,
                message: format!("not a JSON object: {e}"),
            })?,
        };
        docs.push(item.doc(task)?);
    }
    if docs.is_empty() {
        // An accuracy over no items is not a score; it would print as 0.00 ± 0.00.
        return Err(Error::EmptyTask {
            path: path.to_path_buf(),
        });
    }
    Ok(docs)
}

/// One parsed line, with where it came from for error messages.
struct Item<'a> {
    path: &'a Path,
    line: usize,
    value: Value,
}

impl Item<'_> {
    fn error(&self, field: &str, message: impl Into<String>) -> Error {
        Error::EvalField {
            path: PathBuf::from(self.path),
            line: self.line,
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The value at a dotted path (`choices.text`).
    fn get(&self, field: &str) -> Result<&Value> {
        field
            .split('.')
            .try_fold(&self.value, |v, key| v.get(key))
            .ok_or_else(|| self.error(field, "missing"))
    }

    fn string(&self, field: &str) -> Result<String> {
        self.get(field)?
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| self.error(field, "expected a string"))
    }

    fn strings(&self, field: &str) -> Result<Vec<String>> {
        let list = self
            .get(field)?
            .as_array()
            .ok_or_else(|| self.error(field, "expected a list of strings"))?;
        list.iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| self.error(field, "expected a non-empty list of strings"))
    }

    /// An index given as a number or a numeric string (`label` is either, by dataset copy).
    fn index(&self, field: &str, base: usize, count: usize) -> Result<usize> {
        let v = self.get(field)?;
        let n = v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .ok_or_else(|| self.error(field, format!("expected an integer, got {v}")))?;
        let n = n as usize;
        if n < base || n - base >= count {
            return Err(self.error(field, format!("{n} is not one of the {count} choices")));
        }
        Ok(n - base)
    }

    fn doc(&self, task: Task) -> Result<Doc> {
        match task {
            Task::ArcEasy | Task::ArcChallenge => self.arc(),
            Task::Boolq => self.boolq(),
            Task::Hellaswag => self.hellaswag(),
            Task::Piqa => {
                let context = format!("Question: {}\nAnswer:", self.string("goal")?);
                let choices = vec![self.string("sol1")?, self.string("sol2")?];
                Ok(choice_doc(&context, choices, self.index("label", 0, 2)?))
            }
            Task::Sciq => {
                let context = format!(
                    "{}\nQuestion: {}\nAnswer:",
                    self.string("support")?.trim_start(),
                    self.string("question")?
                );
                let mut choices = Vec::new();
                for field in [
                    "distractor1",
                    "distractor2",
                    "distractor3",
                    "correct_answer",
                ] {
                    choices.push(self.string(field)?);
                }
                Ok(choice_doc(&context, choices, 3))
            }
            Task::Winogrande => self.winogrande(),
        }
    }

    /// HF layout: `question`, `choices: {text: [...], label: [...]}`, `answerKey`.
    fn arc(&self) -> Result<Doc> {
        let context = format!("Question: {}\nAnswer:", self.string("question")?);
        let texts = self.strings("choices.text")?;
        let labels = self.strings("choices.label")?;
        if labels.len() != texts.len() {
            return Err(self.error(
                "choices.label",
                format!("{} labels for {} texts", labels.len(), texts.len()),
            ));
        }
        let key = self.string("answerKey")?;
        let gold = labels.iter().position(|l| *l == key).ok_or_else(|| {
            self.error(
                "answerKey",
                format!("`{key}` is not among the labels {labels:?}"),
            )
        })?;
        Ok(choice_doc(&context, texts, gold))
    }

    /// `passage`, `question`, `answer` (bool; `label` 0/1 is accepted too).
    fn boolq(&self) -> Result<Doc> {
        let context = format!(
            "{}\nQuestion: {}?\nAnswer:",
            self.string("passage")?,
            self.string("question")?
        );
        let gold = match self.value.get("answer") {
            Some(v) => usize::from(
                v.as_bool()
                    .ok_or_else(|| self.error("answer", "expected true or false"))?,
            ),
            None if self.value.get("label").is_some() => self.index("label", 0, 2)?,
            None => return Err(self.error("answer", "missing")),
        };
        Ok(choice_doc(&context, vec!["no".into(), "yes".into()], gold))
    }

    /// The harness's `_process_doc`: query = activity_label + ": " + ctx_a + " " +
    /// capitalize(ctx_b), every text through `preprocess`.
    fn hellaswag(&self) -> Result<Doc> {
        let ctx = format!(
            "{} {}",
            self.string("ctx_a")?,
            capitalize(&self.string("ctx_b")?)
        );
        let query = preprocess(&format!("{}: {ctx}", self.string("activity_label")?));
        let endings = self.strings("endings")?;
        let gold = self.index("label", 0, endings.len())?;
        Ok(choice_doc(
            &query,
            endings.iter().map(|e| preprocess(e)).collect(),
            gold,
        ))
    }

    /// Partial evaluation: context i is the sentence up to `_` with option i filled in; the
    /// continuation is the (stripped) rest of the sentence after `_`, the same for both.
    fn winogrande(&self) -> Result<Doc> {
        let sentence = self.string("sentence")?;
        let blank = sentence
            .find('_')
            .ok_or_else(|| self.error("sentence", "has no `_` blank"))?;
        let suffix = format!("{DELIMITER}{}", sentence[blank + 1..].trim());
        let options = [self.string("option1")?, self.string("option2")?];
        let gold = self.index("answer", 1, 2)?;
        let requests: Vec<Request> = options
            .iter()
            .map(|o| Request {
                context: format!("{}{o}", &sentence[..blank]),
                continuation: suffix.clone(),
            })
            .collect();
        let choice_lengths = requests.iter().map(|r| r.context.chars().count()).collect();
        Ok(Doc {
            requests,
            choice_lengths,
            gold,
        })
    }
}

/// One request per choice, `(context, " " + choice)`.
fn choice_doc(context: &str, choices: Vec<String>, gold: usize) -> Doc {
    Doc {
        choice_lengths: choices.iter().map(|c| c.chars().count()).collect(),
        requests: choices
            .into_iter()
            .map(|c| Request {
                context: context.to_string(),
                continuation: format!("{DELIMITER}{c}"),
            })
            .collect(),
        gold,
    }
}

/// Python's `str.capitalize`: the first character upper-cased, the rest lower-cased.
fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

/// The harness's HellaSwag `preprocess`: strip, " [title]" → ". ", drop `[...]` spans (not
/// crossing a newline, shortest first), then "  " → " ".
pub fn preprocess(text: &str) -> String {
    let text = text.trim().replace(" [title]", ". ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        match after.find([']', '\n']) {
            Some(close) if after.as_bytes()[close] == b']' => {
                out.push_str(&rest[..open]);
                rest = &after[close + 1..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acc_norm_lengths_count_characters_like_python_len() {
        // "naïve café" is 10 characters but 12 UTF-8 bytes.
        let doc = choice_doc("Q:", vec!["naïve café".into(), "plain".into()], 0);
        assert_eq!(doc.choice_lengths, [10, 5]);
        assert_eq!(doc.requests[0].continuation, " naïve café");
    }
}
