//! The Ensemble wire protocol, defined once.
//!
//! Layout:
//! * [`message`]: the JSON messages a client and the host exchange, and the
//!   error codes.
//! * [`key`]: VM keys (`"name"` or `["a", "b"]`) and their validation.
//! * [`args`]: positional action arguments, agentOS style (`[sessionId, {since}]`).
//! * [`frame`]: the binary frame that carries byte streams (shell and process
//!   output), and the event frame text that carries every JSON event.
//!
//! docs/protocol.md describes the same thing for people; tests/docs.rs checks
//! that every error code, action, event and limit named here appears there.
#![forbid(unsafe_code)]

pub mod args;
pub mod frame;
pub mod key;
pub mod message;
pub mod people;

pub use args::Args;
pub use frame::{BinaryHeader, BinaryKind, EventFrame, FrameError};
pub use key::{Key, KeyError};
pub use message::{ClientMessage, ErrorBody, ErrorCode, Limits, ServerMessage, VmInfo};
pub use people::{Holder, JoinRequest, Participant, Role};

/// The protocol version a client names in `hello`. Bumped on any change that
/// an existing client could misread.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest text or binary message the host accepts and answers normally.
/// A bigger one (up to [`HARD_MAX_MESSAGE_BYTES`]) gets `message_too_large`
/// and the connection stays open.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20; // 1 MiB

/// Beyond this the WebSocket layer refuses to buffer the message at all and
/// closes the connection with status 1009: holding it would cost memory an
/// attacker controls.
pub const HARD_MAX_MESSAGE_BYTES: usize = 16 << 20; // 16 MiB

/// Largest page `getEvents` / `getSequencedEvents` return.
pub const MAX_PAGE_LIMIT: u32 = 10_000;

/// Page size when the caller gives no `limit`.
pub const DEFAULT_PAGE_LIMIT: u32 = 1_000;

/// The WebSocket path of protocol version 1.
pub const WS_PATH: &str = "/v1/ws";

/// Default TCP port of a host.
pub const DEFAULT_PORT: u16 = 6420;

/// Every action the host understands, in the order docs/protocol.md lists them.
pub const ACTIONS: &[&str] = &[
    "getEvents",
    "getSequencedEvents",
    "exec",
    "spawn",
    "writeProcessStdin",
    "closeProcessStdin",
    "waitProcess",
    "stopProcess",
    "killProcess",
    "listProcesses",
    "getProcess",
    "openShell",
    "writeShell",
    "resizeShell",
    "closeShell",
    "listShells",
    "getShellSnapshot",
    "createSession",
    "resumeSession",
    "listSessions",
    "getSession",
    "sendPrompt",
    "cancelPrompt",
    "setMode",
    "closeSession",
    "respondPermission",
    "listAgents",
    "saveAgentKey",
    "forgetAgentKey",
    "emit",
    "getLogStats",
    "takeControl",
    "requestControl",
    "grantControl",
    "denyControl",
    "releaseControl",
    "handToAgent",
    "listParticipants",
    "updateParticipant",
    "listVms",
    "setRole",
    "removeParticipant",
    "listJoinRequests",
    "approveJoin",
    "denyJoin",
    "createJoinCode",
    "listJoinCodes",
    "revokeJoinCode",
    "getLan",
    "setLanSharing",
    "joinPeer",
    "forgetPeer",
];

/// Actions that change what runs in a VM: only the control holder may call
/// them (`not_in_control` otherwise; viewers get `forbidden`). While the
/// agent holds control, its supervisor may still answer its permission
/// requests and cancel its turn.
pub const INPUT_ACTIONS: &[&str] = &[
    "exec",
    "spawn",
    "writeProcessStdin",
    "closeProcessStdin",
    "stopProcess",
    "killProcess",
    "openShell",
    "writeShell",
    "resizeShell",
    "closeShell",
    "createSession",
    "resumeSession",
    "sendPrompt",
    "cancelPrompt",
    "setMode",
    "closeSession",
    "respondPermission",
];

/// Actions only the owner may call (`forbidden` otherwise).
pub const OWNER_ACTIONS: &[&str] = &[
    "setRole",
    "removeParticipant",
    "listJoinRequests",
    "approveJoin",
    "denyJoin",
    "createJoinCode",
    "listJoinCodes",
    "revokeJoinCode",
    "getLan",
    "setLanSharing",
    "joinPeer",
    "forgetPeer",
    "saveAgentKey",
    "forgetAgentKey",
];

/// Every event name the host produces today.
pub const EVENTS: &[&str] = &[
    "processStarted",
    "processOutput",
    "processExit",
    "shellOpened",
    "shellData",
    "shellResized",
    "shellExit",
    "sessionCreated",
    "sessionResumed",
    "sessionEvent",
    "prompt",
    "turnEnded",
    "permissionRequest",
    "permissionTimeout",
    "sessionEnded",
    "participantJoined",
    "participantLeft",
    "participantUpdated",
    "controlRequested",
    "controlDenied",
    "controlChanged",
    "joinRequested",
    "joinResolved",
    "sandboxLimit",
    "testEvent",
    "testBytes",
];
