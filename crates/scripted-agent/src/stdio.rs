//! The agent's two pipes: newline-delimited JSON-RPC lines in, and [`Output`],
//! the only writer of standard output, which also prints the deliberate
//! garbage and can wait until everything queued before a point is written.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use agent_client_protocol::v1::ConnectionTo;
use agent_client_protocol::{Client, UntypedMessage};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;

/// The non-JSON lines `garbage` and `--garbage-at-start` print, in order: a
/// plain sentence, a JSON object cut short, and a bracketed line that is not
/// JSON either. None of them is valid JSON, so a client cannot mistake one
/// for a message.
pub const GARBAGE_LINES: [&str; 3] = [
    "scripted agent: this line is not JSON-RPC",
    r#"{"jsonrpc":"2.0","method":"#,
    "[garbage] 42 % not json",
];

/// Method of the in-process flush marker. It goes through the SDK's outgoing
/// queue like a notification, but [`Output`] swallows it instead of writing
/// it. The queue is first in, first out, so when the marker reaches
/// [`Output`], every message queued before it has been written. The leading
/// underscore keeps it in ACP's extension namespace should it ever leak.
const FLUSH_METHOD: &str = "_ensemble_scripted/flush";

/// Standard output, shared by the JSON-RPC transport and the commands that
/// write past it (`garbage`) or must know their output is out (`crash`).
pub(crate) struct Output {
    /// An async mutex because a line's write and flush are awaited while the
    /// lock is held: that is what keeps a raw garbage line from landing in the
    /// middle of a JSON-RPC message.
    writer: tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>,
    /// Flush markers sent but not yet reached, by id.
    waiters: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_flush: AtomicU64,
}

impl Output {
    pub(crate) fn new(writer: impl AsyncWrite + Send + 'static) -> Arc<Self> {
        Arc::new(Self {
            writer: tokio::sync::Mutex::new(Box::pin(writer)),
            waiters: Mutex::new(HashMap::new()),
            next_flush: AtomicU64::new(1),
        })
    }

    /// Write one serialized JSON-RPC message as a line, or release the waiter
    /// of a flush marker.
    async fn write_message(&self, line: String) -> io::Result<()> {
        if let Some(id) = flush_marker_id(&line) {
            let waiter = self
                .waiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            if let Some(waiter) = waiter {
                // The waiter may have gone away (its turn was dropped); nothing to do.
                let _ = waiter.send(());
            }
            return Ok(());
        }
        let mut writer = self.writer.lock().await;
        writer.write_all(line.as_bytes()).await?;
        writer.write_all(b"\n").await?;
        writer.flush().await
    }

    /// Write lines that are not JSON-RPC, whole and together, between two
    /// messages.
    pub(crate) async fn write_raw_lines(&self, lines: &[&str]) -> io::Result<()> {
        let mut writer = self.writer.lock().await;
        for line in lines {
            writer.write_all(line.as_bytes()).await?;
            writer.write_all(b"\n").await?;
        }
        writer.flush().await
    }

    /// Wait until every message sent on `cx` before this call has been
    /// written and flushed.
    pub(crate) async fn flush(
        &self,
        cx: &ConnectionTo<Client>,
    ) -> agent_client_protocol::Result<()> {
        let id = self.next_flush.fetch_add(1, Ordering::Relaxed);
        let (waiter_tx, waiter_rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, waiter_tx);
        let marker = UntypedMessage::new(FLUSH_METHOD, serde_json::json!({ "id": id }))?;
        cx.send_notification(marker)?;
        waiter_rx.await.map_err(|_| {
            agent_client_protocol::Error::internal_error()
                .data("standard output closed before the flush marker reached it")
        })
    }

    /// The outgoing half of the JSON-RPC transport.
    pub(crate) fn sink(self: &Arc<Self>) -> impl Sink<String, Error = io::Error> + Send + 'static {
        futures_util::sink::unfold(self.clone(), |output, line: String| async move {
            output.write_message(line).await?;
            Ok::<_, io::Error>(output)
        })
    }
}

/// The id of a flush marker, if `line` is one. Only lines that mention the
/// method are parsed, so ordinary traffic costs a substring search.
fn flush_marker_id(line: &str) -> Option<u64> {
    if !line.contains(FLUSH_METHOD) {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    // A message chunk can contain the method name as text; only a
    // notification *of* that method is a marker.
    if value.get("method")?.as_str()? != FLUSH_METHOD {
        return None;
    }
    value.get("params")?.get("id")?.as_u64()
}

/// The incoming half of the JSON-RPC transport: one item per non-blank line,
/// without its line ending. Bytes that are not UTF-8 are replaced rather than
/// failing the stream, so such a line is rejected by the JSON parser like any
/// other malformed message instead of ending the connection.
pub(crate) fn lines(
    input: impl AsyncRead + Send + Unpin + 'static,
) -> impl Stream<Item = io::Result<String>> + Send + 'static {
    futures_util::stream::unfold(BufReader::new(input), |mut reader| async move {
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) => return None,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']);
                    if line.trim().is_empty() {
                        continue;
                    }
                    return Some((Ok(line.to_owned()), reader));
                }
                Err(error) => return Some((Err(error), reader)),
            }
        }
    })
}

/// Read `input` to its end, discarding it (`--hang-initialize`).
pub(crate) async fn drain(input: impl AsyncRead + Send + Unpin) -> io::Result<()> {
    let mut input = input;
    tokio::io::copy(&mut input, &mut tokio::io::sink()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_marker_is_recognised_only_as_a_notification_of_its_method() {
        let marker =
            format!(r#"{{"jsonrpc":"2.0","method":"{FLUSH_METHOD}","params":{{"id":7}}}}"#);
        assert_eq!(flush_marker_id(&marker), Some(7));
        let chunk = format!(
            r#"{{"jsonrpc":"2.0","method":"session/update","params":{{"text":"{FLUSH_METHOD}","id":7}}}}"#
        );
        assert_eq!(flush_marker_id(&chunk), None);
        assert_eq!(
            flush_marker_id(r#"{"jsonrpc":"2.0","method":"session/update"}"#),
            None
        );
    }

    #[test]
    fn garbage_lines_are_not_json() {
        for line in GARBAGE_LINES {
            assert!(
                serde_json::from_str::<serde_json::Value>(line).is_err(),
                "{line}"
            );
        }
    }
}
