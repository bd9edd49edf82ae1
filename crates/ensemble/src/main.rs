//! The `ensemble` command: `ensemble serve` runs a headless host;
//! `ensemble nearby` lists hosts shared on the LAN; `ensemble join` pairs
//! this install with one of them.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use ensemble_host::{Host, HostConfig};

mod attach;
mod config;
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

#[derive(clap::Args)]
struct ServeArgs {
    /// A TOML file of settings: any flag below by its long name
    /// (`lan = true`, `lan-bind = "0.0.0.0:6421"`); flags given here win
    /// (default: $XDG_CONFIG_HOME/ensemble/config.toml, if it exists).
    #[arg(long, env = "ENSEMBLE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address the local listener (this machine's UI and clients) binds: a
    /// loopback address. Teammates on other machines come in through
    /// --lan (TLS), never through this one.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], ensemble_protocol::DEFAULT_PORT)))]
    bind: SocketAddr,
    /// Where the event logs and the key registry live
    /// (default: $XDG_DATA_HOME/ensemble, usually ~/.local/share/ensemble).
    #[arg(long, env = "ENSEMBLE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A command started once and fed every event as one JSON line on stdin.
    #[arg(long, value_name = "COMMAND")]
    hook_command: Option<String>,
    /// The hook command acknowledges each line it has processed by writing
    /// `ack VMID SEQ` to its stdout; unacknowledged lines are written again
    /// after it or the host restarts.
    #[arg(long, requires = "hook_command")]
    hook_ack: bool,
    /// Enable the test action `emit`, which appends arbitrary test events.
    #[arg(long)]
    test_actions: bool,
    /// Disconnect a client whose socket accepts nothing for this many seconds
    /// (it can reconnect and resume).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    stall_timeout: u64,
    /// Shell and process output each VM's log keeps, in MiB; older output is
    /// pruned (everything else is kept, and late joiners still get the screen).
    #[arg(long, default_value_t = ensemble_host::DEFAULT_OUTPUT_BUDGET >> 20, value_name = "MIB")]
    output_budget_mib: u64,
    /// How hard each commit of the event log is made durable: `normal`
    /// survives a crash of the host, `full` also a power loss (an fsync per
    /// commit).
    #[arg(long, value_enum, default_value = "normal")]
    durability: DurabilityArg,
    /// A TOML file adding or overriding agent types ([agents.NAME] command = "...", args = [...]).
    #[arg(long, value_name = "FILE")]
    agents: Option<PathBuf>,
    /// How long a new agent has to answer `initialize` and `session/new`.
    #[arg(long, default_value_t = 20.0, value_name = "SECONDS")]
    agent_init_timeout: f64,
    /// How long a control holder who disconnects keeps control, so that a
    /// reconnect does not lose it.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    control_grace: f64,
    /// Share on the LAN: listen with TLS on --lan-bind and announce this
    /// host by mDNS. Off by default: the host then listens on loopback only.
    #[arg(long)]
    lan: bool,
    /// Where the LAN (TLS) listener binds while sharing.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], ensemble_host::lan::DEFAULT_LAN_PORT)), value_name = "ADDR")]
    lan_bind: SocketAddr,
    #[command(flatten)]
    mdns: lan_cli::MdnsArgs,
    /// Also serve plain HTTP on the LAN (the LAN port + 1) so that teammates
    /// can use a browser, which cannot pin this host's certificate. Tokens
    /// and events then cross the network unencrypted.
    #[arg(long)]
    lan_insecure_http: bool,
    /// The name this host is announced with (default: the owner's name).
    #[arg(long, value_name = "NAME")]
    lan_name: Option<String>,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

/// How VMs are sandboxed (docs/sandbox.md).
#[derive(clap::Args)]
struct SandboxArgs {
    /// `bwrap`: every process, shell and agent of a VM runs in a bubblewrap
    /// sandbox. `none`: no sandbox at all (anyone in control of a VM can
    /// read the owner token); every participant is warned.
    #[arg(long, default_value = "bwrap", value_name = "bwrap|none")]
    isolation: ensemble_host::sandbox::Isolation,
    /// `host`: VMs use the host's network. `none`: no network at all, not
    /// even the host's 127.0.0.1.
    #[arg(long, default_value = "host", value_name = "host|none")]
    vm_network: ensemble_host::sandbox::Network,
    /// Memory of each VM's processes together, in MiB (default: half the
    /// machine's memory).
    #[arg(long, value_name = "MIB")]
    vm_memory: Option<u64>,
    /// Processes (and threads) each VM may have.
    #[arg(long, default_value_t = ensemble_host::sandbox::DEFAULT_PIDS, value_name = "N")]
    vm_pids: u64,
    /// Each VM's CPU weight against the host's other work: 1 to 10000, 100
    /// is an equal share.
    #[arg(long, default_value_t = 100, value_name = "WEIGHT", value_parser = clap::value_parser!(u32).range(1..=10000))]
    vm_cpu: u32,
}

impl SandboxArgs {
    fn config(&self) -> ensemble_host::sandbox::Config {
        let mut config = ensemble_host::sandbox::Config {
            isolation: self.isolation,
            network: self.vm_network,
            ..Default::default()
        };
        if let Some(mib) = self.vm_memory {
            config.limits.memory_bytes = mib.max(16) << 20;
        }
        config.limits.pids = self.vm_pids.max(8);
        config.limits.cpu_weight = self.vm_cpu;
        config
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DurabilityArg {
    Normal,
    Full,
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
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
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
    let data_dir = match args.data_dir {
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
    let mut config = HostConfig::new(&data_dir);
    config.sandbox = args.sandbox.config();
    config.test_actions = args.test_actions;
    config.hook_command = args.hook_command;
    config.hook_ack = args.hook_ack;
    config.stall_timeout = Duration::from_secs(args.stall_timeout.max(1));
    config.output_budget = args.output_budget_mib.max(1) << 20;
    config.durability = match args.durability {
        DurabilityArg::Normal => ensemble_host::log::Durability::Normal,
        DurabilityArg::Full => ensemble_host::log::Durability::Full,
    };
    config.agents_file = args.agents;
    config.agent_init_timeout = Duration::try_from_secs_f64(args.agent_init_timeout)
        .context("--agent-init-timeout takes a positive number of seconds")?;
    config.control_grace = Duration::try_from_secs_f64(args.control_grace)
        .context("--control-grace takes a positive number of seconds")?;
    config.lan = ensemble_host::lan::LanConfig {
        bind: args.lan_bind,
        interfaces: args.mdns.interfaces(),
        insecure_http: args.lan_insecure_http,
        display_name: args.lan_name,
        share: args.lan,
    };
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
