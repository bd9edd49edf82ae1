//! One client following one output stream (a shell's `shellData` or a
//! process's stdout) to its exit event, comparing every payload with the
//! bytes the stream must carry: one byte wrong, missing, extra or out of
//! order fails the run.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

use crate::client::{self, Incoming, Ws, SHELL_DATA};

/// The `processOutput` kind of a stdout frame (protocol.md, "Binary frames").
const PROCESS_STDOUT: u8 = 2;

/// Which stream: its binary kind, its exit event and the field that names it.
#[derive(Clone, Copy)]
pub struct Stream {
    kind: u8,
    exit: &'static str,
    /// In the exit event's data and in the result of the action that
    /// started it (`openShell`, `spawn`).
    id_field: &'static str,
}

pub const SHELL: Stream = Stream {
    kind: SHELL_DATA,
    exit: "shellExit",
    id_field: "shellId",
};

pub const PROCESS: Stream = Stream {
    kind: PROCESS_STDOUT,
    exit: "processExit",
    id_field: "pid",
};

/// What one client saw.
pub struct Received {
    pub ws: Ws,
    /// The id in the frames it followed.
    pub id: u32,
    /// The id in the start action's result, for the client that sent it.
    pub started: Option<u32>,
    pub last_byte_at: Instant,
    pub frames: u64,
}

/// Reads `stream`'s frames until its exit event (exit code 0), checking
/// each against `expected`. `result_id` is the start action this client
/// sent, if it did.
pub async fn receive(
    mut ws: Ws,
    stream: Stream,
    expected: Arc<Vec<u8>>,
    result_id: Option<u64>,
) -> Result<Received> {
    let mut pos = 0usize;
    let mut prev_seq = 0u64;
    let mut id = None;
    let mut started = None;
    let mut last_byte_at = None;
    let mut frames = 0u64;
    let mut exited = false;
    while !exited || (result_id.is_some() && started.is_none()) {
        let msg = client::recv(&mut ws)
            .await
            .with_context(|| format!("at byte {pos} of {}", expected.len()))?;
        match msg {
            Incoming::Binary(f) => {
                if f.kind != stream.kind {
                    bail!(
                        "binary frame of kind {} (only {} subscribed)",
                        f.kind,
                        stream.kind
                    );
                }
                if f.seq <= prev_seq {
                    bail!("ORDER VIOLATION: seq {} after {prev_seq}", f.seq);
                }
                prev_seq = f.seq;
                if *id.get_or_insert(f.id) != f.id {
                    bail!(
                        "output of {} {} while following {id:?}",
                        stream.id_field,
                        f.id
                    );
                }
                let payload = f.payload();
                let end = pos + payload.len();
                let Some(want) = expected.get(pos..end) else {
                    bail!(
                        "{end} bytes of output, more than the {} expected",
                        expected.len()
                    );
                };
                if want != payload {
                    let at = want
                        .iter()
                        .zip(payload)
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    bail!(
                        "BYTES DIFFER at byte {} of the output (seq {}): got {:?}, expected {:?}",
                        pos + at,
                        f.seq,
                        String::from_utf8_lossy(&payload[at..(at + 16).min(payload.len())]),
                        String::from_utf8_lossy(&want[at..(at + 16).min(want.len())])
                    );
                }
                pos = end;
                frames += 1;
                if pos == expected.len() {
                    last_byte_at = Some(Instant::now());
                }
            }
            Incoming::Text(v) => match (v["type"].as_str(), v["name"].as_str()) {
                (Some("event"), Some(name)) if name == stream.exit => {
                    if v["seq"].as_u64().is_none_or(|s| s <= prev_seq) {
                        bail!("{name} out of order: {v}");
                    }
                    let of = v["data"][stream.id_field].as_u64();
                    if id.is_some_and(|id| of != Some(id.into())) {
                        continue; // another one of the VM
                    }
                    if pos != expected.len() {
                        bail!(
                            "{name} after {pos} bytes of {}: output missing",
                            expected.len()
                        );
                    }
                    if v["data"]["exitCode"].as_i64() != Some(0) {
                        bail!("the command did not exit with 0: {v}");
                    }
                    exited = true;
                }
                (Some("result"), _) if v["id"].as_u64() == result_id => {
                    let value = v["value"][stream.id_field]
                        .as_u64()
                        .and_then(|id| u32::try_from(id).ok())
                        .ok_or_else(|| anyhow!("a result without {}: {v}", stream.id_field))?;
                    started = Some(value);
                }
                _ => bail!("unexpected message at byte {pos}: {v}"),
            },
        }
    }
    Ok(Received {
        ws,
        id: id.context("no output at all")?,
        started,
        last_byte_at: last_byte_at.context("no output at all")?,
        frames,
    })
}
