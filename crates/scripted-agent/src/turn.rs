//! One prompt turn: runs a script's commands in order, sending the ACP
//! traffic each one produces, and stops as soon as the turn is cancelled.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use agent_client_protocol::v1::schema::{
    ContentBlock, ContentChunk, CreateTerminalRequest, Diff, PermissionOption,
    PermissionOptionKind, Plan, PlanEntry, PlanEntryPriority, PlanEntryStatus, ReadTextFileRequest,
    ReleaseTerminalRequest, RequestPermissionOutcome, RequestPermissionRequest, SessionId,
    SessionNotification, SessionUpdate, StopReason, Terminal, TerminalExitStatus, TerminalId,
    TerminalOutputRequest, TextContent, ToolCall, ToolCallContent, ToolCallId, ToolCallLocation,
    ToolCallStatus, ToolCallUpdate, ToolCallUpdateFields, ToolKind, WaitForTerminalExitRequest,
    WriteTextFileRequest,
};
use agent_client_protocol::v1::ConnectionTo;
use agent_client_protocol::{Client, Error, JsonRpcRequest};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::agent::State;
use crate::journal::{Journal, Record};
use crate::script::{self, Command};
use crate::stdio::GARBAGE_LINES;
use crate::{Exit, CRASH_EXIT_CODE};

/// The option ids of the permission request `write` makes.
pub const ALLOW_OPTION: &str = "allow";
pub const REJECT_OPTION: &str = "reject";

/// `stream` waits for its chunks to be written every this many chunks: the
/// SDK's outgoing queue is unbounded, so without the wait a long stream
/// would pile up in memory, and a chunk's timestamp (taken when it is
/// queued) would run ahead of its write by the whole queue. With it, a
/// timestamp is at most this many chunks early.
const STREAM_FLUSH_EVERY: u64 = 16;

pub(crate) struct Turn {
    pub(crate) cx: ConnectionTo<Client>,
    pub(crate) state: Arc<State>,
    pub(crate) session_id: SessionId,
    /// The session's working directory, which relative paths are resolved against.
    pub(crate) cwd: PathBuf,
    pub(crate) cancel: CancellationToken,
    /// Which turn of the session this is, from 1 (counting turns before a
    /// `session/load`).
    pub(crate) number: u64,
    /// Where every update is also recorded, if the session is journaled.
    pub(crate) journal: Option<Arc<Journal>>,
}

/// Whether the turn goes on after a command.
enum Flow {
    Continue,
    Cancelled,
}

/// How a request to the client ended.
enum Reply<T> {
    Answered(Result<T, Error>),
    /// The turn was cancelled first. Holds the pending answer when the request
    /// was sent, for commands that must clean up after it (a terminal created
    /// after all); `None` when cancellation came before it could be sent.
    Cancelled(Option<oneshot::Receiver<Result<T, Error>>>),
}

impl Turn {
    pub(crate) async fn run(&self, script: &str) -> Result<StopReason, Error> {
        for command in script::parse(script) {
            if self.cancel.is_cancelled() {
                return Ok(StopReason::Cancelled);
            }
            tracing::debug!(session_id = %self.session_id, ?command, "command");
            if let Flow::Cancelled = self.execute(command).await? {
                return Ok(StopReason::Cancelled);
            }
        }
        Ok(StopReason::EndTurn)
    }

    async fn execute(&self, command: Command<'_>) -> Result<Flow, Error> {
        match command {
            Command::Say(text) => self.say(text)?,
            Command::Think(text) => self.update(SessionUpdate::AgentThoughtChunk(
                ContentChunk::new(text_block(text)),
            ))?,
            Command::Plan(steps) => self.plan(&steps)?,
            Command::Run(line) => return self.run_command(line).await,
            Command::Write { path, content } => return self.write(path, content).await,
            Command::Read(path) => return self.read(path).await,
            Command::Wait => {
                self.cancel.cancelled().await;
                return Ok(Flow::Cancelled);
            }
            Command::Sleep(duration) => {
                tokio::select! {
                    () = tokio::time::sleep(duration) => {}
                    () = self.cancel.cancelled() => return Ok(Flow::Cancelled),
                }
            }
            Command::Env(name) => self.message(env_report(name))?,
            Command::Turn => self.message(format!("turn {}", self.number))?,
            Command::Crash => {
                self.message("crashing")?;
                // The chunk must be on the pipe before the process goes.
                self.state.output.flush(&self.cx).await?;
                self.state.exit(Exit::Crashed(CRASH_EXIT_CODE)).await;
                // serve returns and the process exits; this turn never ends.
                std::future::pending::<()>().await;
            }
            Command::Garbage => {
                // Everything sent so far goes out first, so the garbage sits
                // between whole messages, in the order the script wrote it.
                self.state.output.flush(&self.cx).await?;
                self.state
                    .output
                    .write_raw_lines(&GARBAGE_LINES)
                    .await
                    .map_err(Error::into_internal_error)?;
                self.say("still here")?;
            }
            Command::Stream(count) => return self.stream(count).await,
            Command::Unknown(line) => self.message(format!("unknown command: {line}"))?,
        }
        Ok(Flow::Continue)
    }

