//! Agents' API keys in the OS keyring (Secret Service on Linux, Keychain on
//! macOS, Credential Manager on Windows), one per agent type: service
//! [`SERVICE`], user = the agent type. Only the owner saves, forgets or uses
//! them; a key is handed to an agent only in its environment, under the
//! variable [`key_variable`] names, and never logged, returned or put into an
//! error message.
//!
//! Also here: whether an agent's command can start ([`availability`]), for
//! the agent picker.

use std::path::Path;
use std::time::Duration;

use ensemble_protocol::{ErrorBody, ErrorCode};

use crate::agents::AgentCommand;

/// The keyring service under which keys are saved.
pub const SERVICE: &str = "ensemble";

/// Longest key `saveAgentKey` accepts, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;

/// How long a keyring call may take (an unlock prompt counts) before the
/// action gives up.
const KEYRING_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment variable through which an agent of this type takes its
/// API key, for the built-in agent types that need one.
pub fn key_variable(agent_type: &str) -> Option<&'static str> {
    match agent_type {
        "claude" => Some("ANTHROPIC_API_KEY"),
        "gemini" => Some("GEMINI_API_KEY"),
        "codex" => Some("OPENAI_API_KEY"),
        _ => None,
    }
}

/// Whether an agent's command can start, as the picker shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// The command is a file or on the agents' PATH.
    Installed,
    /// Started through `npx`, which is there: the package downloads when
    /// the agent first starts (the network is not probed).
    OnFirstUse,
    /// The command is not found.
    Missing,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Installed => "installed",
            Availability::OnFirstUse => "onFirstUse",
            Availability::Missing => "missing",
        }
    }
}

/// Where `command` would be found with `path` (the agents' `PATH`): a
/// command with a `/` is a file path, anything else is looked up in `path`.
pub fn availability(agent: &AgentCommand, path: &str) -> Availability {
    if !found(&agent.command, path) {
        return Availability::Missing;
    }
    let npx = Path::new(&agent.command)
        .file_name()
        .is_some_and(|n| n == "npx");
    if npx {
        Availability::OnFirstUse
    } else {
        Availability::Installed
    }
}

fn found(command: &str, path: &str) -> bool {
    if command.contains('/') {
        return executable(Path::new(command));
    }
    std::env::split_paths(path).any(|dir| executable(&dir.join(command)))
}

fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Why a keyring call failed. The message never holds a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no OS keyring is available: {0}; pass the key in the session's env instead")]
    NoKeyring(String),
    #[error("{0}")]
    Invalid(String),
}

impl KeyError {
    pub fn to_body(&self) -> ErrorBody {
        match self {
            KeyError::NoKeyring(_) => ErrorBody::new(ErrorCode::NoKeyring, self.to_string()),
            KeyError::Invalid(_) => ErrorBody::new(ErrorCode::InvalidArgs, self.to_string()),
        }
    }
}

fn keyring_error(e: keyring::Error) -> KeyError {
    // The keyring's own messages describe the store, never the secret.
    let why = match e {
        keyring::Error::NoStorageAccess(inner) | keyring::Error::PlatformFailure(inner) => {
            inner.to_string()
        }
        other => other.to_string(),
    };
    KeyError::NoKeyring(why)
}

async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, KeyError> + Send + 'static,
) -> Result<R, KeyError> {
    match tokio::time::timeout(KEYRING_TIMEOUT, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(KeyError::NoKeyring(format!("the keyring call failed: {e}"))),
        Err(_) => Err(KeyError::NoKeyring(format!(
            "the keyring did not answer within {} s (is it locked?)",
            KEYRING_TIMEOUT.as_secs()
        ))),
    }
}

fn entry(agent_type: &str) -> Result<keyring::Entry, KeyError> {
    keyring::Entry::new(SERVICE, agent_type).map_err(keyring_error)
}

