//! An action's arguments: the positional `args` array as every action
//! reads it (`Args`: how many, which are required, which optional), decoded
//! into each type the actions take from it.

use std::collections::BTreeMap;
use std::time::Duration;

use ensemble_protocol::{Args, Key, Role};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::gen::{mutate_value, value, Rng};
use crate::Report;

/// Field names of the actions' option objects.
const KEYS: &[&str] = &[
    "since",
    "limit",
    "names",
    "args",
    "cwd",
    "env",
    "timeoutMs",
    "command",
    "cols",
    "rows",
    "agent",
    "name",
    "data",
    "count",
    "bytes",
    "mode",
    "text",
    "shellContext",
    "role",
    "color",
    "ttlSecs",
    "uses",
    "enabled",
    "address",
    "code",
];

/// Argument lists of the shapes actions take.
const SEEDS: &[&str] = &[
    r#"[]"#,
    r#"null"#,
    r#"[{"since":0,"limit":1000,"names":["shellData"]}]"#,
    r#"["ls",{"args":["-l"],"cwd":"/workspace","env":{"A":"b"},"timeoutMs":1000}]"#,
    r#"[{"command":"bash","args":[],"cols":80,"rows":24}]"#,
    r#"["sh-1",120,40]"#,
    r#"["sess-1","hello",{"shellContext":true}]"#,
    r#"["sess-1","perm-1","allow"]"#,
    r#"["p-2","editor"]"#,
    r#"[{"role":"viewer","ttlSecs":3600,"uses":1}]"#,
    r#"[{"name":"testEvent","count":10,"bytes":64,"data":{"n":1}}]"#,
];

/// An options object of the kind actions declare: unknown fields refused,
/// camelCase names, defaults for what may be left out.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Options {
    #[serde(default)]
    args: Vec<String>,
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    timeout_ms: Option<u64>,
    cols: Option<u16>,
    rows: Option<u16>,
    limit: Option<u32>,
    since: Option<u64>,
    names: Option<Vec<String>>,
    role: Option<Role>,
}

pub fn run(seed: u64, budget: Duration) -> Report {
    crate::run_sync("action_args", seed, budget, make, check)
}

fn make(rng: &mut Rng) -> Vec<u8> {
    let v = match rng.below(4) {
        0 => value(rng, 4, KEYS),
        1 => Value::Array((0..rng.below(5)).map(|_| value(rng, 3, KEYS)).collect()),
        _ => {
            let seed = *rng.pick(SEEDS);
            let mut v: Value = serde_json::from_str(seed).unwrap_or(Value::Null);
            mutate_value(rng, &mut v, KEYS);
            v
        }
    };
    v.to_string().into_bytes()
}

/// Decodes position `index` as `T`, both ways, and checks that a missing
/// or null argument is refused when required and absent when optional.
fn both<T: serde::de::DeserializeOwned>(args: &Args, index: usize, missing: bool) {
    let required = args.required::<T>(index, "arg");
    let optional = args.optional::<T>(index, "arg");
    if missing {
        assert!(required.is_err(), "a missing argument is refused");
        assert!(matches!(optional, Ok(None)), "a missing option is None");
    } else {
        assert_eq!(required.is_ok(), matches!(optional, Ok(Some(_))));
    }
}

/// What must hold for every argument list: `Args` takes exactly null and
/// arrays, counts them right, and no position decodes with a panic.
pub fn check(input: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(input) else {
        return;
    };
    let len = match &v {
        Value::Null => Some(0),
        Value::Array(items) => Some(items.len()),
        _ => None,
    };
    let args = Args::from_value(v.clone());
    assert_eq!(args.is_ok(), len.is_some(), "args is null or an array");
    let (Ok(args), Some(len)) = (args, len) else {
        return;
    };
    for n in 0..5 {
        assert_eq!(args.at_most("action", n).is_ok(), len <= n);
    }
    for index in 0..len + 1 {
        let missing = v.get(index).is_none_or(Value::is_null);
        both::<String>(&args, index, missing);
        both::<u64>(&args, index, missing);
        both::<u32>(&args, index, missing);
        both::<u16>(&args, index, missing);
        both::<bool>(&args, index, missing);
        both::<Vec<String>>(&args, index, missing);
        both::<BTreeMap<String, String>>(&args, index, missing);
        both::<Key>(&args, index, missing);
        both::<Role>(&args, index, missing);
        both::<Options>(&args, index, missing);
        // What decodes encodes, and decodes to the same again.
        if let Ok(Some(options)) = args.optional::<Options>(index, "options") {
            let encoded = serde_json::to_value(&options).expect("options encode");
            let again = Options::deserialize(&encoded).expect("encoded options decode");
            assert_eq!(serde_json::to_value(&again).ok(), Some(encoded));
        }
    }
}