    /// `count` chunks, each with its number and the time it was sent, as
    /// fast as standard output takes them; cancellable between chunks.
    async fn stream(&self, count: u64) -> Result<Flow, Error> {
        for index in 1..=count {
            if self.cancel.is_cancelled() {
                return Ok(Flow::Cancelled);
            }
            self.message(script::stream_chunk(index, unix_micros()))?;
            if index % STREAM_FLUSH_EVERY == 0 {
                self.state.output.flush(&self.cx).await?;
            }
        }
        Ok(Flow::Continue)
    }

    fn say(&self, text: &str) -> Result<(), Error> {
        for chunk in script::say_chunks(text) {
            self.message(chunk)?;
        }
        Ok(())
    }

    /// The whole plan, all pending; then each step in turn marked in progress
    /// and completed, the whole plan resent each time (ACP plans are replaced,
    /// not patched).
    fn plan(&self, steps: &[&str]) -> Result<(), Error> {
        let mut entries: Vec<PlanEntry> = steps
            .iter()
            .map(|step| PlanEntry::new(*step, PlanEntryPriority::Medium, PlanEntryStatus::Pending))
            .collect();
        self.update(SessionUpdate::Plan(Plan::new(entries.clone())))?;
        for i in 0..entries.len() {
            for status in [PlanEntryStatus::InProgress, PlanEntryStatus::Completed] {
                entries[i].status = status;
                self.update(SessionUpdate::Plan(Plan::new(entries.clone())))?;
            }
        }
        Ok(())
    }

    async fn run_command(&self, line: &str) -> Result<Flow, Error> {
        let id = self.state.next_tool_call_id(&self.session_id);
        self.update(SessionUpdate::ToolCall(
            ToolCall::new(id.clone(), format!("run {line}"))
                .kind(ToolKind::Execute)
                .status(ToolCallStatus::Pending),
        ))?;
        if !self.state.client_capabilities().terminal {
            return self.fail_tool_call(&id, "run failed: the client does not offer terminals");
        }

        let create = CreateTerminalRequest::new(self.session_id.clone(), "sh")
            .args(vec!["-c".to_owned(), line.to_owned()])
            .cwd(self.cwd.clone());
        let terminal_id = match self.request(create).await? {
            Reply::Answered(Ok(created)) => created.terminal_id,
            Reply::Answered(Err(error)) => {
                return self.fail_tool_call(&id, format!("run failed: {}", describe(&error)));
            }
            Reply::Cancelled(pending) => {
                // The client may still create it: release it once it exists.
                if let Some(pending) = pending {
                    let cx = self.cx.clone();
                    let session_id = self.session_id.clone();
                    self.cx.spawn(async move {
                        if let Ok(Ok(created)) = pending.await {
                            cx.send_request(ReleaseTerminalRequest::new(
                                session_id,
                                created.terminal_id,
                            ))
                            .detach();
                        }
                        Ok(())
                    })?;
                }
                return Ok(Flow::Cancelled);
            }
        };

        self.update_tool_call(
            &id,
            ToolCallUpdateFields::new()
                .status(ToolCallStatus::InProgress)
                .content(vec![ToolCallContent::Terminal(Terminal::new(
                    terminal_id.clone(),
                ))]),
        )?;

        let wait = WaitForTerminalExitRequest::new(self.session_id.clone(), terminal_id.clone());
        let exit_status = match self.request(wait).await? {
            Reply::Answered(Ok(exited)) => exited.exit_status,
            Reply::Answered(Err(error)) => {
                return self.terminal_failed(&id, &terminal_id, &error).await
            }
            Reply::Cancelled(_) => return self.abandon_terminal(&terminal_id),
        };
        let output = TerminalOutputRequest::new(self.session_id.clone(), terminal_id.clone());
        let output = match self.request(output).await? {
            Reply::Answered(Ok(output)) => output.output,
            Reply::Answered(Err(error)) => {
                return self.terminal_failed(&id, &terminal_id, &error).await
            }
            Reply::Cancelled(_) => return self.abandon_terminal(&terminal_id),
        };
        let release = ReleaseTerminalRequest::new(self.session_id.clone(), terminal_id);
        match self.request(release).await? {
            Reply::Answered(Ok(_)) => {}
            // The command has exited and its output is in hand; a failed
            // release changes nothing the user would see.
            Reply::Answered(Err(error)) => {
                tracing::debug!(code = ?error.code, "terminal/release failed");
            }
            Reply::Cancelled(_) => return Ok(Flow::Cancelled),
        }

        let status = if exit_status.exit_code == Some(0) {
            ToolCallStatus::Completed
        } else {
            ToolCallStatus::Failed
        };
        self.update_tool_call(
            &id,
            ToolCallUpdateFields::new()
                .status(status)
                .content(vec![ToolCallContent::from(output)]),
        )?;
        self.message(exit_message(&exit_status))?;
        Ok(Flow::Continue)
    }

