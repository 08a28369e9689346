//! Commonsense reasoning as LLM-Adapters scores it (the eight test sets CoreNet's OpenELM PEFT
//! results use: boolq, piqa, social_i_qa, hellaswag, winogrande, ARC-Easy, ARC-Challenge,
//! openbookqa). Each item is an Alpaca-layout record (`instruction`, `input`, `answer`); the
//! model sees the Alpaca prompt and either
//! - generates: greedy decoding, and the first candidate label found in the text is its answer
//!   (LLM-Adapters' `extract_answer`, which searches `true|false`, `solution1|solution2`,
//!   `answer1|…|answer5`, `ending1|…|ending4` or `option1|option2` per task), or
//! - scores: each candidate's log-likelihood as the response `the correct answer is <label>`,
//!   the most likely one is its answer (no decoding; exact and cheaper for tiny models).
//!
//! The candidates come from the instruction's own `Answer format: a/b/c` line, which every
//! CommonSense-170k and LLM-Adapters test record ends with; a task's default labels stand in
//! when a record has none.

use std::path::Path;

use regex::Regex;
use serde::{Deserialize, Serialize};

use corenet_data::template::alpaca_prompt;
use corenet_data::TextTokenizer;
use corenet_model::generate::{generate, SamplingConfig};
use corenet_model::OpenElm;

use crate::error::{Error, Result};
use crate::request::Request;
use crate::scoring::Scorer;

/// The response text the fine-tuning records end with, before the label.
pub const RESPONSE_PREFIX: &str = "the correct answer is ";

/// How an item's answer is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerMode {
    /// Greedy generation, then the first candidate label in the generated text.
    Generate,
    /// The candidate whose response has the highest log-likelihood.
    Loglikelihood,
}

/// One test record (LLM-Adapters' `dataset/<task>/test.json` layout; `output` is ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CommonsenseItem {
    pub instruction: String,
    #[serde(default)]
    pub input: String,
    pub answer: String,
}

impl CommonsenseItem {
    /// The prompt the model continues.
    pub fn prompt(&self) -> String {
        alpaca_prompt(&self.instruction, &self.input)
    }

    /// The labels the instruction's `Answer format:` line offers, else `defaults`.
    pub fn candidates(&self, defaults: &[&str]) -> Vec<String> {
        let from_line = self
            .instruction
            .rsplit_once("Answer format:")
            .map(|(_, line)| {
                line.lines()
                    .next()
                    .unwrap_or_default()
                    .split('/')
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        match from_line.len() >= 2 {
            true => from_line,
            false => defaults.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// LLM-Adapters' candidate labels of a task, by its dataset folder name (case-insensitive,
/// `-` and `_` alike); empty for a task it does not know.
pub fn default_candidates(task: &str) -> &'static [&'static str] {
    match task.to_ascii_lowercase().replace('-', "_").as_str() {
        "boolq" => &["true", "false"],
        "piqa" => &["solution1", "solution2"],
        "social_i_qa" | "siqa" | "arc_easy" | "arc_challenge" | "openbookqa" | "obqa" => {
            &["answer1", "answer2", "answer3", "answer4", "answer5"]
        }
        "hellaswag" => &["ending1", "ending2", "ending3", "ending4"],
        "winogrande" => &["option1", "option2"],
        _ => &[],
    }
}

/// Reads a task file: a JSON array (LLM-Adapters' `test.json`) or JSON lines.
pub fn load_items(path: &Path) -> Result<Vec<CommonsenseItem>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    let bad = |index: usize, message: String| Error::EvalItem {
        path: path.to_path_buf(),
        index,
        message,
    };
    let items = match text.trim_start().starts_with('[') {
        true => {
            let values: Vec<serde_json::Value> = serde_json::from_str(&text)
                .map_err(|e| bad(0, format!("not a JSON array: {e}")))?;
            values
                .into_iter()
                .enumerate()
                .map(|(i, v)| serde_json::from_value(v).map_err(|e| bad(i, e.to_string())))
                .collect::<Result<Vec<CommonsenseItem>>>()?
        }
        false => text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str(line).map_err(|e| Error::EvalLine {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: e.to_string(),
                })
            })
            .collect::<Result<Vec<CommonsenseItem>>>()?,
    };
    if items.is_empty() {
        return Err(Error::EmptyTask {
            path: path.to_path_buf(),
        });
    }
    Ok(items)
}

/// The first of `candidates` in `text` (leftmost; the longer label on a tie), as
/// `re.findall("a|b|…", text)[0]`.
pub fn extract_answer(text: &str, candidates: &[String]) -> Option<String> {
    let mut labels: Vec<&String> = candidates.iter().collect();
    labels.sort_by_key(|c| std::cmp::Reverse(c.len()));
    let pattern = labels
        .iter()
        .map(|c| regex::escape(c))
        .collect::<Vec<_>>()
        .join("|");
    let re = Regex::new(&pattern).ok()?;
    re.find(text).map(|m| m.as_str().to_string())
}

/// One item's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemOutcome {
    pub index: usize,
    pub answer: String,
    /// The label the model chose (None: generation named no candidate).
    pub predicted: Option<String>,
    /// The generated text (generate mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generated: Option<String>,
}

