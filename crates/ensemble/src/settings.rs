//! The settings of a host, defined once for `ensemble serve` (its flags)
//! and the desktop app (the same configuration file, and environment
//! variables instead of flags), and how they make a [`HostConfig`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, FromArgMatches};
use ensemble_host::HostConfig;
use ensemble_lan::discovery::Interfaces;

use crate::config;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// A TOML file of settings: any flag below by its long name
    /// (`lan = true`, `lan-bind = "0.0.0.0:6421"`); flags given here win
    /// (default: $XDG_CONFIG_HOME/ensemble/config.toml, if it exists).
    #[arg(long, env = "ENSEMBLE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address the local listener (this machine's UI and clients) binds: a
    /// loopback address. Teammates on other machines come in through
    /// --lan (TLS), never through this one.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], ensemble_protocol::DEFAULT_PORT)))]
    pub bind: SocketAddr,
    /// Where the event logs and the key registry live
    /// (default: $XDG_DATA_HOME/ensemble, usually ~/.local/share/ensemble).
    #[arg(long, env = "ENSEMBLE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// A command started once and fed every event as one JSON line on stdin.
    #[arg(long, value_name = "COMMAND")]
    hook_command: Option<String>,
    /// The hook command acknowledges each line it has processed by writing
    /// `ack VMID SEQ` to its stdout; unacknowledged lines are written again
    /// after it or the host restarts.
    #[arg(long, requires = "hook_command")]
    hook_ack: bool,
    /// Enable the test actions `emit`, which appends arbitrary test events,
    /// and `getLogStats`, which reports what the log spent its time on.
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
    pub lan: bool,
    /// Where the LAN (TLS) listener binds while sharing.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], ensemble_host::lan::DEFAULT_LAN_PORT)), value_name = "ADDR")]
    lan_bind: SocketAddr,
    #[command(flatten)]
    mdns: MdnsArgs,
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

#[derive(clap::Args)]
pub struct MdnsArgs {
    /// Network interfaces mDNS uses, comma-separated (for example `eth0` or
    /// `lo`); `default` is every interface that is up except loopback,
    /// container bridges and tunnels.
    #[arg(
        long,
        env = "ENSEMBLE_MDNS_INTERFACES",
        default_value = "default",
        value_name = "LIST"
    )]
    mdns_interfaces: String,
}

impl MdnsArgs {
    pub fn interfaces(&self) -> Interfaces {
        Interfaces::parse(&self.mdns_interfaces)
    }
}

/// The `serve` command's flags as a command of their own, for reading the
/// configuration file against them. A flag given twice takes the later
/// value: the file's settings come first, the command line's after them.
fn serve_command() -> clap::Command {
    ServeArgs::augment_args(clap::Command::new("serve")).args_override_self(true)
}

impl ServeArgs {
    /// The host's configuration these settings describe, with its data in
    /// `data_dir`. The listener (`bind`) is the caller's: the desktop app
    /// picks its own port.
    pub fn host_config(&self, data_dir: &Path) -> anyhow::Result<HostConfig> {
        let mut config = HostConfig::new(data_dir);
        config.sandbox = self.sandbox.config();
        config.test_actions = self.test_actions;
        config.hook_command = self.hook_command.clone();
        config.hook_ack = self.hook_ack;
        config.stall_timeout = Duration::from_secs(self.stall_timeout.max(1));
        config.output_budget = self.output_budget_mib.max(1) << 20;
        config.durability = match self.durability {
            DurabilityArg::Normal => ensemble_host::log::Durability::Normal,
            DurabilityArg::Full => ensemble_host::log::Durability::Full,
        };
        config.agents_file = self.agents.clone();
        config.agent_init_timeout = Duration::try_from_secs_f64(self.agent_init_timeout)
            .context("--agent-init-timeout takes a positive number of seconds")?;
        config.control_grace = Duration::try_from_secs_f64(self.control_grace)
            .context("--control-grace takes a positive number of seconds")?;
        config.lan = ensemble_host::lan::LanConfig {
            bind: self.lan_bind,
            interfaces: self.mdns.interfaces(),
            insecure_http: self.lan_insecure_http,
            display_name: self.lan_name.clone(),
            share: self.lan,
        };
        Ok(config)
    }
}