    /// A terminal request failed after the terminal was created: release it
    /// (waiting for the answer, whatever it is) and fail the tool call.
    async fn terminal_failed(
        &self,
        id: &ToolCallId,
        terminal_id: &TerminalId,
        error: &Error,
    ) -> Result<Flow, Error> {
        let release = ReleaseTerminalRequest::new(self.session_id.clone(), terminal_id.clone());
        if let Reply::Cancelled(_) = self.request(release).await? {
            return Ok(Flow::Cancelled);
        }
        self.fail_tool_call(id, format!("run failed: {}", describe(error)))
    }

    /// Cancelled while a terminal exists: release it (which kills the command)
    /// without waiting, so the turn ends at once.
    fn abandon_terminal(&self, terminal_id: &TerminalId) -> Result<Flow, Error> {
        self.cx
            .send_request(ReleaseTerminalRequest::new(
                self.session_id.clone(),
                terminal_id.clone(),
            ))
            .detach();
        Ok(Flow::Cancelled)
    }

    async fn write(&self, path: &str, content: &str) -> Result<Flow, Error> {
        let id = self.state.next_tool_call_id(&self.session_id);
        let absolute = self.resolve(path);
        let tool_call = ToolCall::new(id.clone(), format!("write {path}"))
            .kind(ToolKind::Edit)
            .status(ToolCallStatus::Pending)
            .content(vec![ToolCallContent::Diff(Diff::new(
                absolute.clone(),
                content,
            ))])
            .locations(vec![ToolCallLocation::new(absolute.clone())]);
        self.update(SessionUpdate::ToolCall(tool_call.clone()))?;
        if !self.state.client_capabilities().fs.write_text_file {
            return self.fail_tool_call(&id, "write failed: the client cannot write files");
        }

        let options = vec![
            PermissionOption::new(ALLOW_OPTION, "Allow", PermissionOptionKind::AllowOnce),
            PermissionOption::new(REJECT_OPTION, "Reject", PermissionOptionKind::RejectOnce),
        ];
        let ask = RequestPermissionRequest::new(
            self.session_id.clone(),
            ToolCallUpdate::from(tool_call),
            options,
        );
        let outcome = match self.request(ask).await? {
            Reply::Answered(Ok(answer)) => answer.outcome,
            Reply::Answered(Err(error)) => {
                return self.fail_tool_call(
                    &id,
                    format!("permission request failed: {}", describe(&error)),
                );
            }
            Reply::Cancelled(_) => return Ok(Flow::Cancelled),
        };
        match outcome {
            RequestPermissionOutcome::Cancelled => return Ok(Flow::Cancelled),
            RequestPermissionOutcome::Selected(selected)
                if &*selected.option_id.0 == ALLOW_OPTION => {}
            // `reject`, or an option we never offered: no permission either way.
            _ => return self.fail_tool_call(&id, "permission denied"),
        }

        let write = WriteTextFileRequest::new(self.session_id.clone(), absolute, content);
        match self.request(write).await? {
            Reply::Answered(Ok(_)) => {
                self.update_tool_call(
                    &id,
                    ToolCallUpdateFields::new().status(ToolCallStatus::Completed),
                )?;
                self.message(format!("wrote {path}"))?;
                Ok(Flow::Continue)
            }
            Reply::Answered(Err(error)) => {
                self.fail_tool_call(&id, format!("write failed: {}", describe(&error)))
            }
            Reply::Cancelled(_) => Ok(Flow::Cancelled),
        }
    }

    async fn read(&self, path: &str) -> Result<Flow, Error> {
        if !self.state.client_capabilities().fs.read_text_file {
            self.message("read failed: the client cannot read files")?;
            return Ok(Flow::Continue);
        }
        let read = ReadTextFileRequest::new(self.session_id.clone(), self.resolve(path));
        match self.request(read).await? {
            Reply::Answered(Ok(file)) => self.message(file.content)?,
            Reply::Answered(Err(error)) => {
                self.message(format!("read failed: {}", describe(&error)))?;
            }
            Reply::Cancelled(_) => return Ok(Flow::Cancelled),
        }
        Ok(Flow::Continue)
    }

