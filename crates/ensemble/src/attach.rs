//! `ensemble attach`: this terminal becomes a window on a shared shell, as
//! with `tmux attach`. It starts from the host's snapshot of the screen,
//! then follows the shell's bytes (resuming after a dropped connection with
//! nothing lost). Keys go to the shell only while you hold the VM's control;
//! the terminal's size applies only while you drive. `Ctrl-]` is the prefix
//! for attach's own keys: `Ctrl-] d` detaches (the shell goes on), `Ctrl-] c`
//! takes control (or asks the holder for it), `Ctrl-] r` releases it, and
//! `Ctrl-] Ctrl-]` sends a literal `Ctrl-]`.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use ensemble_client::{ClientError, Event, VmClient};
use ensemble_protocol::frame::BinaryKind;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::people::control_line;
use crate::remote::Remote;

/// The prefix key (`Ctrl-]`, as telnet's escape).
const PREFIX: u8 = 0x1d;

#[derive(clap::Args)]
pub struct AttachArgs {
    #[command(flatten)]
    remote: Remote,
    /// The shell to attach to (default: the newest running one).
    #[arg(long, conflicts_with = "new")]
    shell: Option<u64>,
    /// Open a new shell first (takes control if nobody holds it).
    #[arg(long)]
    new: bool,
}

/// Restores the terminal however attach ends.
struct RawMode;

impl RawMode {
    fn enter() -> anyhow::Result<RawMode> {
        crossterm::terminal::enable_raw_mode().context("this command needs a terminal")?;
        // The alternate screen keeps the terminal's own scrollback intact.
        print!("\x1b[?1049h\x1b[H\x1b[2J");
        let _ = std::io::stdout().flush();
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        print!("\x1b[?1049l");
        let _ = std::io::stdout().flush();
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

fn size() -> (u16, u16) {
    crossterm::terminal::size().unwrap_or((80, 24))
}

/// Who holds control, as attach tracks it.
struct Control {
    me: String,
    holder: Value,
    participants: Value,
}

impl Control {
    fn mine(&self) -> bool {
        self.holder["kind"] == "person" && self.holder["participantId"] == self.me.as_str()
    }

    fn status(&self) -> String {
        if self.mine() {
            "You drive · Ctrl-] r releases · Ctrl-] d detaches".to_owned()
        } else {
            format!(
                "{} · your keys are not sent · Ctrl-] c asks for control · Ctrl-] d detaches",
                control_line(&self.holder, &self.participants)
            )
        }
    }
}

/// Shows `text` in the terminal's title and, briefly, on its last row.
fn show_status(text: &str) {
    let (_, rows) = size();
    let mut out = std::io::stdout().lock();
    let _ = write!(
        out,
        "\x1b]0;ensemble: {text}\x07\x1b7\x1b[{rows};1H\x1b[7m {text} \x1b[0m\x1b[K\x1b8"
    );
    let _ = out.flush();
}

pub async fn run(args: AttachArgs) -> anyhow::Result<()> {
    let (vm, mut events) = args.remote.open_with_events(None).await?;
    let me = vm.you().id.clone();
    let shell = if args.new {
        take_control(&vm).await?;
        let (cols, rows) = size();
        vm.call("openShell", json!([{"cols": cols, "rows": rows}]))
            .await
            .context("cannot open a shell")?["shellId"]
            .as_u64()
            .context("openShell answered no shellId")?
    } else {
        pick_shell(&vm, args.shell).await?
    };
    let snapshot = vm
        .call("getShellSnapshot", json!([shell]))
        .await
        .context("cannot read the shell's screen")?;
    let from = snapshot["seq"].as_u64().unwrap_or(0);
    let screen = base64::engine::general_purpose::STANDARD
        .decode(snapshot["data"].as_str().unwrap_or_default())
        .context("the snapshot is not base64")?;
    let people = vm.call("listParticipants", json!([])).await?;
    let mut control = Control {
        me,
        holder: people["control"].clone(),
        participants: people["participants"].clone(),
    };

    let _raw = RawMode::enter()?;
    {
        let mut out = std::io::stdout().lock();
        out.write_all(&screen)?;
        out.flush()?;
    }
    show_status(&control.status());
    let keys = read_keys();
    let mut keys = keys;
    let mut prefix = false;
    let mut last_size = size();
    let mut resize = tokio::time::interval(Duration::from_millis(300));
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { bail!("the connection to the host ended") };
                match &event {
                    Event::Bytes { header, payload }
                        if header.kind == BinaryKind::ShellData
                            && u64::from(header.id) == shell
                            && header.seq > from =>
                    {
                        let mut out = std::io::stdout().lock();
                        out.write_all(payload)?;
                        out.flush()?;
                    }
                    Event::Json(f) if f.name == "shellExit" && f.data["shellId"] == shell => {
                        drop(_raw);
                        println!("[the shell exited]");
                        return Ok(());
                    }
                    Event::Json(f) if f.name == "controlChanged" => {
                        control.holder = f.data["holder"].clone();
                        if let Ok(p) = vm.call("listParticipants", json!([])).await {
                            control.participants = p["participants"].clone();
                        }
                        show_status(&control.status());
                    }
                    _ => {}
                }
            }
            key = keys.recv() => {
                let Some(bytes) = key else { return Ok(()) };
                let mut send = Vec::new();
                for b in bytes {
                    if prefix {
                        prefix = false;
                        match b {
                            b'd' | b'D' => {
                                drop(_raw);
                                println!("[detached; the shell goes on]");
                                return Ok(());
                            }
                            b'c' | b'C' => {
                                let text = match take_control(&vm).await {
                                    Ok(()) => "You drive now".to_owned(),
                                    Err(e) => e.to_string(),
                                };
                                show_status(&text);
                            }
                            b'r' | b'R' => {
                                let _ = vm.call("releaseControl", json!([])).await;
                            }
                            PREFIX => send.push(PREFIX),
                            _ => {}
                        }
                    } else if b == PREFIX {
                        prefix = true;
                    } else {
                        send.push(b);
                    }
                }
                if !send.is_empty() {
                    if control.mine() {
                        let data = String::from_utf8_lossy(&send).into_owned();
                        if let Err(e) = vm.call("writeShell", json!([shell, data])).await {
                            show_status(&format!("not sent: {}", message(&e)));
                        }
                    } else {
                        print!("\x07");
                        show_status(&control.status());
                    }
                }
            }
            _ = resize.tick() => {
                let now = size();
                if now != last_size {
                    last_size = now;
                    if control.mine() {
                        let _ = vm.call("resizeShell", json!([shell, now.0, now.1])).await;
                    }
                }
            }
        }
    }
}

