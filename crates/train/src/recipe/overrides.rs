//! Recipe value trees: YAML text → `serde_json::Value`, `--set a.b.c=value` overrides and
//! include-style deep merges on that tree, and deserialization into typed configs whose errors
//! name the full key path (`trainer.micro_batchh`), not just the key.
//!
//! Overrides work on the untyped tree, before deserialization, so every field can be overridden
//! without a CLI flag per field, and the resolved tree can be saved as the run's recipe.
//!
//! ```text
//! --set trainer.micro_batch=8          integer
//! --set schedule.max_lr=3e-4           float
//! --set logging.tensorboard=false      bool
//! --set data.sources=[a.jsonl,b.jsonl] flow list (flow maps `{k: v}` too)
//! --set run.name=exp-1                 string; quote to force one: run.name='123'
//! --set checkpoint.dir=                empty = null (like `dir:` in YAML)
//! --set data.sources.0.weight=0.5      a numeric segment indexes an existing list element
//! ```

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// One parsed `path=value` override.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// Key path segments (`["trainer", "micro_batch"]`).
    pub path: Vec<String>,
    /// The value, parsed as YAML.
    pub value: Value,
    /// The argument as given, for error messages.
    raw: String,
}

impl Override {
    /// Parses `a.b.c=value`. The value is parsed as YAML: numbers, booleans, `null`, quoted or
    /// plain strings, and flow collections (`[1, 2]`, `{k: v}`). Text that YAML would read as a
    /// block collection (`- x`, `k: v`) is kept as a plain string, since a shell argument was
    /// almost certainly not meant as a block.
    pub fn parse(arg: &str) -> Result<Self> {
        let bad = |reason: String| Error::Override {
            arg: arg.to_string(),
            reason,
        };
        let (path, text) = arg
            .split_once('=')
            .ok_or_else(|| bad("expected `path=value`".into()))?;
        let path = path.trim();
        if path.is_empty() {
            return Err(bad("empty key path".into()));
        }
        let segments: Vec<String> = path.split('.').map(str::to_string).collect();
        if let Some(i) = segments.iter().position(|s| s.is_empty() || s.trim() != s) {
            return Err(bad(format!(
                "key path `{path}` has an empty or padded segment (#{})",
                i + 1
            )));
        }
        let mut value = parse_yaml_value(text, "--set").map_err(|e| bad(e.to_string()))?;
        let trimmed = text.trim_start();
        let is_flow = trimmed.starts_with('[') || trimmed.starts_with('{');
        if (value.is_array() || value.is_object()) && !is_flow {
            value = Value::String(text.trim().to_string());
        }
        Ok(Self {
            path: segments,
            value,
            raw: arg.to_string(),
        })
    }

    /// The key path joined with dots.
    pub fn dotted_path(&self) -> String {
        self.path.join(".")
    }

    /// Sets the value in `tree`, creating intermediate maps (a `null` node counts as an empty
    /// map, as YAML `section:` with nothing under it parses to null). Errors name the path when
    /// the walk meets a scalar or list it cannot enter.
    pub fn apply(&self, tree: &mut Value) -> Result<()> {
        let bad = |reason: String| Error::Override {
            arg: self.raw.clone(),
            reason,
        };
        let mut node = tree;
        for (depth, segment) in self.path.iter().enumerate() {
            let here = self.path[..depth].join(".");
            let last = depth + 1 == self.path.len();
            if node.is_null() {
                *node = Value::Object(Map::new());
            }
            node = match node {
                Value::Object(map) => {
                    if last {
                        map.insert(segment.clone(), self.value.clone());
                        return Ok(());
                    }
                    map.entry(segment.clone()).or_insert(Value::Null)
                }
                Value::Array(items) => {
                    let len = items.len();
                    let slot = segment.parse::<usize>().ok().and_then(|i| items.get_mut(i)).ok_or_else(|| {
                        bad(format!(
                            "`{here}` is a list of {len}; `{segment}` is not an index into it (lists can only be \
                             indexed, not extended: set the whole list instead)"
                        ))
                    })?;
                    if last {
                        *slot = self.value.clone();
                        return Ok(());
                    }
                    slot
                }
                other => {
                    let place = if here.is_empty() {
                        "the root".to_string()
                    } else {
                        format!("`{here}`")
                    };
                    return Err(bad(format!(
                        "cannot set `{}`: {place} is {}, not a map",
                        self.dotted_path(),
                        describe(other)
                    )));
                }
            };
        }
        // Only reachable with an empty path, which parse() refuses.
        Err(bad("empty key path".into()))
    }
}

impl std::str::FromStr for Override {
    type Err = Error;