    /// Send `request` to the client and wait for its answer or for the turn's
    /// cancellation, whichever comes first. Nothing is sent once the turn is
    /// cancelled. A request overtaken by cancellation is abandoned, not
    /// cancelled on the wire: the client still answers it (ACP requires a
    /// `cancelled` outcome for pending permission requests) and the answer is
    /// dropped, so the agent never sends `$/cancel_request`.
    async fn request<R>(&self, request: R) -> Result<Reply<R::Response>, Error>
    where
        R: JsonRpcRequest,
        R::Response: Send + 'static,
    {
        if self.cancel.is_cancelled() {
            return Ok(Reply::Cancelled(None));
        }
        let (answer_tx, mut answer_rx) = oneshot::channel();
        self.cx
            .prepare_request(request)
            .on_receiving_result(move |answer| {
                // The turn may have moved on; then nobody wants the answer.
                drop(answer_tx.send(answer));
                std::future::ready(Ok(()))
            })?;
        tokio::select! {
            // Cancellation first, so that a turn cancelled while an answer was
            // also arriving stops here rather than acting on the answer.
            biased;
            () = self.cancel.cancelled() => Ok(Reply::Cancelled(Some(answer_rx))),
            answer = &mut answer_rx => match answer {
                Ok(answer) => Ok(Reply::Answered(answer)),
                Err(_) => Err(Error::internal_error().data("the connection closed before the client answered")),
            },
        }
    }

    fn resolve(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.cwd.join(path)
        }
    }

    fn fail_tool_call(&self, id: &ToolCallId, message: impl Into<String>) -> Result<Flow, Error> {
        self.update_tool_call(
            id,
            ToolCallUpdateFields::new().status(ToolCallStatus::Failed),
        )?;
        self.message(message)?;
        Ok(Flow::Continue)
    }

    fn update_tool_call(&self, id: &ToolCallId, fields: ToolCallUpdateFields) -> Result<(), Error> {
        self.update(SessionUpdate::ToolCallUpdate(ToolCallUpdate::new(
            id.clone(),
            fields,
        )))
    }

    fn message(&self, text: impl Into<String>) -> Result<(), Error> {
        self.update(SessionUpdate::AgentMessageChunk(ContentChunk::new(
            text_block(text),
        )))
    }

    fn update(&self, update: SessionUpdate) -> Result<(), Error> {
        if let Some(journal) = &self.journal {
            journal.append(&Record::Update {
                update: Box::new(update.clone()),
            })?;
        }
        self.cx
            .send_notification(SessionNotification::new(self.session_id.clone(), update))
    }
}

fn text_block(text: impl Into<String>) -> ContentBlock {
    ContentBlock::Text(TextContent::new(text))
}

/// Microseconds since the Unix epoch; 0 on a clock set before it.
fn unix_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// `env <NAME>`'s answer. The value is only measured, never copied anywhere.
fn env_report(name: &str) -> String {
    // Names the platform cannot hold are simply not set.
    let value = if name.contains(['=', '\0']) {
        None
    } else {
        std::env::var_os(name)
    };
    match value {
        Some(value) => {
            let chars = value.to_string_lossy().chars().count();
            format!("env {name} is set ({chars} chars)")
        }
        None => format!("env {name} is not set"),
    }
}

fn exit_message(status: &TerminalExitStatus) -> String {
    match (status.exit_code, &status.signal) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("exit signal {signal}"),
        (None, None) => "exit unknown".to_owned(),
    }
}

/// A client error as one line: its message, then its data if any.
fn describe(error: &Error) -> String {
    match &error.data {
        None | Some(serde_json::Value::Null) => error.message.clone(),
        Some(serde_json::Value::String(data)) => format!("{}: {data}", error.message),
        Some(data) => format!("{}: {data}", error.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_messages() {
        assert_eq!(
            exit_message(&TerminalExitStatus::new().exit_code(0)),
            "exit 0"
        );
        assert_eq!(
            exit_message(&TerminalExitStatus::new().exit_code(7)),
            "exit 7"
        );
        assert_eq!(
            exit_message(&TerminalExitStatus::new().signal("SIGKILL".to_owned())),
            "exit signal SIGKILL"
        );
        assert_eq!(exit_message(&TerminalExitStatus::new()), "exit unknown");
    }

    #[test]
    fn errors_are_described_with_their_data() {
        assert_eq!(describe(&Error::internal_error()), "Internal error");
        assert_eq!(
            describe(&Error::invalid_params().data("no such file")),
            "Invalid params: no such file"
        );
        assert_eq!(
            describe(
                &Error::new(-32002, "Resource not found").data(serde_json::json!({"uri": "x"}))
            ),
            r#"Resource not found: {"uri":"x"}"#
        );
    }

    #[test]
    fn env_report_with_unrepresentable_names() {
        assert_eq!(env_report("A=B"), "env A=B is not set");
    }
}