/// Saves `key` for `agent_type`, replacing an earlier one.
pub async fn save(agent_type: &str, key: &str) -> Result<(), KeyError> {
    let key = key.trim();
    if key.is_empty() || key.len() > MAX_KEY_BYTES || key.contains('\0') {
        return Err(KeyError::Invalid(format!(
            "a key is 1 to {MAX_KEY_BYTES} bytes without NUL"
        )));
    }
    let agent_type = agent_type.to_owned();
    let key = key.to_owned();
    blocking(move || {
        entry(&agent_type)?
            .set_password(&key)
            .map_err(keyring_error)
    })
    .await
}

/// Deletes `agent_type`'s key; answers whether there was one.
pub async fn forget(agent_type: &str) -> Result<bool, KeyError> {
    let agent_type = agent_type.to_owned();
    blocking(move || match entry(&agent_type)?.delete_credential() {
        Ok(()) => Ok(true),
        Err(keyring::Error::NoEntry) => Ok(false),
        Err(e) => Err(keyring_error(e)),
    })
    .await
}

/// `agent_type`'s saved key, if any.
pub async fn load(agent_type: &str) -> Result<Option<String>, KeyError> {
    let agent_type = agent_type.to_owned();
    blocking(move || match entry(&agent_type)?.get_password() {
        Ok(key) => Ok(Some(key)),
        Err(keyring::Error::NoEntry) => Ok(None),
        Err(e) => Err(keyring_error(e)),
    })
    .await
}

/// Which of `agent_types` have a saved key, in one blocking call; an error
/// if the keyring cannot be read at all.
pub async fn saved(agent_types: Vec<String>) -> Result<Vec<bool>, KeyError> {
    blocking(move || saved_now(&agent_types)).await
}

/// On Linux a search of the Secret Service, which sees locked items without
/// unlocking them: the picker's list never raises an unlock prompt.
#[cfg(target_os = "linux")]
fn saved_now(agent_types: &[String]) -> Result<Vec<bool>, KeyError> {
    use dbus_secret_service::{EncryptionType, SecretService};
    let ss = SecretService::connect(EncryptionType::Plain)
        .map_err(|e| KeyError::NoKeyring(e.to_string()))?;
    agent_types
        .iter()
        .map(|t| {
            let attributes =
                std::collections::HashMap::from([("service", SERVICE), ("username", t.as_str())]);
            let found = ss
                .search_items(attributes)
                .map_err(|e| KeyError::NoKeyring(e.to_string()))?;
            Ok(!found.unlocked.is_empty() || !found.locked.is_empty())
        })
        .collect()
}

#[cfg(not(target_os = "linux"))]
fn saved_now(agent_types: &[String]) -> Result<Vec<bool>, KeyError> {
    agent_types
        .iter()
        .map(|t| match entry(t)?.get_password() {
            Ok(_) => Ok(true),
            Err(keyring::Error::NoEntry) => Ok(false),
            Err(e) => Err(keyring_error(e)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("my-agent");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let npx = dir.path().join("npx");
        std::fs::copy(&bin, &npx).unwrap();
        let path = dir.path().display().to_string();
        let cmd = |c: &str| AgentCommand {
            command: c.to_owned(),
            args: Vec::new(),
        };
        assert_eq!(
            availability(&cmd("my-agent"), &path),
            Availability::Installed
        );
        assert_eq!(
            availability(&cmd(&bin.display().to_string()), "/nowhere"),
            Availability::Installed
        );
        assert_eq!(availability(&cmd("npx"), &path), Availability::OnFirstUse);
        assert_eq!(availability(&cmd("npx"), "/nowhere"), Availability::Missing);
        assert_eq!(
            availability(&cmd("no-such-agent"), &path),
            Availability::Missing
        );
        // A directory or a file that is not executable does not count.
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        assert_eq!(availability(&cmd("plain"), &path), Availability::Missing);
        assert_eq!(key_variable("claude"), Some("ANTHROPIC_API_KEY"));
        assert_eq!(key_variable("scripted"), None);
    }
}
