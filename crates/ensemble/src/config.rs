//! The configuration file: `$XDG_CONFIG_HOME/ensemble/config.toml` (or
//! `--config FILE`, or `ENSEMBLE_CONFIG`) holds any `serve` flag under its
//! long name (`lan = true`, `lan-bind = "0.0.0.0:6421"`, `vm-memory = ...`).
//! Flags on the command line win over the file, the file over the defaults.
//! A key that is not a `serve` flag is an error naming the key and the file.
//!
//! It works on the command line itself: the file's settings become flags
//! placed before the user's, and `serve` lets a later flag override an
//! earlier one. So every flag, present or future, can live in the file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

/// Where the file is looked for when neither `--config` nor
/// `ENSEMBLE_CONFIG` says.
pub fn default_path() -> Option<PathBuf> {
    dirs_config().map(|d| d.join("ensemble").join("config.toml"))
}

fn dirs_config() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
}

/// The file named by `--config FILE` / `--config=FILE` in `args`, or by
/// `ENSEMBLE_CONFIG`, or the default one if it exists; `None`: no file.
pub fn locate(args: &[String]) -> anyhow::Result<Option<PathBuf>> {
    let mut named = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            named = it.next().cloned();
        } else if let Some(v) = a.strip_prefix("--config=") {
            named = Some(v.to_owned());
        }
    }
    if let Some(path) = named.or_else(|| std::env::var("ENSEMBLE_CONFIG").ok()) {
        let path = PathBuf::from(path);
        if !path.exists() {
            bail!("the configuration file {} does not exist", path.display());
        }
        return Ok(Some(path));
    }
    Ok(default_path().filter(|p| p.exists()))
}

/// The `serve` flags the file sets, as command-line arguments.
pub fn flags_from(path: &Path, serve: &Command) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    let mut out = Vec::new();
    for (key, value) in table {
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config" && key != "help")
            .with_context(|| {
                format!(
                    "{}: unknown setting {key:?} (settings are `ensemble serve` flags without the dashes; see `ensemble serve --help`)",
                    path.display()
                )
            })?;
        let takes_value = arg.get_action().takes_values();
        match value {
            toml::Value::Boolean(on) if !takes_value => {
                if on {
                    out.push(format!("--{key}"));
                }
            }
            toml::Value::Boolean(_) => {
                bail!("{}: {key} takes a value, not true/false", path.display())
            }
            _ if !takes_value => bail!("{}: {key} is a switch: write {key} = true", path.display()),
            toml::Value::String(s) => out.push(format!("--{key}={s}")),
            toml::Value::Integer(n) => out.push(format!("--{key}={n}")),
            toml::Value::Float(x) => out.push(format!("--{key}={x}")),
            toml::Value::Array(items) => {
                let parts: Vec<String> = items
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect();
                out.push(format!("--{key}={}", parts.join(",")));
            }
            other => bail!(
                "{}: {key} = {other} is not a value a flag takes",
                path.display()
            ),
        }
    }
    Ok(out)
}

/// The argument list with the file's flags inserted right after `serve`
/// (so the user's own flags, later, win), and where they came from.
pub fn apply(args: Vec<String>, cli: &Command) -> anyhow::Result<(Vec<String>, Option<PathBuf>)> {
    let Some(pos) = args.iter().position(|a| a == "serve" || a == "config") else {
        return Ok((args, None));
    };
    let Some(path) = locate(&args[pos..])? else {
        return Ok((args, None));
    };
    let serve = cli.find_subcommand("serve").context("no serve command")?;
    let flags = flags_from(&path, serve)?;
    let mut out = args[..=pos].to_vec();
    if args[pos] == "serve" {
        out.extend(flags);
    }
    out.extend_from_slice(&args[pos + 1..]);
    Ok((out, Some(path)))
}

/// For `ensemble config`: each `serve` setting, its value and its source.
pub fn explain(
    serve: &Command,
    file: Option<&Path>,
    file_flags: &[String],
    user: &[String],
) -> anyhow::Result<String> {
    let mut argv = file_flags.to_vec();
    argv.extend_from_slice(user);
    let matches: ArgMatches = serve
        .clone()
        .no_binary_name(true)
        .try_get_matches_from(&argv)
        .context("the settings do not parse")?;
    let from_file = |long: &str| {
        file_flags
            .iter()
            .any(|f| f == &format!("--{long}") || f.starts_with(&format!("--{long}=")))
    };
    let from_user = |long: &str| {
        user.iter()
            .any(|f| f == &format!("--{long}") || f.starts_with(&format!("--{long}=")))
    };
    let mut out = String::new();
    for arg in serve.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        if long == "help" || long == "config" {
            continue;
        }
        let value = matches
            .get_raw(id)
            .map(|v| {
                v.map(|s| s.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_else(|| {
                if matches.get_flag_checked(id) {
                    "true".to_owned()
                } else {
                    "-".to_owned()
                }
            });
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) if from_user(long) => "command line".to_owned(),
            Some(ValueSource::CommandLine) if from_file(long) => file
                .map(|f| f.display().to_string())
                .unwrap_or_else(|| "file".to_owned()),
            Some(ValueSource::EnvVariable) => "environment".to_owned(),
            _ => "default".to_owned(),
        };
        out.push_str(&format!("{long:<24} {value:<32} {source}\n"));
    }
    Ok(out)
}

trait FlagChecked {
    fn get_flag_checked(&self, id: &str) -> bool;
}

impl FlagChecked for ArgMatches {
    fn get_flag_checked(&self, id: &str) -> bool {
        self.try_get_one::<bool>(id)
            .ok()
            .flatten()
            .copied()
            .unwrap_or(false)
    }
}
