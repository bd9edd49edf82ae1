//! `ensemble export`: the whole log as JSON Lines, or one shell as an
//! asciicast v2 recording (`asciinema play` plays it): the header has the
//! shell's size when it opened, output events carry its bytes as text and
//! resize events follow its size changes. Read page by page with
//! `getEvents`, with progress on stderr when that is a terminal.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use base64::Engine;
use ensemble_protocol::MAX_PAGE_LIMIT;
use serde_json::{json, Value};

use crate::remote::Remote;

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("format").required(true).args(["asciicast", "jsonl"]))]
pub struct ExportArgs {
    #[command(flatten)]
    remote: Remote,
    /// One shell as an asciicast v2 recording (needs --shell).
    #[arg(long, requires = "shell")]
    asciicast: bool,
    /// The whole log as JSON Lines, one event per line.
    #[arg(long)]
    jsonl: bool,
    /// The shell to record.
    #[arg(long)]
    shell: Option<u64>,
    /// Write here instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

pub async fn run(args: ExportArgs) -> anyhow::Result<()> {
    let vm = args.remote.open().await?;
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot write {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let names: Option<Vec<&str>> = args
        .asciicast
        .then(|| vec!["shellOpened", "shellData", "shellResized", "shellExit"]);
    let mut recording = args.shell.filter(|_| args.asciicast).map(Recording::new);
    let progress = std::io::stderr().is_terminal();
    let mut since = 0u64;
    let mut written = 0u64;
    loop {
        let mut opts = json!({"since": since, "limit": MAX_PAGE_LIMIT});
        if let Some(names) = &names {
            opts["names"] = json!(names);
        }
        let page = vm
            .call("getEvents", json!([opts]))
            .await
            .context("cannot read the log")?;
        for event in page["events"].as_array().into_iter().flatten() {
            match &mut recording {
                Some(rec) => rec.push(event, &mut out)?,
                None => writeln!(out, "{event}")?,
            }
            written += 1;
        }
        if progress {
            eprint!(
                "\rexported {written} events, up to seq {} of {}",
                page["next"], page["head"]
            );
        }
        if page["more"] != true {
            break;
        }
        since = page["next"].as_u64().context("a page without next")?;
    }
    if progress {
        eprintln!();
    }
    if let Some(rec) = &recording {
        if !rec.opened {
            bail!(
                "shell {} has no history in this VM (or its opening was pruned); `ensemble events --only shellOpened` lists the shells",
                rec.shell
            );
        }
    }
    out.flush()?;
    Ok(())
}

/// An asciicast being written: times are relative to the shell's opening,
/// and bytes split inside a UTF-8 character wait for the rest.
struct Recording {
    shell: u64,
    opened: bool,
    t0: u64,
    pending: Vec<u8>,
}

impl Recording {
    fn new(shell: u64) -> Recording {
        Recording {
            shell,
            opened: false,
            t0: 0,
            pending: Vec::new(),
        }
    }

    fn push(&mut self, event: &Value, out: &mut dyn Write) -> anyhow::Result<()> {
        let data = &event["data"];
        if data["shellId"] != self.shell {
            return Ok(());
        }
        let ts = event["ts"].as_u64().unwrap_or(0);
        let at = |t0: u64| (ts.saturating_sub(t0)) as f64 / 1000.0;
        match event["name"].as_str() {
            Some("shellOpened") if !self.opened => {
                self.opened = true;
                self.t0 = ts;
                let header = json!({
                    "version": 2,
                    "width": data["cols"],
                    "height": data["rows"],
                    "timestamp": ts / 1000,
                    "title": data["command"],
                });
                writeln!(out, "{header}")?;
            }
            Some("shellData") if self.opened => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data["data"].as_str().unwrap_or_default())
                    .context("shellData that is not base64")?;
                self.pending.extend_from_slice(&bytes);
                let text = take_text(&mut self.pending);
                if !text.is_empty() {
                    writeln!(out, "{}", json!([at(self.t0), "o", text]))?;
                }
            }
            Some("shellResized") if self.opened => {
                let size = format!("{}x{}", data["cols"], data["rows"]);
                writeln!(out, "{}", json!([at(self.t0), "r", size]))?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The text of `pending`, keeping an incomplete character at its end.
fn take_text(pending: &mut Vec<u8>) -> String {
    let cut = match std::str::from_utf8(pending) {
        Ok(_) => pending.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => pending.len(),
    };
    let rest = pending.split_off(cut);
    let text = String::from_utf8_lossy(pending).into_owned();
    *pending = rest;
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_between_events_are_kept_whole() {
        let mut pending = "é".as_bytes()[..1].to_vec();
        assert_eq!(take_text(&mut pending), "");
        pending.extend_from_slice(&"é".as_bytes()[1..]);
        pending.extend_from_slice(b"x");
        assert_eq!(take_text(&mut pending), "éx");
        assert!(pending.is_empty());
    }
}
