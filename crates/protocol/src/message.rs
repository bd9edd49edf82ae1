//! JSON messages. Every text frame is one object with a `type` field.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Holder, JoinRequest, Key, Participant};

/// What a client sends, as a text frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum ClientMessage {
    /// First message: opens the VM named by `key` (`getOrCreate`), with one
    /// credential: a `token`, a `joinCode`, the owner's one-time `loginCode`,
    /// or `requestJoin` (the owner decides; the host answers `joinPending`).
    #[serde(rename_all = "camelCase")]
    Hello {
        protocol: u32,
        /// A string or an array of strings; validated by [`Key::from_value`].
        key: Value,
        /// Display name: a new member's name, and the client's name in logs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        join_code: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        login_code: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        request_join: bool,
    },
    /// Starts (or changes the filter of) the event stream. The first
    /// `subscribe` of a connection sets the cursor: every event with
    /// `seq > since` is delivered, then the live stream. Without `since` the
    /// stream starts at the head.
    Subscribe {
        /// Event names to deliver; `["*"]` or absent means all.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        events: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    /// Calls an action; answered by `result` or `error` with the same id.
    Action {
        id: u64,
        name: String,
        #[serde(default)]
        args: Value,
    },
}

/// What the host sends, as a text frame. Events are not in this enum: they
/// are encoded once per event by [`crate::frame::encode_event_frame`] and
/// read back with [`crate::EventFrame`].
// `Welcome` is large next to the others; a message is built once per
// connection or reply and serialized at once, so its size costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerMessage {
    #[serde(rename_all = "camelCase")]
    Welcome {
        protocol: u32,
        server: String,
        vm: VmInfo,
        /// The last seq in the log at the time of this `hello` (0 if empty).
        head: u64,
        /// The oldest seq still in the log (history begins there).
        first: u64,
        /// Output events (shellData, processOutput) before this seq may have
        /// been pruned to keep the log within its budget; other events remain.
        output_from: u64,
        limits: Limits,
        /// `bwrap`: the VM's processes run in a sandbox. `none`: the host
        /// runs them without one (`--isolation none`); UIs warn everyone.
        #[serde(default = "default_isolation")]
        isolation: String,
        /// The participant this connection is.
        you: Participant,
        /// Everyone this VM has seen since it opened, with presence.
        participants: Vec<Participant>,
        /// Who holds control (`null`: nobody).
        control: Option<Holder>,
        /// Participants waiting for an answer to `requestControl`.
        control_requests: Vec<String>,
        /// For the owner only: join requests waiting for them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        join_requests: Option<Vec<JoinRequest>>,
        /// A token just issued (by a join code, a login code or an approved
        /// join request): keep it and send it in the next `hello`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// A join request waits for the owner; `welcome` or an `error`
    /// (`join_denied`) follows on this connection.
    #[serde(rename_all = "camelCase")]
    JoinPending {
        request_id: String,
    },
    /// All events up to `seq` have been delivered; what follows is live.
    CaughtUp {
        seq: u64,
    },
    Result {
        id: u64,
        value: Value,
    },
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        error: ErrorBody,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub id: u64,
    pub key: Key,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_page_limit: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: crate::MAX_MESSAGE_BYTES,
            max_page_limit: crate::MAX_PAGE_LIMIT,
        }
    }
}

/// A typed error: the code is for programs, the message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// Details for programs, by code (`not_in_control`: `{holder}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> ErrorBody {
        self.data = Some(data);
        self
    }
}

fn default_isolation() -> String {
    "bwrap".to_owned()
}

