//! VM keys. agentOS addresses an actor with a string or an array of strings;
//! both forms are accepted and a bare string means a one-element array, so
//! `"x"` and `["x"]` reach the same VM.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most parts a key may have.
pub const MAX_KEY_PARTS: usize = 8;
/// Longest part, in bytes.
pub const MAX_KEY_PART_BYTES: usize = 128;

/// A validated VM key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Key(Vec<String>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a key is a non-empty string or an array of 1 to {MAX_KEY_PARTS} strings, got {0}")]
    Shape(&'static str),
    #[error("key part {index} is empty")]
    EmptyPart { index: usize },
    #[error("key part {index} is longer than {MAX_KEY_PART_BYTES} bytes")]
    PartTooLong { index: usize },
    #[error("key part {index} contains a control character")]
    ControlChar { index: usize },
}

impl Key {
    /// Validates a key given as JSON (string or array of strings).
    pub fn from_value(value: &Value) -> Result<Key, KeyError> {
        let parts: Vec<String> = match value {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(KeyError::Shape("an empty array"));
                }
                if items.len() > MAX_KEY_PARTS {
                    return Err(KeyError::Shape("too many parts"));
                }
                items
                    .iter()
                    .map(|item| match item {
                        Value::String(s) => Ok(s.clone()),
                        _ => Err(KeyError::Shape("an array with a non-string part")),
                    })
                    .collect::<Result<_, _>>()?
            }
            Value::Null => return Err(KeyError::Shape("null")),
            Value::Bool(_) => return Err(KeyError::Shape("a boolean")),
            Value::Number(_) => return Err(KeyError::Shape("a number")),
            Value::Object(_) => return Err(KeyError::Shape("an object")),
        };
        Key::new(parts)
    }

    /// Validates a key given as parts.
    pub fn new(parts: Vec<String>) -> Result<Key, KeyError> {
        if parts.is_empty() || parts.len() > MAX_KEY_PARTS {
            return Err(KeyError::Shape("a wrong number of parts"));
        }
        for (index, part) in parts.iter().enumerate() {
            if part.is_empty() {
                return Err(KeyError::EmptyPart { index });
            }
            if part.len() > MAX_KEY_PART_BYTES {
                return Err(KeyError::PartTooLong { index });
            }
            if part.chars().any(char::is_control) {
                return Err(KeyError::ControlChar { index });
            }
        }
        Ok(Key(parts))
    }

    pub fn parts(&self) -> &[String] {
        &self.0
    }

    /// The canonical text form, used as the registry's primary key.
    pub fn canonical(&self) -> String {
        serde_json::Value::from(self.0.clone()).to_string()
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.canonical())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn string_and_one_element_array_are_the_same_key() {
        let a = Key::from_value(&json!("shared-agent")).unwrap();
        let b = Key::from_value(&json!(["shared-agent"])).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.canonical(), r#"["shared-agent"]"#);
    }

    #[test]
    fn bad_keys_are_refused() {
        for bad in [
            json!(null),
            json!(3),
            json!([]),
            json!({"a": 1}),
            json!([""]),
            json!(["a", 1]),
            json!(["a\nb"]),
            serde_json::Value::from(vec!["x"; 9]),
            json!("y".repeat(129)),
        ] {
            assert!(Key::from_value(&bad).is_err(), "{bad} was accepted");
        }
    }
}
