//! Fuzz targets for what Ensemble parses from outside, one per file:
//! * [`client_message`]: a client's text frame as the host reads it.
//! * [`action_args`]: an action's positional arguments.
//! * [`binary_frame`]: a host's binary frame as the Rust client reads it.
//! * [`acp_lines`]: the JSON-RPC lines an agent writes, through the same ACP
//!   connection the host runs.
//!
//! Each target generates inputs from a seeded RNG (valid messages, mutated
//! at the value or the byte level), checks what must hold for every input,
//! and counts a panic as a crash. docs/testing.md tells how to run them.

pub mod acp_lines;
pub mod action_args;
pub mod binary_frame;
pub mod client_message;
pub mod gen;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use gen::Rng;

/// What one target did in its time.
#[derive(Debug)]
pub struct Report {
    pub name: &'static str,
    pub execs: u64,
    pub elapsed: Duration,
    /// The inputs that panicked (or broke a checked property), as bytes.
    pub crashes: Vec<Vec<u8>>,
}

impl Report {
    pub fn per_sec(&self) -> f64 {
        self.execs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub struct Target {
    pub name: &'static str,
    pub run: fn(seed: u64, budget: Duration) -> Report,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "client_message",
        run: client_message::run,
    },
    Target {
        name: "action_args",
        run: action_args::run,
    },
    Target {
        name: "binary_frame",
        run: binary_frame::run,
    },
    Target {
        name: "acp_lines",
        run: acp_lines::run,
    },
];

static PANICS: AtomicU64 = AtomicU64::new(0);

/// Panics so far in this process, on any thread: a panic inside a task the
/// ACP connection spawned is caught by tokio and would otherwise go unseen.
pub fn panics() -> u64 {
    PANICS.load(Ordering::SeqCst)
}

/// Counts every panic, then lets the default hook print it (where, and
/// the message), which is what one needs to turn it into a test.
pub fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// Runs a synchronous target until `budget` is spent: `make` builds an
/// input, `check` runs it and panics on a crash or a broken property.
pub fn run_sync(
    name: &'static str,
    seed: u64,
    budget: Duration,
    mut make: impl FnMut(&mut Rng) -> Vec<u8>,
    check: impl Fn(&[u8]),
) -> Report {
    count_panics();
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let mut execs = 0u64;
    let mut crashes = Vec::new();
    loop {
        // Reading the clock costs about as much as a small input: every
        // 256 inputs is often enough.
        if execs.is_multiple_of(256) && start.elapsed() >= budget {
            break;
        }
        let input = make(&mut rng);
        if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
            crashes.push(input);
        }
        execs += 1;
    }
    Report {
        name,
        execs,
        elapsed: start.elapsed(),
        crashes,
    }
}