/// A task's accuracy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommonsenseReport {
    pub task: String,
    pub mode: AnswerMode,
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// Items whose generated text named no candidate (counted wrong, as LLM-Adapters does).
    pub unanswered: usize,
    pub items: Vec<ItemOutcome>,
}

impl CommonsenseReport {
    fn new(task: &str, mode: AnswerMode, items: Vec<ItemOutcome>) -> Self {
        let correct = items
            .iter()
            .filter(|o| o.predicted.as_deref() == Some(o.answer.as_str()))
            .count();
        let n = items.len();
        CommonsenseReport {
            task: task.to_string(),
            mode,
            n,
            correct,
            accuracy: if n == 0 {
                0.0
            } else {
                correct as f64 / n as f64
            },
            unanswered: items.iter().filter(|o| o.predicted.is_none()).count(),
            items,
        }
    }
}

/// Candidates of item `index`, or an error naming the task file and item.
fn item_candidates(
    task: &str,
    path: &Path,
    index: usize,
    item: &CommonsenseItem,
) -> Result<Vec<String>> {
    let candidates = item.candidates(default_candidates(task));
    if candidates.is_empty() {
        return Err(Error::EvalItem {
            path: path.to_path_buf(),
            index,
            message: format!(
                "no `Answer format: a/b` line in the instruction and `{task}` has no default labels"
            ),
        });
    }
    Ok(candidates)
}

/// Where a task's items come from, for errors.
pub struct TaskFile<'a> {
    pub name: &'a str,
    pub path: &'a Path,
}

/// Accuracy by greedy generation of up to `max_new_tokens` after BOS + prompt.
pub fn evaluate_generate(
    model: &OpenElm,
    tokenizer: &dyn TextTokenizer,
    task: &TaskFile<'_>,
    items: &[CommonsenseItem],
    max_new_tokens: usize,
) -> Result<CommonsenseReport> {
    let sampling = SamplingConfig {
        max_new_tokens,
        eos_id: Some(i64::from(tokenizer.eos_id())),
        ..SamplingConfig::default()
    };
    let mut outcomes = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let candidates = item_candidates(task.name, task.path, index, item)?;
        let prompt: Vec<i64> = std::iter::once(tokenizer.bos_id())
            .chain(tokenizer.encode(&item.prompt())?)
            .map(i64::from)
            .collect();
        let new = generate(model, &prompt, &sampling, true)?;
        let ids: Vec<u32> = new
            .iter()
            .filter(|&&id| id != i64::from(tokenizer.eos_id()))
            .map(|&id| id as u32)
            .collect();
        let text = tokenizer.decode(&ids)?;
        outcomes.push(ItemOutcome {
            index,
            answer: item.answer.clone(),
            predicted: extract_answer(&text, &candidates),
            generated: Some(text),
        });
    }
    Ok(CommonsenseReport::new(
        task.name,
        AnswerMode::Generate,
        outcomes,
    ))
}

