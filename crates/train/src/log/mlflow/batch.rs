//! What one `runs/log-batch` request may hold, by MLflow's limits (`mlflow/utils/validation.py`):
//! metric points and key-value entries under keys MLflow accepts, split into requests that stay
//! within the counts and the byte limit.

use serde_json::{json, Value};

/// Metric points in one request.
pub const MAX_METRICS_PER_BATCH: usize = 1000;
/// Params, or tags, in one request.
pub const MAX_PARAMS_TAGS_PER_BATCH: usize = 100;
pub const MAX_PARAM_VALUE_CHARS: usize = 6000;
pub const MAX_TAG_VALUE_CHARS: usize = 8000;
pub const MAX_KEY_CHARS: usize = 250;
/// MLflow refuses requests over 1,000,000 bytes; stay below with room for the envelope.
pub(super) const MAX_BATCH_BYTES: usize = 900_000;

/// One metric point.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Point {
    pub(super) key: String,
    pub(super) value: f64,
    pub(super) timestamp: i64,
    pub(super) step: u64,
}

impl Point {
    pub(super) fn to_json(&self) -> Value {
        // Protobuf's JSON mapping, which MLflow parses requests with, spells non-finite
        // doubles as strings.
        let value = if self.value.is_nan() {
            json!("NaN")
        } else if self.value == f64::INFINITY {
            json!("Infinity")
        } else if self.value == f64::NEG_INFINITY {
            json!("-Infinity")
        } else {
            json!(self.value)
        };
        json!({ "key": self.key, "value": value, "timestamp": self.timestamp, "step": self.step })
    }
}

/// `key` as MLflow accepts a metric, param or tag name: alphanumerics, `_ - . / : ` and
/// spaces, at most 250 characters, and no path that normalises to another name (`a//b`,
/// `/a`, `a/../b`: such keys get `_` for `/`). Other characters become `_`.
pub fn mlflow_key(key: &str) -> String {
    let mut k: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-./: ".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(MAX_KEY_CHARS)
        .collect();
    if k.contains('/')
        && k.split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        k = k.replace('/', "_");
    }
    if k.is_empty() || k == "." || k == ".." {
        k.insert(0, '_');
        k.truncate(MAX_KEY_CHARS);
    }
    k
}

/// `s` cut to at most `max` characters (MLflow's limits count characters, not bytes).
pub(super) fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => s[..end].to_owned(),
        None => s.to_owned(),
    }
}

/// Splits `items` into consecutive runs of at most `max_count` items and `max_bytes` bytes
/// (by `size`); an item larger than `max_bytes` goes alone.
pub(super) fn chunks<T>(
    items: &[T],
    max_count: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let n = size(item);
        if i > start && (i - start == max_count || bytes + n > max_bytes) {
            out.push(&items[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += n;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// One `{"key": ..., "value": ...}` entry of a log-batch request.
pub(super) fn key_value(key: &str, value: &str) -> Value {
    json!({ "key": key, "value": value })
}

/// Bytes `entry` adds to a request body (its JSON and a comma).
pub(super) fn json_bytes(entry: &Value) -> usize {
    entry.to_string().len() + 1
}

#[cfg(test)]
mod tests {
    use super::super::params::prepare_params;
    use super::*;

    #[test]
    fn keys_are_made_acceptable() {
        assert_eq!(mlflow_key("loss/ce"), "loss/ce");
        assert_eq!(
            mlflow_key("data.sources[0].weight"),
            "data.sources_0_.weight"
        );
        assert_eq!(mlflow_key("a//b"), "a__b");
        assert_eq!(mlflow_key("/abs"), "_abs");
        assert_eq!(mlflow_key("x/../y"), "x_.._y");
        assert_eq!(mlflow_key(""), "_");
        assert_eq!(mlflow_key(".."), "_..");
        assert_eq!(mlflow_key(&"k".repeat(300)).len(), MAX_KEY_CHARS);
    }

    #[test]
    fn batches_respect_mlflow_limits() {
        let points: Vec<u32> = (0..2500).collect();
        let sizes: Vec<usize> = chunks(&points, MAX_METRICS_PER_BATCH, MAX_BATCH_BYTES, |_| 80)
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, [1000, 1000, 500]);

        // 250 params of 6000 characters: 100 would be 600 kB, under the byte limit.
        let params: Vec<(String, String)> = (0..250)
            .map(|i| (format!("p{i:03}"), "v".repeat(10_000)))
            .collect();
        let prepared = prepare_params(&params);
        assert!(prepared
            .iter()
            .all(|(_, v)| v.chars().count() == MAX_PARAM_VALUE_CHARS));
        let entries: Vec<Value> = prepared.iter().map(|(k, v)| key_value(k, v)).collect();
        let batches = chunks(
            &entries,
            MAX_PARAMS_TAGS_PER_BATCH,
            MAX_BATCH_BYTES,
            json_bytes,
        );
        let sizes: Vec<usize> = batches.iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);

        // Values that escape to twice their length hit the byte limit before the count.
        let quoted: Vec<Value> = (0..100)
            .map(|i| key_value(&format!("q{i}"), &"\"".repeat(MAX_PARAM_VALUE_CHARS)))
            .collect();
        let batches = chunks(
            &quoted,
            MAX_PARAMS_TAGS_PER_BATCH,
            MAX_BATCH_BYTES,
            json_bytes,
        );
        assert!(batches.len() > 1);
        for batch in &batches {
            let body = json!({ "run_id": "r", "params": batch }).to_string();
            assert!(body.len() < 1_000_000, "{}", body.len());
        }
        assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), 100);

        // One oversized item still goes, alone.
        let sizes: Vec<usize> = chunks(&[1, 2, 3], 10, 5, |&n| if n == 2 { 100 } else { 1 })
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, [1, 1, 1]);
        assert!(chunks::<u8>(&[], 10, 10, |_| 1).is_empty());
    }

    #[test]
    fn non_finite_values_use_protobuf_json_spellings() {
        let point = |value| Point {
            key: "m".into(),
            value,
            timestamp: 7,
            step: 3,
        };
        assert_eq!(point(f64::NAN).to_json()["value"], "NaN");
        assert_eq!(point(f64::INFINITY).to_json()["value"], "Infinity");
        assert_eq!(point(f64::NEG_INFINITY).to_json()["value"], "-Infinity");
        assert_eq!(
            point(1.5).to_json(),
            json!({ "key": "m", "value": 1.5, "timestamp": 7, "step": 3 })
        );
    }
}
