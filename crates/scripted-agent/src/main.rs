//! `ensemble-scripted-agent`: the scripted ACP agent on this process's stdin
//! and stdout. Flags select the misbehaviours tests need; logs go to stderr
//! only when `--log` asks for them.
#![forbid(unsafe_code)]

use clap::Parser;
use ensemble_scripted_agent::{serve, Exit, Options};

/// A deterministic ACP agent: each prompt line is a command.
///
/// Speaks the Agent Client Protocol (v1, newline-delimited JSON-RPC) on stdin
/// and stdout. Commands: say, think, plan, run, write, read, wait, sleep, env,
/// turn, crash, garbage, stream. See docs/scripted-agent.md.
#[derive(Debug, Parser)]
#[command(name = "ensemble-scripted-agent", version)]
struct Args {
    /// Read stdin but never answer anything, not even `initialize` (for
    /// timeout tests). Exits 0 when stdin closes.
    #[arg(long)]
    hang_initialize: bool,

    /// Exit at once with this code, before reading anything.
    #[arg(long, value_name = "CODE")]
    exit_at_start: Option<u8>,

    /// Print a few non-JSON lines on stdout before anything else.
    #[arg(long)]
    garbage_at_start: bool,

    /// Keep each session's transcript in DIR/<sessionId>.jsonl (DIR is
    /// created if needed) and support `session/load`, also after a restart.
    #[arg(long, value_name = "DIR")]
    journal_dir: Option<std::path::PathBuf>,

    /// Log to stderr with this tracing filter (for example `debug` or
    /// `ensemble_scripted_agent=trace`). Off by default; never read from the
    /// environment.
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
}

fn main() {
    let args = Args::parse();
    if let Some(code) = args.exit_at_start {
        std::process::exit(code.into());
    }
    if let Some(filter) = &args.log {
        match tracing_subscriber::EnvFilter::try_new(filter) {
            Ok(filter) => tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .init(),
            Err(error) => {
                eprintln!("ensemble-scripted-agent: bad --log filter: {error}");
                std::process::exit(2);
            }
        }
    }
    let options = Options {
        hang_initialize: args.hang_initialize,
        garbage_at_start: args.garbage_at_start,
        journal_dir: args.journal_dir,
    };
    let code = match run(options) {
        Ok(Exit::InputClosed) => 0,
        Ok(Exit::Crashed(code)) => code,
        Err(error) => {
            eprintln!("ensemble-scripted-agent: {error:#}");
            1
        }
    };
    // Exit here rather than return, so that nothing (a turn still running
    // after a crash, the stdin reader thread) outlives the decision.
    std::process::exit(code);
}

fn run(options: Options) -> anyhow::Result<Exit> {
    // One thread is plenty for one client, and keeps the order of work simple.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let exit = runtime.block_on(serve(tokio::io::stdin(), tokio::io::stdout(), options));
    // Dropping the runtime would wait for the blocking stdin read, which
    // only ends when the client writes or closes; leave it behind instead.
    runtime.shutdown_background();
    Ok(exit?)
}
