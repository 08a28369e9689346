//! A run's params: the resolved recipe flattened to dotted keys, and cut to what MLflow takes.

use std::collections::BTreeMap;

use serde_json::Value;

use super::batch::{mlflow_key, truncate_chars, MAX_PARAM_VALUE_CHARS};

/// A YAML document (the resolved recipe) as MLflow params: dotted keys to the leaves
/// (`model.model_dim` → `192`), lists and empty maps as their JSON text (`data.sources` →
/// `[{"name":"a",...}]`), strings as they are, null as `null`; sorted by key. A document
/// that does not parse gives no params (with a warning).
pub fn recipe_params(yaml: &str) -> Vec<(String, String)> {
    let value: serde_norway::Value = match serde_norway::from_str(yaml) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "recipe YAML does not parse; no MLflow params");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    flatten_yaml("", &value, &mut out);
    out.sort();
    out
}

fn flatten_yaml(prefix: &str, value: &serde_norway::Value, out: &mut Vec<(String, String)>) {
    use serde_norway::Value as Y;
    match value {
        Y::Mapping(map) if !map.is_empty() => {
            for (k, v) in map {
                let k = json_text(&yaml_to_json(k));
                let key = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_yaml(&key, v, out);
            }
        }
        Y::Tagged(tagged) => flatten_yaml(prefix, &tagged.value, out),
        Y::Null if prefix.is_empty() => {}
        leaf => {
            let key = if prefix.is_empty() { "recipe" } else { prefix };
            out.push((key.to_owned(), json_text(&yaml_to_json(leaf))));
        }
    }
}

/// A string as itself, anything else as its JSON text.
fn json_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn yaml_to_json(value: &serde_norway::Value) -> Value {
    use serde_norway::Value as Y;
    match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into()
            } else if let Some(u) = n.as_u64() {
                u.into()
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or_else(|| Value::String(n.to_string()), Value::Number)
            }
        }
        Y::String(s) => Value::String(s.clone()),
        Y::Sequence(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Y::Mapping(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (json_text(&yaml_to_json(k)), yaml_to_json(v)))
                .collect(),
        ),
        Y::Tagged(tagged) => yaml_to_json(&tagged.value),
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