/// The environment variables the desktop app takes in place of `serve`
/// flags (it has no command line of its own), with the flag each stands for.
const DESKTOP_ENV: [(&str, &str); 5] = [
    ("ENSEMBLE_DATA_DIR", "data-dir"),
    ("ENSEMBLE_LAN_BIND", "lan-bind"),
    ("ENSEMBLE_MDNS_INTERFACES", "mdns-interfaces"),
    ("ENSEMBLE_ISOLATION", "isolation"),
    ("ENSEMBLE_VM_NETWORK", "vm-network"),
];

/// The desktop app's settings: the configuration file (`ENSEMBLE_CONFIG`,
/// else `$XDG_CONFIG_HOME/ensemble/config.toml` if it exists), then the
/// variables of `DESKTOP_ENV` over it, as flags on the command line are
/// over it for `serve`. Also returns the file read, if any.
pub fn desktop() -> anyhow::Result<(ServeArgs, Option<PathBuf>)> {
    let file = config::locate(&[])?;
    let args = desktop_from(file.as_deref(), |v| std::env::var(v).ok())?;
    Ok((args, file))
}

/// [`desktop`] with the file and the environment given.
fn desktop_from(
    file: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<ServeArgs> {
    let serve = serve_command();
    let mut flags = match file {
        Some(path) => config::flags_from(path, &serve)?,
        None => Vec::new(),
    };
    for (variable, flag) in DESKTOP_ENV {
        if let Some(value) = env(variable) {
            flags.push(format!("--{flag}={value}"));
        }
    }
    let matches = serve
        .no_binary_name(true)
        .try_get_matches_from(&flags)
        .map_err(|e| {
            // clap's message speaks of flags: say where the value came from.
            let from = match file {
                Some(f) => format!("{} or the environment", f.display()),
                None => "the environment".to_owned(),
            };
            anyhow::anyhow!("a setting in {from} is not valid: {}", e.render())
        })?;
    ServeArgs::from_arg_matches(&matches).map_err(|e| anyhow::anyhow!("{}", e.render()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_desktop_takes_the_environment_over_the_file_over_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "lan-bind = \"127.0.0.1:7000\"\nlan-name = \"FromFile\"\nvm-network = \"none\"\ncontrol-grace = 5\n",
        )
        .unwrap();

        let args = desktop_from(
            Some(&file),
            env(&[
                ("ENSEMBLE_LAN_BIND", "127.0.0.1:7001"),
                ("ENSEMBLE_ISOLATION", "none"),
            ]),
        )
        .unwrap();
        let config = args.host_config(dir.path()).unwrap();
        assert_eq!(
            config.lan.bind.port(),
            7001,
            "the environment wins over the file"
        );
        assert_eq!(config.lan.display_name.as_deref(), Some("FromFile"));
        assert_eq!(
            config.sandbox.network,
            ensemble_host::sandbox::Network::None
        );
        assert_eq!(
            config.sandbox.isolation,
            ensemble_host::sandbox::Isolation::None
        );
        assert_eq!(config.control_grace, Duration::from_secs(5));
        assert!(
            !config.lan.share,
            "sharing stays off unless the file says lan = true"
        );

        let defaults = desktop_from(None, env(&[]))
            .unwrap()
            .host_config(dir.path())
            .unwrap();
        assert_eq!(
            defaults.lan.bind.port(),
            ensemble_host::lan::DEFAULT_LAN_PORT
        );
        assert_eq!(
            defaults.sandbox.isolation,
            ensemble_host::sandbox::Isolation::Bwrap
        );
        assert_eq!(defaults.control_grace, Duration::from_secs(30));
    }

    #[test]
    fn a_bad_setting_names_the_key_or_the_value_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "lan-bnd = \"127.0.0.1:0\"\n").unwrap();
        let err = desktop_from(Some(&file), env(&[]))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("lan-bnd") && err.contains("config.toml"),
            "{err}"
        );

        let err = desktop_from(None, env(&[("ENSEMBLE_ISOLATION", "chroot")]))
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("chroot"), "{err:#}");
    }
}