    /// Lets clap parse `--set` arguments directly (`value_parser = clap::value_parser!(Override)`
    /// or `#[arg(value_parser = Override::from_str)]`).
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// Applies overrides in order (later ones win).
pub fn apply_overrides(tree: &mut Value, overrides: &[Override]) -> Result<()> {
    overrides.iter().try_for_each(|o| o.apply(tree))
}

/// Deep-merges `overlay` into `base`, as for recipe includes: maps merge key by key
/// recursively; anything else (scalars, lists) in `overlay` replaces what `base` had.
pub fn deep_merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => deep_merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Parses one YAML document into a JSON value tree. `origin` (a file path, or `--set`) goes
/// into error messages. Merge keys (`<<: *anchor`) are applied; map keys that are numbers or
/// booleans become strings; tags, non-finite floats and non-scalar keys are refused because the
/// JSON tree cannot hold them faithfully.
pub fn parse_yaml_value(text: &str, origin: &str) -> Result<Value> {
    let yaml_err = |reason: String| Error::Yaml {
        origin: origin.to_string(),
        reason,
    };
    let mut yaml: serde_norway::Value =
        serde_norway::from_str(text).map_err(|e| yaml_err(e.to_string()))?;
    yaml.apply_merge().map_err(|e| yaml_err(e.to_string()))?;
    yaml_to_json(yaml, &mut Vec::new()).map_err(yaml_err)
}

fn yaml_to_json(
    yaml: serde_norway::Value,
    path: &mut Vec<String>,
) -> std::result::Result<Value, String> {
    use serde_norway::Value as Y;
    let at = |path: &[String]| {
        if path.is_empty() {
            "the root".to_string()
        } else {
            format!("`{}`", path.join("."))
        }
    };
    Ok(match yaml {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                let num = serde_json::Number::from_f64(f).ok_or_else(|| {
                    format!("{}: non-finite number {f} cannot be represented", at(path))
                })?;
                Value::Number(num)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                path.push(i.to_string());
                out.push(yaml_to_json(item, path)?);
                path.pop();
            }
            Value::Array(out)
        }
        Y::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    other => return Err(format!("{}: unsupported map key {other:?}", at(path))),
                };
                path.push(key.clone());
                let v = yaml_to_json(v, path)?;
                path.pop();
                out.insert(key, v);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => {
            return Err(format!(
                "{}: YAML tag `{}` is not supported",
                at(path),
                t.tag
            ))
        }
    })
}

