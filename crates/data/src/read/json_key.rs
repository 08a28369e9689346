//! Pulls one (possibly nested) string field out of a JSON object without building a
//! `serde_json::Value` for the whole record: other fields are skipped with `IgnoredAny`.
//! This matters because records such as RedPajama's carry large `meta` objects.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

/// Extracts the string at the dotted `key` (e.g. `text`, `meta.pile_set_name`) from one JSON
/// object. Errors say what was wrong (not JSON, invalid UTF-8, missing key, not a string).
pub fn extract_text(line: &[u8], key: &str) -> std::result::Result<String, String> {
    let path: Vec<&str> = key.split('.').collect();
    let mut de = serde_json::Deserializer::from_slice(line);
    let found = KeyPath(&path)
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    found.ok_or_else(|| format!("missing text key `{key}`"))
}

/// Seed that walks the remaining key path.
struct KeyPath<'a>(&'a [&'a str]);

impl<'de> DeserializeSeed<'de> for KeyPath<'_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyPath<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [] => f.write_str("a string"),
            _ => f.write_str("a JSON object"),
        }
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.visit_string(v.to_owned())
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        match self.0 {
            [] => Ok(Some(v)),
            _ => Err(E::custom("expected a JSON object, found a string")),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Some((head, rest)) = self.0.split_first() else {
            return Err(serde::de::Error::custom(
                "text field is an object, not a string",
            ));
        };
        let mut found = None;
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if found.is_none() && k == *head {
                found = map.next_value_seed(KeyPath(rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_and_nested_keys() {
        let line = br#"{"text":"hello \"world\"","meta":{"pile_set_name":"Github","n":[1,2]}}"#;
        assert_eq!(extract_text(line, "text").as_deref(), Ok("hello \"world\""));
        assert_eq!(
            extract_text(line, "meta.pile_set_name").as_deref(),
            Ok("Github")
        );
        assert!(extract_text(line, "content").is_err());
        assert!(extract_text(br#"{"text": 3}"#, "text").is_err());
        assert!(extract_text(b"not json", "text").is_err());
        assert!(extract_text(b"{\"text\":\"a\xff\"}", "text").is_err());
        assert!(extract_text(br#"{"text":"a"} trailing"#, "text").is_err());
    }
}
