//! Input generation shared by the targets: a seeded RNG (so that a run can
//! be repeated from its seed), JSON values biased towards the edges that
//! parsers get wrong (huge and negative numbers, floats where integers are
//! expected, odd strings, deep nesting), and mutations of a valid input at
//! the value level and at the byte level.

use serde_json::{Map, Number, Value};

/// SplitMix64: tiny, fast, and good enough to pick mutations; not a crate
/// dependency so that the fuzzer builds from what the workspace has.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True once in `n` times.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Strings that have broken parsers before: empty, whitespace, escapes,
/// control characters, non-ASCII, lone-surrogate escapes spelled out, and
/// names the protocol gives meaning to.
const STRINGS: &[&str] = &[
    "",
    " ",
    "*",
    "a",
    "s1",
    "sess-1",
    "perm-1",
    "term-1",
    "main",
    "owner",
    "viewer",
    "editor",
    "agent",
    "scripted",
    "emit",
    "hello",
    "action",
    "subscribe",
    "event",
    "type",
    "id",
    "\u{0}",
    "\n",
    "\"",
    "\\",
    "\\u0000",
    "\\ud800",
    "é",
    "𝄞",
    "\u{202e}",
    "../../etc/passwd",
    "/workspace",
    "/",
    "a/b",
    "🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂",
];

/// Numbers at the edges of the integer types the protocol uses (u16 sizes,
/// u32 limits, u64 seqs and ids) and floats that look like integers.
fn number(rng: &mut Rng) -> Value {
    match rng.below(12) {
        0 => Value::from(0),
        1 => Value::from(1),
        2 => Value::from(-1),
        3 => Value::from(u16::MAX as u64 + rng.below(3) as u64 - 1),
        4 => Value::from(u32::MAX as u64 + rng.below(3) as u64 - 1),
        5 => Value::from(u64::MAX - rng.below(2) as u64),
        6 => Value::from(i64::MIN),
        7 => Number::from_f64(rng.next_u64() as f64 / 7.0).map_or(Value::Null, Value::Number),
        8 => Value::from(1.0),
        9 => Value::from(-0.0),
        10 => Value::from(rng.below(100)),
        _ => Value::from(rng.next_u64()),
    }
}

pub fn string(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => {
            // Random code points, some outside the BMP.
            let len = rng.below(12);
            (0..len)
                .filter_map(|_| {
                    let plane = if rng.one_in(8) { 0x11_0000 } else { 0x1_0000 };
                    char::from_u32(rng.below(plane) as u32)
                })
                .collect()
        }
        1 => rng.pick(STRINGS).repeat(1 + rng.below(3)),
        _ => (*rng.pick(STRINGS)).to_owned(),
    }
}

/// Any JSON value, at most `depth` levels deep; `keys` are field names the
/// target's messages use, so that objects sometimes have the right shape.
pub fn value(rng: &mut Rng, depth: usize, keys: &[&str]) -> Value {
    let kinds = if depth == 0 { 4 } else { 7 };
    match rng.below(kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => number(rng),
        3 => Value::String(string(rng)),
        4 => {
            let len = rng.below(5);
            Value::Array((0..len).map(|_| value(rng, depth - 1, keys)).collect())
        }
        _ => {
            let len = rng.below(5);
            let mut map = Map::new();
            for _ in 0..len {
                let key = if !keys.is_empty() && !rng.one_in(4) {
                    (*rng.pick(keys)).to_owned()
                } else {
                    string(rng)
                };
                map.insert(key, value(rng, depth - 1, keys));
            }
            Value::Object(map)
        }
    }
}

/// Changes one to a few nodes of `v`: replaces a node by another value,
/// removes or adds a field, drops an array element. The rest stays valid,
/// which is what reaches the code behind a parser's first checks.
pub fn mutate_value(rng: &mut Rng, v: &mut Value, keys: &[&str]) {
    for _ in 0..1 + rng.below(3) {
        mutate_once(rng, v, keys, 0);
    }
}

fn mutate_once(rng: &mut Rng, v: &mut Value, keys: &[&str], depth: usize) {
    // Go down with some probability, else change this node.
    let descend = depth < 8 && rng.below(3) != 0;
    match v {
        Value::Object(map) if descend && !map.is_empty() => {
            let key = map.keys().nth(rng.below(map.len())).cloned();
            if let Some(child) = key.and_then(|k| map.get_mut(&k)) {
                return mutate_once(rng, child, keys, depth + 1);
            }
        }
        Value::Array(items) if descend && !items.is_empty() => {
            let at = rng.below(items.len());
            return mutate_once(rng, &mut items[at], keys, depth + 1);
        }
        _ => {}
    }
    match (rng.below(4), &mut *v) {
        (0, Value::Object(map)) if !map.is_empty() => {
            let key = map.keys().nth(rng.below(map.len())).cloned();
            if let Some(k) = key {
                map.remove(&k);
            }
        }
        (1, Value::Object(map)) => {
            let key = (*rng.pick(keys)).to_owned();
            map.insert(key, value(rng, 2, keys));
        }
        (0, Value::Array(items)) if !items.is_empty() => {
            items.remove(rng.below(items.len()));
        }
        (1, Value::Array(items)) => items.push(value(rng, 2, keys)),
        _ => *v = value(rng, 3, keys),
    }
}

/// Byte-level damage to a serialized input: flips, inserts, deletes,
/// truncation, and splices of JSON punctuation.
pub fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>) {
    const TOKENS: &[&[u8]] = &[
        b"{", b"}", b"[", b"]", b"\"", b":", b",", b"\\", b"\\u", b"null", b"1e999", b"-0",
        b"\xff", b"\xc3", b"\x00", b" ", b"\n",
    ];
    for _ in 0..1 + rng.below(4) {
        let len = bytes.len();
        match rng.below(5) {
            0 if len > 0 => {
                let at = rng.below(len);
                bytes[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                bytes.remove(rng.below(len));
            }
            2 => {
                let at = rng.below(len + 1);
                let token = rng.pick(TOKENS);
                bytes.splice(at..at, token.iter().copied());
            }
            3 if len > 0 => bytes.truncate(rng.below(len)),
            _ => {
                let at = rng.below(len + 1);
                bytes.insert(at, rng.next_u64() as u8);
            }
        }
    }
}