/// Deserializes a value tree into `T`; on failure the error carries the dotted key path of the
/// offending key (`trainer.micro_batchh` for an unknown field with `deny_unknown_fields`,
/// `schedule.max_lr` for a wrong type, `data.sources.1.path` inside lists).
pub fn from_tree<T: DeserializeOwned>(tree: &Value) -> Result<T> {
    serde_path_to_error::deserialize(tree).map_err(|e| {
        // Built by hand rather than with Path's Display (which writes `sources[1]`) so the path
        // has the same shape as a `--set` key and can be pasted into one.
        let path = e
            .path()
            .iter()
            .map(|segment| match segment {
                serde_path_to_error::Segment::Seq { index } => index.to_string(),
                serde_path_to_error::Segment::Map { key } => key.clone(),
                serde_path_to_error::Segment::Enum { variant } => variant.clone(),
                serde_path_to_error::Segment::Unknown => "?".to_string(),
            })
            .collect::<Vec<_>>()
            .join(".");
        Error::Deserialize {
            path,
            message: e.into_inner().to_string(),
        }
    })
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("a bool ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) => format!("a string ({s:?})"),
        Value::Array(a) => format!("a list of {}", a.len()),
        Value::Object(_) => "a map".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    fn set(tree: &mut Value, arg: &str) -> Result<()> {
        Override::parse(arg)?.apply(tree)
    }

    #[test]
    fn values_parse_as_yaml_scalars_and_flow_collections() {
        let v = |s: &str| Override::parse(&format!("a={s}")).expect("parses").value;
        assert_eq!(v("8"), json!(8));
        assert_eq!(v("-3"), json!(-3));
        assert_eq!(v("3e-4"), json!(3e-4));
        assert_eq!(v("1.0e-6"), json!(1e-6));
        assert_eq!(v("0.1"), json!(0.1));
        assert_eq!(v("true"), json!(true));
        assert_eq!(v("False"), json!(false));
        assert_eq!(v("null"), Value::Null);
        assert_eq!(v("~"), Value::Null);
        assert_eq!(v(""), Value::Null);
        assert_eq!(v("bf16"), json!("bf16"));
        assert_eq!(v("'123'"), json!("123"));
        assert_eq!(v("\"a b\""), json!("a b"));
        assert_eq!(v("yes"), json!("yes"), "YAML 1.2: yes is a string");
        assert_eq!(v("[1, 2]"), json!([1, 2]));
        assert_eq!(v("[a.jsonl, b.jsonl]"), json!(["a.jsonl", "b.jsonl"]));
        assert_eq!(v("{x: 1, y: [true]}"), json!({"x": 1, "y": [true]}));
        assert_eq!(v("[]"), json!([]));
        assert_eq!(v("a=b=c"), json!("a=b=c"), "only the first = splits");
        assert_eq!(v("http://host:80/x"), json!("http://host:80/x"));
        assert_eq!(
            v("key: v"),
            json!("key: v"),
            "block map text stays a string"
        );
        assert_eq!(v("- x"), json!("- x"), "block list text stays a string");
    }

    #[test]
    fn malformed_arguments_are_errors_naming_the_argument() {
        for bad in [
            "no_equals",
            "=1",
            "a..b=1",
            ".a=1",
            "a.=1",
            "a. b=1",
            "a=[1, 2",
            "a=.nan",
            "a=!tag x",
        ] {
            let err = Override::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn nested_set_creates_intermediate_maps() {
        let mut tree = json!({"trainer": {"steps": 100}, "logging": null});
        set(&mut tree, "trainer.micro_batch=8").expect("set");
        set(&mut tree, "trainer.steps=200").expect("replace");
        set(&mut tree, "optim.adamw.betas=[0.9, 0.95]").expect("create two levels");
        set(&mut tree, "logging.dir=runs/x").expect("null section becomes a map");
        assert_eq!(
            tree,
            json!({
                "trainer": {"steps": 200, "micro_batch": 8},
                "optim": {"adamw": {"betas": [0.9, 0.95]}},
                "logging": {"dir": "runs/x"}
            })
        );
        // Replacing a whole section with a scalar is allowed (it is what the user asked for).
        set(&mut tree, "optim=null").expect("set");
        assert_eq!(tree["optim"], Value::Null);
        // An empty tree (empty YAML file) is a map to be.
        let mut empty = Value::Null;
        set(&mut empty, "a.b=1").expect("set");
        assert_eq!(empty, json!({"a": {"b": 1}}));
    }

    #[test]
    fn list_elements_can_be_indexed_but_not_extended() {
        let mut tree =
            json!({"data": {"sources": [{"path": "a", "weight": 1}, {"path": "b", "weight": 1}]}});
        set(&mut tree, "data.sources.1.weight=0.5").expect("set");
        assert_eq!(tree["data"]["sources"][1]["weight"], json!(0.5));
        set(&mut tree, "data.sources.0={path: c}").expect("replace element");
        assert_eq!(tree["data"]["sources"][0], json!({"path": "c"}));
        let err = set(&mut tree, "data.sources.2.weight=1")
            .expect_err("out of range")
            .to_string();
        assert!(err.contains("`data.sources` is a list of 2"), "{err}");
        let err = set(&mut tree, "data.sources.first=1")
            .expect_err("not an index")
            .to_string();
        assert!(err.contains("`first` is not an index"), "{err}");
    }

    #[test]
    fn traversing_into_a_scalar_names_the_path() {
        let mut tree = json!({"schedule": {"max_lr": 0.0053}});
        let err = set(&mut tree, "schedule.max_lr.value=1")
            .expect_err("cannot enter a number")
            .to_string();
        assert!(err.contains("schedule.max_lr.value=1"), "{err}");
        assert!(
            err.contains("`schedule.max_lr` is a number (0.0053), not a map"),
            "{err}"
        );
        let mut root = json!([1, 2]);
        assert!(set(&mut root, "a=1").is_err_and(|e| e.to_string().contains("is a list")));
        let mut root = json!("text");
        assert!(
            set(&mut root, "a=1").is_err_and(|e| e.to_string().contains("the root is a string"))
        );
    }

    #[test]
    fn later_overrides_win() {
        let mut tree = json!({});
        let ovs: Vec<Override> = ["a.b=1", "a.b=2", "a.c=x"]
            .iter()
            .map(|s| s.parse().expect("parse"))
            .collect();
        apply_overrides(&mut tree, &ovs).expect("apply");
        assert_eq!(tree, json!({"a": {"b": 2, "c": "x"}}));
        assert_eq!(ovs[2].dotted_path(), "a.c");
    }

    #[test]
    fn deep_merge_for_includes() {
        let mut base = json!({"model": {"dim": 64, "layers": 2, "heads": [1, 2]}, "seed": 0});
        deep_merge(
            &mut base,
            json!({"model": {"layers": 4, "heads": [3]}, "extra": true}),
        );
        assert_eq!(
            base,
            json!({"model": {"dim": 64, "layers": 4, "heads": [3]}, "seed": 0, "extra": true})
        );
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Trainer {
        micro_batch: u32,
        steps: u64,
        #[serde(default)]
        precision: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Source {
        path: String,
        weight: f64,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Data {
        sources: Vec<Source>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Recipe {
        trainer: Trainer,
        data: Data,
    }

    const RECIPE: &str = "\
trainer:
  micro_batch: 4
  steps: 100
data:
  sources:
    - {path: a.jsonl, weight: 1.0}
    - path: b.jsonl
      weight: 2
";

    #[test]
    fn yaml_recipe_with_overrides_deserializes() {
        let mut tree = parse_yaml_value(RECIPE, "recipes/tiny.yaml").expect("yaml");
        set(&mut tree, "trainer.precision=bf16").expect("set");
        set(&mut tree, "data.sources.1.weight=0.5").expect("set");
        let r: Recipe = from_tree(&tree).expect("typed");
        assert_eq!(
            r.trainer,
            Trainer {
                micro_batch: 4,
                steps: 100,
                precision: Some("bf16".into())
            }
        );
        assert_eq!(
            r.data.sources[1],
            Source {
                path: "b.jsonl".into(),
                weight: 0.5
            }
        );
    }

    #[test]
    fn unknown_key_error_contains_the_dotted_path() {
        let mut tree = parse_yaml_value(RECIPE, "recipes/tiny.yaml").expect("yaml");
        set(&mut tree, "trainer.micro_batchh=8")
            .expect("set (unknown keys are caught by the types)");
        let err = from_tree::<Recipe>(&tree).expect_err("unknown field");
        let msg = err.to_string();
        assert!(msg.contains("trainer.micro_batchh"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
        assert!(
            matches!(err, Error::Deserialize { ref path, .. } if path == "trainer.micro_batchh"),
            "{err:?}"
        );

        // Inside a list element too.
        let mut tree = parse_yaml_value(RECIPE, "x").expect("yaml");
        set(&mut tree, "data.sources.0.wieght=1").expect("set");
        let msg = from_tree::<Recipe>(&tree)
            .expect_err("unknown field")
            .to_string();
        assert!(msg.contains("data.sources.0.wieght"), "{msg}");
    }

    #[test]
    fn wrong_type_error_names_the_path() {
        let mut tree = parse_yaml_value(RECIPE, "x").expect("yaml");
        set(&mut tree, "trainer.steps=many").expect("set");
        let msg = from_tree::<Recipe>(&tree)
            .expect_err("wrong type")
            .to_string();
        assert!(
            msg.contains("`trainer.steps`") && msg.contains("invalid type"),
            "{msg}"
        );

        let mut tree = parse_yaml_value(RECIPE, "x").expect("yaml");
        set(&mut tree, "data.sources.1.weight=[1]").expect("set");
        let msg = from_tree::<Recipe>(&tree)
            .expect_err("wrong type")
            .to_string();
        assert!(msg.contains("`data.sources.1.weight`"), "{msg}");

        // A missing field names its parent, and a root-level problem has an empty path.
        let tree = json!({"trainer": {"micro_batch": 1}, "data": {"sources": []}});
        let msg = from_tree::<Recipe>(&tree).expect_err("missing").to_string();
        assert!(
            msg.contains("`trainer`") && msg.contains("missing field `steps`"),
            "{msg}"
        );
        assert!(
            matches!(from_tree::<Recipe>(&json!(3)), Err(Error::Deserialize { path, .. }) if path.is_empty())
        );
    }

    #[test]
    fn yaml_parsing_errors_and_conversions() {
        let err = parse_yaml_value("a: [1, 2\nb: 3\n", "recipes/bad.yaml")
            .expect_err("syntax")
            .to_string();
        assert!(err.contains("recipes/bad.yaml"), "{err}");
        let err = parse_yaml_value("a: 1\na: 2\n", "dup.yaml")
            .expect_err("duplicate key")
            .to_string();
        assert!(err.contains("dup.yaml") && err.contains('a'), "{err}");
        let err = parse_yaml_value("model:\n  lr: .inf\n", "inf.yaml")
            .expect_err("inf")
            .to_string();
        assert!(
            err.contains("`model.lr`") && err.contains("non-finite"),
            "{err}"
        );
        // Anchors and merge keys resolve; numeric keys become strings.
        let v = parse_yaml_value(
            "base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\nids: {1: one}\n",
            "m.yaml",
        )
        .expect("yaml");
        assert_eq!(v["derived"], json!({"x": 1, "y": 3}));
        assert_eq!(v["ids"], json!({"1": "one"}));
        assert_eq!(
            parse_yaml_value("", "empty.yaml").expect("empty"),
            Value::Null
        );
    }
}
