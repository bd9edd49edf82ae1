//! Participants and the control lock as they appear on the wire: who is in a
//! VM, with which role, and who holds control.

use serde::{Deserialize, Serialize};

/// What a participant may do. The owner runs the host; a collaborator may
/// hold control; a viewer only reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Collaborator,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Collaborator => "collaborator",
            Role::Viewer => "viewer",
        }
    }

    /// Parses a role a member may be given (never `owner`: there is one).
    pub fn member(s: &str) -> Option<Role> {
        match s {
            "collaborator" => Some(Role::Collaborator),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

/// A participant's id on the wire: `"p1"`, `"p2"`, ...
pub fn participant_id(n: u64) -> String {
    format!("p{n}")
}

/// Reads a participant id written by [`participant_id`].
pub fn parse_participant_id(s: &str) -> Option<u64> {
    s.strip_prefix('p')?.parse().ok()
}

/// A participant as a VM sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Participant {
    pub id: String,
    pub name: String,
    /// `#rrggbb`, stable per participant.
    pub color: String,
    pub role: Role,
    /// Has at least one open connection to this VM.
    pub connected: bool,
    /// Unix ms of the last connect or disconnect.
    pub last_seen: u64,
}

/// Who holds a VM's control lock (`null` on the wire: nobody).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Holder {
    #[serde(rename_all = "camelCase")]
    Person { participant_id: String },
    /// The agent of `session_id`, running a turn handed to it by
    /// `supervisor`, who answers its permission requests and gets control
    /// back when the turn ends.
    #[serde(rename_all = "camelCase")]
    Agent {
        session_id: String,
        supervisor: String,
    },
}

/// A join request waiting for the owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    pub request_id: String,
    pub name: String,
    /// Unix ms when it was made.
    pub since: u64,
    /// For a request from another host over TLS: the verification code of
    /// its connection, which the requester's screen shows too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// For a request over TLS: the fingerprint of the requesting host's
    /// certificate (64 hex digits), which its token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn holders_read_as_documented() {
        let person = Holder::Person {
            participant_id: "p2".into(),
        };
        assert_eq!(
            json!(person),
            json!({"kind": "person", "participantId": "p2"})
        );
        let agent = Holder::Agent {
            session_id: "s1".into(),
            supervisor: "p1".into(),
        };
        assert_eq!(
            json!(agent),
            json!({"kind": "agent", "sessionId": "s1", "supervisor": "p1"})
        );
        assert_eq!(parse_participant_id(&participant_id(42)), Some(42));
        assert_eq!(parse_participant_id("42"), None);
        assert_eq!(Role::member("owner"), None);
    }
}
