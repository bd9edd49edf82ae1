//! Positional action arguments. Like agentOS actions, an action takes a JSON
//! array (`getSequencedEvents("s1", {since: 4})` is `["s1", {"since": 4}]`);
//! trailing optional arguments may be left out.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// The `args` array of one action call.
#[derive(Debug, Clone, Default)]
pub struct Args(Vec<Value>);

/// Why the arguments of an action were refused; becomes `invalid_args`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgsError(pub String);

impl Args {
    /// `null` or a missing field means no arguments; anything but an array
    /// is refused.
    pub fn from_value(value: Value) -> Result<Args, ArgsError> {
        match value {
            Value::Null => Ok(Args(Vec::new())),
            Value::Array(items) => Ok(Args(items)),
            other => Err(ArgsError(format!(
                "args must be an array of positional arguments, got {}",
                type_name(&other)
            ))),
        }
    }

    /// Refuses calls with more arguments than the action takes.
    pub fn at_most(&self, action: &str, n: usize) -> Result<(), ArgsError> {
        if self.0.len() > n {
            return Err(ArgsError(format!(
                "{action} takes at most {n} argument(s), got {}",
                self.0.len()
            )));
        }
        Ok(())
    }

    pub fn required<T: DeserializeOwned>(&self, index: usize, name: &str) -> Result<T, ArgsError> {
        match self.0.get(index) {
            None | Some(Value::Null) => {
                Err(ArgsError(format!("argument {index} ({name}) is required")))
            }
            Some(v) => decode(v, index, name),
        }
    }

    pub fn optional<T: DeserializeOwned>(
        &self,
        index: usize,
        name: &str,
    ) -> Result<Option<T>, ArgsError> {
        match self.0.get(index) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => decode(v, index, name).map(Some),
        }
    }
}

fn decode<T: DeserializeOwned>(value: &Value, index: usize, name: &str) -> Result<T, ArgsError> {
    T::deserialize(value).map_err(|e| ArgsError(format!("argument {index} ({name}): {e}")))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn positional_arguments() {
        let args = Args::from_value(json!(["s1", {"since": 3}])).unwrap();
        assert_eq!(args.required::<String>(0, "sessionId").unwrap(), "s1");
        assert!(args.required::<u64>(0, "n").is_err());
        assert!(args.optional::<u64>(2, "x").unwrap().is_none());
        assert!(args.at_most("a", 1).is_err());
        assert!(Args::from_value(json!({"since": 1})).is_err());
    }
}
