//! The `ensemble` command: `ensemble serve` runs a headless host;
//! `ensemble nearby` lists hosts shared on the LAN; `ensemble join` pairs
//! this install with one of them.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use ensemble::config;
use ensemble::settings::ServeArgs;
use ensemble_host::Host;

mod attach;
mod events;
mod export;
mod lan_cli;
mod people;
mod prompt;
mod remote;

#[derive(Parser)]
#[command(
    name = "ensemble",
    version,
    about = "Share one coding agent with your team over the LAN"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a host without a window: VMs, the event log and the WebSocket endpoint.
    // A flag given twice takes the later value: the configuration file's
    // settings come first, the command line's after them.
    #[command(args_override_self = true)]
    Serve(ServeArgs),
    /// Print the effective `serve` settings and where each comes from
    /// (command line, configuration file, environment, default).
    Config {
        /// The configuration file (default: $XDG_CONFIG_HOME/ensemble/config.toml).
        #[arg(long, env = "ENSEMBLE_CONFIG")]
        config: Option<PathBuf>,
        /// `serve` flags to take into account, after `--`.
        #[arg(last = true)]
        flags: Vec<String>,
    },
    /// List the Ensemble hosts shared on this network (mDNS).
    Nearby(lan_cli::NearbyArgs),
    /// Ask a host on the LAN to let this install in; prints the code to
    /// compare with its owner and waits for their answer.
    Join(lan_cli::JoinArgs),
    /// Attach this terminal to a shared shell (Ctrl-] d detaches).
    Attach(attach::AttachArgs),
    /// Print a VM's events as JSON Lines (--follow for live ones).
    Events(events::EventsArgs),
    /// Export a VM's log as JSON Lines, or a shell as an asciicast recording.
    Export(export::ExportArgs),
    /// Send a prompt to the VM's agent and print its answer as it comes.
    Prompt(prompt::PromptArgs),
    /// The VMs you may open on a host (the owner: all of them).
    Vms(people::VmsArgs),
    /// Who is in a VM, with roles and presence, and who drives.
    Who(people::WhoArgs),
    /// Create a join code for a teammate (owner only).
    Invite(people::InviteArgs),
    /// Print a completion script for a shell (bash, zsh, fish, ...).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page ensemble(1), or write it and one page per
    /// command (ensemble-serve.1, ...) into a directory.
    Man {
        /// Write ensemble.1 and ensemble-COMMAND.1 here instead of printing
        /// ensemble.1.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(ensemble_host::QUIET_LOG_TARGETS.iter().fold(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
            |f, d| f.add_directive(d.parse().expect("a valid directive")),
        ))
        .with_writer(std::io::stderr)
        .init();
    let (args, _) = config::apply(std::env::args().collect(), &Cli::command())?;
    let cli = Cli::parse_from(args);
    let runtime = ensemble_host::runtime().context("cannot start the async runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Config { config, flags } => {
            let command = Cli::command();
            let serve = command
                .find_subcommand("serve")
                .context("no serve command")?;
            let file = match config {
                Some(path) => Some(path),
                None => config::default_path().filter(|p| p.exists()),
            };
            let file_flags = match &file {
                Some(path) => config::flags_from(path, serve)?,
                None => Vec::new(),
            };
            match &file {
                Some(path) => println!("# configuration file: {}", path.display()),
                None => println!(
                    "# no configuration file ({} does not exist)",
                    config::default_path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                ),
            }
            print!(
                "{}",
                config::explain(serve, file.as_deref(), &file_flags, &flags)?
            );
            Ok(())
        }
        Command::Nearby(args) => runtime.block_on(lan_cli::nearby(args)),
        Command::Join(args) => runtime.block_on(lan_cli::join(args)),
        Command::Attach(args) => runtime.block_on(attach::run(args)),
        Command::Events(args) => runtime.block_on(events::run(args)),
        Command::Export(args) => runtime.block_on(export::run(args)),
        Command::Prompt(args) => runtime.block_on(prompt::run(args)),
        Command::Vms(args) => runtime.block_on(people::vms(args)),
        Command::Who(args) => runtime.block_on(people::who(args)),
        Command::Invite(args) => runtime.block_on(people::invite(args)),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ensemble", &mut script);
            // A reader that stops early (`| head`) is not an error.
            let _ = std::io::stdout().write_all(&script);
            Ok(())
        }
        Command::Man { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("cannot write the manual pages to {}", dir.display()))
        }
        Command::Man { dir: None } => {
            let mut page = Vec::new();
            // The same page as in the directory, where `help` has none.
            clap_mangen::Man::new(Cli::command().disable_help_subcommand(true))
                .render(&mut page)?;
            // As for completions: `| head` is not an error.
            let _ = std::io::stdout().write_all(&page);
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let data_dir = match args.data_dir.clone() {
        Some(dir) => dir,
        None => ensemble_host::store::default_data_dir()
            .context("no data directory known for this user; pass --data-dir")?,
    };
    if !args.bind.ip().is_loopback() {
        anyhow::bail!(
            "--bind {} is not a loopback address: the local listener serves this machine only. \
             To let teammates in, share on the LAN with --lan (TLS, pinned certificates; \
             add --lan-insecure-http for browsers on other machines)",
            args.bind
        );
    }
    let config = args.host_config(&data_dir)?;
    let lan_requested = args.lan;
    let host = Host::start(config)
        .await
        .with_context(|| format!("cannot open the data directory {}", data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is another host running? try --bind 127.0.0.1:0",
                args.bind
            )
        })?;
    let addr = listener.local_addr()?;
    // Whoever started the host may have stopped reading stdout: never fail on it.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "Ensemble host listening on ws://{addr}{} (data in {})",
        ensemble_protocol::WS_PATH,
        data_dir.display()
    );
    // The owner opens this in a browser on this machine; the code works once.
    let _ = writeln!(
        out,
        "Owner URL (works once): http://{addr}/#login={}",
        host.login_code()
    );
    let _ = writeln!(
        out,
        "Owner token: {} (for native clients; keep it secret)",
        data_dir.join("owner-token").display()
    );
    let _ = out.flush();
    drop(out);
    if lan_requested {
        let lan = host.lan().clone();
        tokio::spawn(async move {
            // Sharing starts once serving begins; report where it listens.
            for _ in 0..50 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                match lan.status(false).await {
                    Ok(s) if s.sharing => {
                        let addrs: Vec<String> =
                            s.addresses.iter().map(|a| a.to_string()).collect();
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(
                            out,
                            "Sharing on the LAN (TLS) at {} as {:?}, fingerprint {}",
                            if addrs.is_empty() {
                                "(no LAN address yet)".to_owned()
                            } else {
                                addrs.join(", ")
                            },
                            s.display_name,
                            s.fingerprint
                        );
                        if let Some(http) = s.insecure_http {
                            let _ = writeln!(
                                out,
                                "WARNING: plain HTTP for browsers at http://{http}/ (unencrypted)"
                            );
                        }
                        let _ = out.flush();
                        return;
                    }
                    Ok(s) if s.error.is_some() => break,
                    _ => {}
                }
            }
            tracing::error!("LAN sharing did not start; see the log above");
        });
    }
    host.serve(listener, ensemble_host::shutdown_signal())
        .await
        .context("server failed")?;
    tracing::info!("host stopped; logs committed");
    Ok(())
}
