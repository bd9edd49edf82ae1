//! Event frames. A JSON event travels as one text frame
//! `{"type":"event","seq":S,"ts":T,"name":N,"data":D}`; a byte-stream event
//! (shell or process output) travels as one binary frame: a fixed header
//! followed by the raw bytes. Both are encoded once when the event is logged
//! and the same bytes go to every subscriber.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A JSON event as a client reads it (and as `getEvents` lists it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventFrame {
    pub seq: u64,
    /// Milliseconds since the Unix epoch, when the host logged it.
    pub ts: u64,
    pub name: String,
    pub data: Value,
}

/// Builds the text of an event frame. `data_json` must be one JSON value
/// (the caller serialized it); the name is escaped here.
pub fn encode_event_frame(seq: u64, ts: u64, name: &str, data_json: &str) -> String {
    let name_json = Value::from(name).to_string();
    let mut out = String::with_capacity(48 + name_json.len() + data_json.len());
    out.push_str(r#"{"type":"event","seq":"#);
    out.push_str(&seq.to_string());
    out.push_str(r#","ts":"#);
    out.push_str(&ts.to_string());
    out.push_str(r#","name":"#);
    out.push_str(&name_json);
    out.push_str(r#","data":"#);
    out.push_str(data_json);
    out.push('}');
    out
}

/// What a binary frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BinaryKind {
    /// `shellData`: `id` is the shellId.
    ShellData = 1,
    /// `processOutput` on stdout: `id` is the pid.
    ProcessStdout = 2,
    /// `processOutput` on stderr: `id` is the pid.
    ProcessStderr = 3,
    /// `testBytes`, produced only by the test action `emit`.
    TestBytes = 0x7f,
}

impl BinaryKind {
    pub fn from_u8(b: u8) -> Option<BinaryKind> {
        match b {
            1 => Some(BinaryKind::ShellData),
            2 => Some(BinaryKind::ProcessStdout),
            3 => Some(BinaryKind::ProcessStderr),
            0x7f => Some(BinaryKind::TestBytes),
            _ => None,
        }
    }

    /// The event name this kind stands for.
    pub fn event_name(self) -> &'static str {
        match self {
            BinaryKind::ShellData => "shellData",
            BinaryKind::ProcessStdout | BinaryKind::ProcessStderr => "processOutput",
            BinaryKind::TestBytes => "testBytes",
        }
    }
}

impl BinaryHeader {
    /// The `data` of this event in its JSON view (what `getEvents` and
    /// hooks return): the id under its name and the payload in base64.
    pub fn json_data(&self, payload: &[u8]) -> serde_json::Value {
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD.encode(payload);
        match self.kind {
            BinaryKind::ShellData => serde_json::json!({"shellId": self.id, "data": data}),
            BinaryKind::ProcessStdout => {
                serde_json::json!({"pid": self.id, "stream": "stdout", "data": data})
            }
            BinaryKind::ProcessStderr => {
                serde_json::json!({"pid": self.id, "stream": "stderr", "data": data})
            }
            BinaryKind::TestBytes => serde_json::json!({"id": self.id, "data": data}),
        }
    }
}

/// The header of a binary frame: `kind u8 | seq u64 | ts u64 | id u32`,
/// integers big-endian, then the payload to the end of the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinaryHeader {
    pub kind: BinaryKind,
    pub seq: u64,
    pub ts: u64,
    pub id: u32,
}

/// Size of [`BinaryHeader`] on the wire.
pub const BINARY_HEADER_LEN: usize = 21;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("binary frame of {0} bytes is shorter than its {BINARY_HEADER_LEN}-byte header")]
    Short(usize),
    #[error("binary frame has unknown kind {0}")]
    UnknownKind(u8),
}

impl BinaryHeader {
    pub fn encode(&self, payload: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(BINARY_HEADER_LEN + payload.len());
        out.put_u8(self.kind as u8);
        out.put_u64(self.seq);
        out.put_u64(self.ts);
        out.put_u32(self.id);
        out.put_slice(payload);
        out.freeze()
    }

    /// Splits a binary frame into its header and payload.
    pub fn decode(frame: &[u8]) -> Result<(BinaryHeader, &[u8]), FrameError> {
        if frame.len() < BINARY_HEADER_LEN {
            return Err(FrameError::Short(frame.len()));
        }
        let kind = BinaryKind::from_u8(frame[0]).ok_or(FrameError::UnknownKind(frame[0]))?;
        let be64 = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&frame[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let mut id = [0u8; 4];
        id.copy_from_slice(&frame[17..21]);
        let header = BinaryHeader {
            kind,
            seq: be64(1),
            ts: be64(9),
            id: u32::from_be_bytes(id),
        };
        Ok((header, &frame[BINARY_HEADER_LEN..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_frame_round_trip() {
        let text = encode_event_frame(42, 1_700_000_000_000, "test\"Event", r#"{"n":1}"#);
        let frame: EventFrame = serde_json::from_str(&text).unwrap();
        assert_eq!(frame.seq, 42);
        assert_eq!(frame.ts, 1_700_000_000_000);
        assert_eq!(frame.name, "test\"Event");
        assert_eq!(frame.data, serde_json::json!({"n": 1}));
    }

    #[test]
    fn binary_frame_round_trip() {
        let header = BinaryHeader {
            kind: BinaryKind::ShellData,
            seq: u64::MAX - 1,
            ts: 123,
            id: 7,
        };
        let bytes = header.encode(b"\x00\xffhello");
        assert_eq!(bytes.len(), BINARY_HEADER_LEN + 7);
        let (back, payload) = BinaryHeader::decode(&bytes).unwrap();
        assert_eq!(back, header);
        assert_eq!(payload, b"\x00\xffhello");
    }

    #[test]
    fn bad_binary_frames_are_refused() {
        assert_eq!(BinaryHeader::decode(&[1, 2, 3]), Err(FrameError::Short(3)));
        let mut frame = vec![0u8; BINARY_HEADER_LEN];
        frame[0] = 9;
        assert_eq!(
            BinaryHeader::decode(&frame),
            Err(FrameError::UnknownKind(9))
        );
    }
}