/// Accuracy by the most likely `the correct answer is <label>` response.
pub fn evaluate_loglikelihood(
    scorer: &mut dyn Scorer,
    task: &TaskFile<'_>,
    items: &[CommonsenseItem],
) -> Result<CommonsenseReport> {
    let mut requests = Vec::new();
    let mut spans = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let candidates = item_candidates(task.name, task.path, index, item)?;
        let prompt = item.prompt();
        spans.push((requests.len(), candidates.clone()));
        requests.extend(candidates.iter().map(|c| Request {
            context: prompt.clone(),
            continuation: format!("{RESPONSE_PREFIX}{c}"),
        }));
    }
    let scores = scorer.loglikelihoods(&requests)?;
    let outcomes = items
        .iter()
        .zip(spans)
        .enumerate()
        .map(|(index, (item, (first, candidates)))| {
            let best = (0..candidates.len())
                .max_by(|&a, &b| scores[first + a].total_cmp(&scores[first + b]))
                .map(|i| candidates[i].clone());
            ItemOutcome {
                index,
                answer: item.answer.clone(),
                predicted: best,
                generated: None,
            }
        })
        .collect();
    Ok(CommonsenseReport::new(
        task.name,
        AnswerMode::Loglikelihood,
        outcomes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(instruction: &str, answer: &str) -> CommonsenseItem {
        CommonsenseItem {
            instruction: instruction.into(),
            input: String::new(),
            answer: answer.into(),
        }
    }

    #[test]
    fn candidates_come_from_the_answer_format_line() {
        let it = item(
            "Please choose the correct solution to the question: x\n\nSolution1: a\n\nSolution2: b\n\nAnswer format: solution1/solution2",
            "solution1",
        );
        assert_eq!(it.candidates(&[]), ["solution1", "solution2"]);
        let bare = item("Is the sky blue?", "true");
        assert_eq!(
            bare.candidates(default_candidates("boolq")),
            ["true", "false"]
        );
        assert_eq!(default_candidates("ARC-Challenge").len(), 5);
        assert!(default_candidates("mmlu").is_empty());
    }

    #[test]
    fn extraction_takes_the_first_label_as_llm_adapters() {
        let labels = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let tf = labels(&["true", "false"]);
        assert_eq!(
            extract_answer("the correct answer is false, not true", &tf).as_deref(),
            Some("false")
        );
        assert_eq!(extract_answer("no idea", &tf), None);
        let many = labels(&["answer1", "answer10"]);
        assert_eq!(
            extract_answer("answer10", &many).as_deref(),
            Some("answer10")
        );
        let dots = labels(&["a.b", "c"]);
        assert_eq!(extract_answer("axb c", &dots).as_deref(), Some("c"));
    }

    #[test]
    fn task_files_are_json_arrays_or_lines_and_errors_name_the_item() {
        let dir = tempfile::tempdir().expect("tempdir");
        let array = dir.path().join("test.json");
        std::fs::write(
            &array,
            r#"[{"instruction": "q1", "input": "", "output": "the correct answer is true", "answer": "true"},
                {"instruction": "q2", "answer": "false"}]"#,
        )
        .expect("write");
        let items = load_items(&array).expect("array");
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].answer, "false");
        let broken = dir.path().join("broken.json");
        std::fs::write(&broken, r#"[{"instruction": "q"}, {"answer": "x"}]"#).expect("write");
        let err = load_items(&broken).expect_err("no answer").to_string();
        assert!(
            err.contains("broken.json") && err.contains("item 0"),
            "{err}"
        );
        let lines = dir.path().join("test.jsonl");
        std::fs::write(
            &lines,
            "{\"instruction\": \"q\", \"answer\": \"true\"}\n\n{\"instruction\": \"q\"}\n",
        )
        .expect("write");
        let err = load_items(&lines).expect_err("no answer").to_string();
        assert!(
            err.contains("test.jsonl") && err.contains("line 3") && err.contains("answer"),
            "{err}"
        );
        let task = TaskFile {
            name: "mystery",
            path: &array,
        };
        let err = item_candidates(task.name, task.path, 0, &items[0])
            .expect_err("no labels")
            .to_string();
        assert!(err.contains("mystery") && err.contains("item 0"), "{err}");
    }
}
