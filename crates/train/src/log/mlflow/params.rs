//! A run's params: the resolved recipe flattened to dotted keys, and cut to what MLflow takes.

use std::collections::BTreeMap;

use serde_json::Value;

use super::batch::{mlflow_key, truncate_chars, MAX_PARAM_VALUE_CHARS};
use crate::recipe::overrides::parse_yaml_value;

/// A YAML document (the resolved recipe) as MLflow params: dotted keys to the leaves
/// (`model.model_dim` → `192`), lists and empty maps as their JSON text (`data.sources` →
/// `[{"name":"a",...}]`), strings as they are, null as `null`; sorted by key. A document
/// that does not parse gives no params (with a warning).
pub fn recipe_params(yaml: &str) -> Vec<(String, String)> {
    let value = match parse_yaml_value(yaml, "resolved recipe") {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "recipe YAML does not parse; no MLflow params");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    flatten("", &value, &mut out);
    out.sort();
    out
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = match prefix.is_empty() {
                    true => k.clone(),
                    false => format!("{prefix}.{k}"),
                };
                flatten(&key, v, out);
            }
        }
        Value::Null if prefix.is_empty() => {}
        leaf => {
            let key = if prefix.is_empty() { "recipe" } else { prefix };
            let text = match leaf {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push((key.to_owned(), text));
        }
    }
}

/// Params as MLflow takes them: keys made acceptable, values cut to 6000 characters, one value
/// per key (the last).
pub(super) fn prepare_params(params: &[(String, String)]) -> Vec<(String, String)> {
    let map: BTreeMap<String, String> = params
        .iter()
        .map(|(k, v)| (mlflow_key(k), truncate_chars(v, MAX_PARAM_VALUE_CHARS)))
        .collect();
    map.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_params_flatten_to_sorted_dotted_keys() {
        let yaml = "\
run: { name: test, dir: /tmp/run }
model:
  model_dim: 192
  qkv_multipliers: [0.5, 1.0]
  normalize_qk_projections: true
data:
  sources:
    - { name: a, weight: 1.0 }
  seq_len: 32
schedule: { max_lr: 3.0e-3 }
logging: { dir: null }
optimizer: {}
";
        let params = recipe_params(yaml);
        let expect: Vec<(String, String)> = [
            ("data.seq_len", "32"),
            ("data.sources", r#"[{"name":"a","weight":1.0}]"#),
            ("logging.dir", "null"),
            ("model.model_dim", "192"),
            ("model.normalize_qk_projections", "true"),
            ("model.qkv_multipliers", "[0.5,1.0]"),
            ("optimizer", "{}"),
            ("run.dir", "/tmp/run"),
            ("run.name", "test"),
            ("schedule.max_lr", "0.003"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(params, expect);
    }

    #[test]
    fn recipe_params_of_bad_or_empty_yaml_are_empty() {
        assert!(recipe_params("a: [1, 2").is_empty());
        assert!(recipe_params("").is_empty());
        assert_eq!(recipe_params("42"), vec![("recipe".into(), "42".into())]);
    }

    #[test]
    fn param_values_truncate_on_characters() {
        let s = "é".repeat(7000);
        let t = truncate_chars(&s, MAX_PARAM_VALUE_CHARS);
        assert_eq!(t.chars().count(), MAX_PARAM_VALUE_CHARS);
        assert_eq!(truncate_chars("short", 10), "short");
        let prepared = prepare_params(&[("k".into(), "1".into()), ("k".into(), "2".into())]);
        assert_eq!(prepared, vec![("k".to_owned(), "2".to_owned())]);
    }
}
