//! A deterministic ACP agent: it speaks the Agent Client Protocol (v1,
//! JSON-RPC 2.0 over newline-delimited stdio) as the *agent*, and treats each
//! prompt as a small script, one command per line (`say`, `think`, `plan`,
//! `run`, `write`, `read`, `wait`, `sleep`, `env`, `turn`, `crash`,
//! `garbage`, `stream`). With a journal directory it keeps each session's transcript
//! on disk and supports `session/load`, also after it restarts.
//! The host's tests drive it, and a new user can try Ensemble with it and no
//! API key. Every command and the exact traffic it produces are in
//! `docs/scripted-agent.md`.
//!
//! Layout (data flows down):
//! * `main.rs`: flags, logging, the process exit code.
//! * [`serve`]: one connection over a reader and a writer, until EOF or a crash.
//! * `agent`: the ACP handlers and the session table.
//! * `journal`: per-session transcripts on disk, for `session/load`.
//! * `turn`: one prompt turn, command by command, with cancellation.
//! * `script`: the command language (pure parsing).
//! * `stdio`: newline-delimited lines in; the single writer of stdout out,
//!   which also prints the garbage and knows when output is flushed.
#![forbid(unsafe_code)]

mod agent;
mod journal;
mod script;
mod stdio;
mod turn;

use std::path::PathBuf;

use agent_client_protocol::Lines;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

pub use agent::{AGENT_NAME, MODES};
pub use stdio::GARBAGE_LINES;
pub use turn::{ALLOW_OPTION, REJECT_OPTION};

/// The exit code of the process after `crash`.
pub const CRASH_EXIT_CODE: i32 = 3;

/// How [`serve`] behaves apart from the scripts it runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Read the input but never answer anything, `initialize` included.
    pub hang_initialize: bool,
    /// Print [`GARBAGE_LINES`] before anything else.
    pub garbage_at_start: bool,
    /// Keep each session's transcript in this directory (created if needed)
    /// and advertise `loadSession`. Without it sessions live in memory only.
    pub journal_dir: Option<PathBuf>,
}

/// Why [`serve`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The client closed the input.
    InputClosed,
    /// A script ran `crash`; the process should exit with this code now,
    /// without finishing the turn.
    Crashed(i32),
}

/// Serve one client: JSON-RPC lines from `input`, to `output`.
///
/// Returns when the input ends or a script crashes. Turns still running are
/// dropped then, unanswered.
pub async fn serve(
    input: impl AsyncRead + Send + Unpin + 'static,
    output: impl AsyncWrite + Send + 'static,
    options: Options,
) -> Result<Exit, agent_client_protocol::Error> {
    let output = stdio::Output::new(output);
    if options.garbage_at_start {
        output
            .write_raw_lines(&GARBAGE_LINES)
            .await
            .map_err(agent_client_protocol::Error::into_internal_error)?;
    }
    if options.hang_initialize {
        stdio::drain(input)
            .await
            .map_err(agent_client_protocol::Error::into_internal_error)?;
        return Ok(Exit::InputClosed);
    }

    // Capacity 1: a crash is the only message, and the first one ends serve.
    let (exit_tx, mut exit_rx) = mpsc::channel(1);
    let journals = options
        .journal_dir
        .map(journal::Journals::open)
        .transpose()
        .map_err(agent_client_protocol::Error::into_internal_error)?;
    let state = agent::State::new(output.clone(), exit_tx, journals);
    let transport = Lines::new(output.sink(), stdio::lines(input));
    tokio::select! {
        result = agent::run(state, transport) => result.map(|()| Exit::InputClosed),
        Some(exit) = exit_rx.recv() => Ok(exit),
    }
}