fn message(e: &ClientError) -> String {
    e.body()
        .map(|b| b.message.clone())
        .unwrap_or_else(|| e.to_string())
}

/// Takes control when nobody holds it; otherwise asks the holder.
async fn take_control(vm: &VmClient) -> anyhow::Result<()> {
    match vm.call("takeControl", json!([])).await {
        Ok(_) => Ok(()),
        Err(e)
            if e.body()
                .is_some_and(|b| b.code.as_str() == "not_in_control") =>
        {
            vm.call("requestControl", json!([]))
                .await
                .map_err(|e| anyhow::anyhow!(message(&e)))?;
            bail!("someone else drives: you asked them for control")
        }
        Err(e) => bail!(message(&e)),
    }
}

async fn pick_shell(vm: &VmClient, wanted: Option<u64>) -> anyhow::Result<u64> {
    let shells = vm.call("listShells", json!([])).await?;
    let running: Vec<u64> = shells
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["running"] == true)
        .filter_map(|s| s["shellId"].as_u64())
        .collect();
    match wanted {
        Some(id) if running.contains(&id) => Ok(id),
        Some(id) => bail!("shell {id} is not running in this VM (running: {running:?})"),
        None => running
            .iter()
            .max()
            .copied()
            .context("no shell is running in this VM; use --new to open one"),
    }
}

/// Keys from stdin, read on a thread of their own (a blocking read).
fn read_keys() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}
