//! Output chunking shared by processes and shells: bytes read from a pipe or a
//! PTY become log events of at most [`MAX_CHUNK`] bytes, cut on UTF-8
//! character boundaries, and reads that pile up while the previous chunk is
//! being logged are merged into one event instead of many tiny ones.

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Largest payload of one output event.
pub const MAX_CHUNK: usize = 64 << 10; // 64 KiB

/// A chunk at least this large means a stream in bulk (a build log, a
/// `cat`), not an interactive echo: the next chunk lingers for more reads.
const BULK_CHUNK: usize = 4 << 10;

/// How long a chunk after a bulk one waits for more reads before it is
/// logged. Bigger chunks make fewer commits and fewer frames for every
/// client, which is what bulk throughput is made of; a keystroke's echo
/// after small chunks never waits.
const BULK_LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// Reads waiting to be merged and logged. When full the reader blocks, which
/// in turn blocks the program writing: output is never dropped, and host
/// memory per stream stays under `READ_QUEUE` reads.
pub const READ_QUEUE: usize = 64;

/// Splits `buf` at the last UTF-8 character boundary at or before `max`;
/// returns how many bytes to emit now. Bytes that are not UTF-8 at all are
/// cut anywhere (they cannot be split "inside a character").
pub fn cut_point(buf: &[u8], max: usize) -> usize {
    let end = buf.len().min(max);
    if end == buf.len() && end < max {
        // Everything fits; only hold back an unfinished trailing character.
        return end - incomplete_tail(&buf[..end]);
    }
    let tail = incomplete_tail(&buf[..end]);
    if tail == end {
        end
    } else {
        end - tail
    }
}

/// Length of an unfinished UTF-8 sequence at the end of `buf` (0 to 3).
fn incomplete_tail(buf: &[u8]) -> usize {
    for back in 1..=3.min(buf.len()) {
        let b = buf[buf.len() - back];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte: look further back
        }
        let need = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if need > back { back } else { 0 };
    }
    0
}

/// Merges reads into chunks. Call [`Merger::next`] in a loop; it returns
/// `None` once the reader is done and everything was handed out, or at once
/// when `cancel` fires (the VM closed while something it could not kill, a
/// process that left its session, still holds the pipe open).
pub struct Merger {
    rx: mpsc::Receiver<Bytes>,
    pending: BytesMut,
    done: bool,
    cancel: CancellationToken,
    /// The size of the chunk handed out last.
    last: usize,
}

impl Merger {
    pub fn new(rx: mpsc::Receiver<Bytes>, cancel: CancellationToken) -> Merger {
        Merger {
            rx,
            pending: BytesMut::new(),
            done: false,
            cancel,
            last: 0,
        }
    }

    /// The next read, or `None` at the end or on cancel.
    async fn recv(&mut self) -> Option<Bytes> {
        tokio::select! {
            _ = self.cancel.cancelled() => None,
            read = self.rx.recv() => read,
        }
    }

    /// Takes reads for up to [`BULK_LINGER`] more, until [`MAX_CHUNK`].
    async fn linger(&mut self) {
        let until = tokio::time::Instant::now() + BULK_LINGER;
        while self.pending.len() < MAX_CHUNK && !self.done {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return,
                read = self.recv() => match read {
                    Some(b) => self.pending.extend_from_slice(&b),
                    None => self.done = true,
                },
            }
        }
    }

    /// The next chunk: waits for at least one read, then takes whatever else
    /// is already queued, up to [`MAX_CHUNK`]; after a bulk chunk, whatever
    /// comes within [`BULK_LINGER`] too.
    pub async fn next(&mut self) -> Option<Bytes> {
        loop {
            if self.pending.len() < MAX_CHUNK && !self.done {
                if self.pending.is_empty() {
                    match self.recv().await {
                        Some(b) => self.pending.extend_from_slice(&b),
                        None => self.done = true,
                    }
                }
                while self.pending.len() < MAX_CHUNK {
                    match self.rx.try_recv() {
                        Ok(b) => self.pending.extend_from_slice(&b),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            self.done = true;
                            break;
                        }
                    }
                }
                if self.last >= BULK_CHUNK {
                    self.linger().await;
                }
            }
            if self.pending.is_empty() || self.cancel.is_cancelled() {
                return None;
            }
            let n = if self.done && self.pending.len() <= MAX_CHUNK {
                self.pending.len()
            } else {
                cut_point(&self.pending, MAX_CHUNK)
            };
            if n > 0 {
                self.last = n;
                return Some(self.pending.split_to(n).freeze());
            }
            // Only part of a character so far: wait for the rest.
            if self.done {
                return Some(self.pending.split().freeze());
            }
            match self.recv().await {
                Some(b) => self.pending.extend_from_slice(&b),
                None => self.done = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_never_split_a_character() {
        let text = "aé€😀".repeat(30_000);
        let bytes = text.as_bytes();
        let mut at = 0;
        while at < bytes.len() {
            let n = cut_point(&bytes[at..], 1000);
            assert!(n > 0 && n <= 1000);
            assert!(std::str::from_utf8(&bytes[at..at + n]).is_ok());
            at += n;
        }
    }

    #[test]
    fn holds_back_only_an_unfinished_tail() {
        assert_eq!(cut_point(b"abc", 10), 3);
        assert_eq!(cut_point("ab\u{20ac}".as_bytes(), 10), 5);
        assert_eq!(cut_point(&"ab\u{20ac}".as_bytes()[..4], 10), 2);
        // Not UTF-8: cut anyway.
        assert_eq!(cut_point(&[0xff; 20], 8), 8);
    }

    #[tokio::test]
    async fn merges_queued_reads_and_splits_big_ones() {
        let (tx, rx) = mpsc::channel(READ_QUEUE);
        for _ in 0..10 {
            tx.send(Bytes::from_static(b"x")).await.unwrap();
        }
        let mut m = Merger::new(rx, CancellationToken::new());
        assert_eq!(m.next().await.unwrap().len(), 10, "ten reads, one chunk");
        tx.send(Bytes::from(vec![b'y'; MAX_CHUNK + 5]))
            .await
            .unwrap();
        assert_eq!(m.next().await.unwrap().len(), MAX_CHUNK);
        assert_eq!(m.next().await.unwrap().len(), 5);
        // A character split across reads arrives whole.
        let euro = "\u{20ac}".as_bytes();
        tx.send(Bytes::copy_from_slice(&euro[..1])).await.unwrap();
        let next = tokio::spawn(async move { m.next().await });
        tokio::task::yield_now().await;
        tx.send(Bytes::copy_from_slice(&euro[1..])).await.unwrap();
        assert_eq!(&next.await.unwrap().unwrap()[..], euro);
    }

    #[tokio::test]
    async fn cancel_ends_a_stream_whose_writer_never_closes() {
        let (tx, rx) = mpsc::channel(READ_QUEUE);
        let cancel = CancellationToken::new();
        let mut m = Merger::new(rx, cancel.clone());
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        assert_eq!(m.next().await.unwrap().len(), 1);
        cancel.cancel();
        assert!(m.next().await.is_none());
        drop(tx);
    }
}
