//! The agent registry: which command starts an agent of a given type. Built-in
//! entries for the common ACP agents, overridable and extendable by a TOML
//! file:
//!
//! ```toml
//! [agents.claude]
//! command = "npx"
//! args = ["-y", "@agentclientprotocol/claude-agent-acp"]
//! ```
//!
//! An argument may contain `{stateDir}`: it becomes a directory of the agent
//! type's own inside the VM's data directory (not its workspace), for what the
//! agent keeps between runs, such as the scripted agent's journals. In a
//! sandbox the agent sees it at `/var/lib/ensemble/agents/<type>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::vm::VmError;

/// Name of the scripted agent's binary, looked up beside the running host.
const SCRIPTED_BINARY: &str = "ensemble-scripted-agent";

/// Replaced in an agent's arguments by its state directory in the VM.
pub const STATE_DIR: &str = "{stateDir}";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentCommand {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AgentRegistry {
    agents: BTreeMap<String, AgentCommand>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentRegistryError {
    #[error("cannot read the agent registry {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent registry {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    agents: BTreeMap<String, AgentCommand>,
}

fn npx(package: &[&str]) -> AgentCommand {
    let mut args = vec!["-y".to_owned()];
    args.extend(package.iter().map(|s| (*s).to_owned()));
    AgentCommand {
        command: "npx".to_owned(),
        args,
    }
}

impl AgentRegistry {
    /// The built-in agents, then the entries of `file` (if given) on top.
    pub fn load(file: Option<&Path>) -> Result<AgentRegistry, AgentRegistryError> {
        let mut agents = BTreeMap::new();
        agents.insert(
            "claude".to_owned(),
            npx(&["@agentclientprotocol/claude-agent-acp"]),
        );
        agents.insert("gemini".to_owned(), npx(&["@google/gemini-cli", "--acp"]));
        agents.insert("codex".to_owned(), npx(&["@agentclientprotocol/codex-acp"]));
        agents.insert("pi".to_owned(), npx(&["pi-acp"]));
        agents.insert(
            "opencode".to_owned(),
            AgentCommand {
                command: "opencode".to_owned(),
                args: vec!["acp".to_owned()],
            },
        );
        agents.insert(
            "scripted".to_owned(),
            AgentCommand {
                command: scripted_agent_path(),
                args: vec!["--journal-dir".to_owned(), STATE_DIR.to_owned()],
            },
        );
        if let Some(path) = file {
            let text =
                std::fs::read_to_string(path).map_err(|source| AgentRegistryError::Read {
                    path: path.to_owned(),
                    source,
                })?;
            let parsed: File = toml::from_str(&text).map_err(|e| AgentRegistryError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            agents.extend(parsed.agents);
        }
        Ok(AgentRegistry { agents })
    }

    pub fn get(&self, agent_type: &str) -> Option<&AgentCommand> {
        self.agents.get(agent_type)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.agents.keys().map(String::as_str)
    }
}

impl AgentCommand {
    /// The command as run in a VM: [`STATE_DIR`] in an argument becomes
    /// `state(agent_type)`, the agent type's state directory as the agent
    /// sees it (created on the host by `state`).
    pub fn for_vm(
        &self,
        agent_type: &str,
        state: impl FnOnce(&str) -> Result<PathBuf, VmError>,
    ) -> Result<AgentCommand, VmError> {
        if !self.args.iter().any(|a| a.contains(STATE_DIR)) {
            return Ok(self.clone());
        }
        let plain = !agent_type.is_empty()
            && agent_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !plain {
            return Err(VmError::InvalidArgs(format!(
                "agent type {agent_type:?} uses {STATE_DIR}, so its name may hold only letters, digits, - and _"
            )));
        }
        let dir = state(agent_type)?.display().to_string();
        Ok(AgentCommand {
            command: self.command.clone(),
            args: self
                .args
                .iter()
                .map(|a| a.replace(STATE_DIR, &dir))
                .collect(),
        })
    }
}

/// The scripted agent ships beside the `ensemble` binary; fall back to PATH.
fn scripted_agent_path() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(SCRIPTED_BINARY)))
        .filter(|p| p.is_file())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| SCRIPTED_BINARY.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let registry = AgentRegistry::load(None).unwrap();
        for name in ["claude", "gemini", "codex", "pi", "opencode", "scripted"] {
            assert!(registry.get(name).is_some(), "{name} missing");
        }
        let file = dir.path().join("agents.toml");
        std::fs::write(
            &file,
            "[agents.mine]\ncommand = \"my-agent\"\nargs = [\"--acp\"]\n[agents.pi]\ncommand = \"pi-local\"\n",
        )
        .unwrap();
        let registry = AgentRegistry::load(Some(&file)).unwrap();
        assert_eq!(registry.get("mine").unwrap().args, ["--acp"]);
        assert_eq!(registry.get("pi").unwrap().command, "pi-local");
        let state = |name: &str| Ok(Path::new("/state").join(name));
        let scripted = registry.get("scripted").unwrap().for_vm("scripted", state);
        assert_eq!(
            scripted.unwrap().args,
            ["--journal-dir".to_owned(), "/state/scripted".to_owned()]
        );
        let mine = registry.get("mine").unwrap();
        assert_eq!(mine.for_vm("mine", state).unwrap(), *mine);
        let odd = AgentCommand {
            command: "x".to_owned(),
            args: vec![format!("--state={STATE_DIR}")],
        };
        assert!(odd.for_vm("../up", state).is_err());
        std::fs::write(&file, "[agents.bad]\ncommand = 3\n").unwrap();
        let err = AgentRegistry::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("agents.toml"), "{err}");
    }
}