/// Every error code the host sends. docs/protocol.md has the same table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A text frame that is not JSON.
    InvalidJson,
    /// JSON without a known `type`.
    UnknownType,
    /// An action name the host does not know.
    UnknownAction,
    /// Arguments of the wrong number, type or range.
    InvalidArgs,
    /// A message over `limits.maxMessageBytes`.
    MessageTooLarge,
    /// `since` is greater than the log's head.
    SinceBeyondHead,
    /// A key that is not a non-empty string or array of strings.
    InvalidKey,
    /// A message other than `hello` before the VM is open.
    NotOpen,
    /// A second `hello` on one connection.
    AlreadyOpen,
    /// A `hello` naming a protocol version the host does not speak.
    UnsupportedVersion,
    /// A binary frame from the client, which protocol 1 does not use.
    UnsupportedFrame,
    /// An action the host was started without (test actions).
    Disabled,
    /// The host is shutting down or the VM stopped.
    Unavailable,
    /// A failure inside the host (storage); the message says what.
    Internal,
    /// An unknown pid or shellId.
    NotFound,
    /// The process or shell has exited (or its stdin was closed).
    Exited,
    /// A command that does not start (not found, not executable).
    SpawnFailed,
    /// The caller's role does not allow this (a viewer sending input, a
    /// member calling an owner action).
    Forbidden,
    /// A session is already running a turn.
    Busy,
    /// An agent that does not start, does not answer `initialize`, or exits.
    AgentFailed,
    /// `resumeSession` of a session whose agent cannot load it.
    CannotResume,
    /// An input action from someone who does not hold control; `data.holder`
    /// says who does.
    NotInControl,
    /// No credential, or a token, join code or login code that is unknown,
    /// expired, revoked or already used.
    Unauthorized,
    /// The owner denied the join request.
    JoinDenied,
    /// Too many failed attempts from this address; wait and try again.
    RateLimited,
    /// The host cannot sandbox VMs (bubblewrap is missing): it refuses to
    /// open them; the message says how to install it.
    SandboxUnavailable,
    /// The relay cannot reach the paired host (it is off, unreachable, or
    /// refused this install's token).
    PeerUnavailable,
    /// The host at a paired address presented another certificate than the
    /// one pinned: nothing was sent to it.
    FingerprintMismatch,
    /// `saveAgentKey`, `forgetAgentKey` or `createSession` with
    /// `useSavedKey` on a host where no OS keyring can be reached (no Secret
    /// Service on Linux, as in CI); pass the key in the session's `env`.
    NoKeyring,
    /// A code this client does not know yet (sent by a newer host). Never
    /// sent by this version; lets clients read codes added later.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::InvalidJson,
        ErrorCode::UnknownType,
        ErrorCode::UnknownAction,
        ErrorCode::InvalidArgs,
        ErrorCode::MessageTooLarge,
        ErrorCode::SinceBeyondHead,
        ErrorCode::InvalidKey,
        ErrorCode::NotOpen,
        ErrorCode::AlreadyOpen,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnsupportedFrame,
        ErrorCode::Disabled,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::NotFound,
        ErrorCode::Exited,
        ErrorCode::SpawnFailed,
        ErrorCode::Forbidden,
        ErrorCode::Busy,
        ErrorCode::AgentFailed,
        ErrorCode::CannotResume,
        ErrorCode::NotInControl,
        ErrorCode::Unauthorized,
        ErrorCode::JoinDenied,
        ErrorCode::RateLimited,
        ErrorCode::SandboxUnavailable,
        ErrorCode::PeerUnavailable,
        ErrorCode::FingerprintMismatch,
        ErrorCode::NoKeyring,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::UnknownAction => "unknown_action",
            ErrorCode::InvalidArgs => "invalid_args",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::SinceBeyondHead => "since_beyond_head",
            ErrorCode::InvalidKey => "invalid_key",
            ErrorCode::NotOpen => "not_open",
            ErrorCode::AlreadyOpen => "already_open",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnsupportedFrame => "unsupported_frame",
            ErrorCode::Disabled => "disabled",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Exited => "exited",
            ErrorCode::SpawnFailed => "spawn_failed",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Busy => "busy",
            ErrorCode::AgentFailed => "agent_failed",
            ErrorCode::CannotResume => "cannot_resume",
            ErrorCode::NotInControl => "not_in_control",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::JoinDenied => "join_denied",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::SandboxUnavailable => "sandbox_unavailable",
            ErrorCode::PeerUnavailable => "peer_unavailable",
            ErrorCode::FingerprintMismatch => "fingerprint_mismatch",
            ErrorCode::NoKeyring => "no_keyring",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_codes_serialize_as_documented() {
        for code in ErrorCode::ALL {
            assert_eq!(json!(code), json!(code.as_str()));
        }
    }

    #[test]
    fn client_messages_parse() {
        let m: ClientMessage =
            serde_json::from_value(json!({"type": "hello", "protocol": 1, "key": ["a"]})).unwrap();
        assert!(matches!(m, ClientMessage::Hello { protocol: 1, .. }));
        let m: ClientMessage =
            serde_json::from_value(json!({"type": "action", "id": 7, "name": "getEvents"}))
                .unwrap();
        assert!(matches!(
            m,
            ClientMessage::Action {
                id: 7,
                args: Value::Null,
                ..
            }
        ));
        assert!(serde_json::from_value::<ClientMessage>(json!({"type": "nope"})).is_err());
        assert!(serde_json::from_value::<ClientMessage>(
            json!({"type": "subscribe", "since": 1, "extra": true})
        )
        .is_err());
    }
}
