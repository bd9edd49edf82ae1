//! The ACP agent side: the handlers for what a client sends (`initialize`,
//! `session/new`, `session/load`, `session/set_mode`, `session/prompt`,
//! `session/cancel`) and the state they share: the client's capabilities,
//! the sessions and, if kept, their journals.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use agent_client_protocol::schema::ProtocolVersion;
use agent_client_protocol::v1::schema::{
    AgentCapabilities, CancelNotification, ClientCapabilities, ContentBlock, ContentChunk,
    Implementation, InitializeRequest, InitializeResponse, LoadSessionRequest, LoadSessionResponse,
    NewSessionRequest, NewSessionResponse, PromptRequest, PromptResponse, SessionId, SessionMode,
    SessionModeId, SessionModeState, SessionNotification, SessionUpdate, SetSessionModeRequest,
    SetSessionModeResponse, TextContent, ToolCallId,
};
use agent_client_protocol::v1::{ConnectionTo, Responder};
use agent_client_protocol::{Agent, Client, ConnectTo, Error};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::journal::{Journal, Journals, Record, SESSION_PREFIX};
use crate::stdio::Output;
use crate::turn::Turn;
use crate::Exit;

/// `agentInfo.name` in the `initialize` response.
pub const AGENT_NAME: &str = "scripted";

/// The session modes, `(id, display name)`; the first is where a session starts.
/// A mode is only recorded and reported: it changes no command.
pub const MODES: [(&str, &str); 2] = [("default", "Default"), ("plan", "Plan")];

/// What the handlers share.
pub(crate) struct State {
    pub(crate) output: Arc<Output>,
    /// Where `crash` asks [`crate::serve`] to stop.
    exit_tx: mpsc::Sender<Exit>,
    /// From `initialize`; the default (nothing supported) until then.
    client_capabilities: Mutex<ClientCapabilities>,
    /// Only short, synchronous critical sections: never held across `.await`.
    sessions: Mutex<HashMap<SessionId, Session>>,
    next_session: AtomicU64,
    /// With `--journal-dir`: sessions are journaled and can be loaded.
    journals: Option<Journals>,
}

struct Session {
    /// Where the session's transcript is appended, if journals are kept.
    journal: Option<Arc<Journal>>,
    cwd: PathBuf,
    mode: SessionModeId,
    /// The number of the last tool call this session reported.
    tool_calls: u64,
    /// The running turn, if any: its number and its cancellation.
    turn: Option<(u64, CancellationToken)>,
    turns: u64,
}

impl State {
    pub(crate) fn new(
        output: Arc<Output>,
        exit_tx: mpsc::Sender<Exit>,
        journals: Option<Journals>,
    ) -> Arc<Self> {
        Arc::new(Self {
            output,
            exit_tx,
            client_capabilities: Mutex::new(ClientCapabilities::default()),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            journals,
        })
    }

    pub(crate) fn client_capabilities(&self) -> ClientCapabilities {
        self.client_capabilities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Ask [`crate::serve`] to return `exit`.
    pub(crate) async fn exit(&self, exit: Exit) {
        // Fails only when serve has already returned, which is the goal anyway.
        let _ = self.exit_tx.send(exit).await;
    }

    /// The id of the session's next tool call: `call-1`, `call-2`, ...
    pub(crate) fn next_tool_call_id(&self, session_id: &SessionId) -> ToolCallId {
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let number = match sessions.get_mut(session_id) {
            Some(session) => {
                session.tool_calls += 1;
                session.tool_calls
            }
            // Sessions are never removed, so a running turn always finds its own.
            None => 0,
        };
        ToolCallId::new(format!("call-{number}"))
    }

    fn initialize(&self, request: InitializeRequest) -> InitializeResponse {
        *self
            .client_capabilities
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = request.client_capabilities;
        InitializeResponse::new(ProtocolVersion::V1)
            .agent_capabilities(AgentCapabilities::new().load_session(self.journals.is_some()))
            .agent_info(Implementation::new(AGENT_NAME, env!("CARGO_PKG_VERSION")))
    }

    fn new_session(&self, request: NewSessionRequest) -> Result<NewSessionResponse, Error> {
        // Relative paths are resolved against the cwd, so it must be anchored.
        if !request.cwd.is_absolute() {
            return Err(Error::invalid_params().data("cwd must be an absolute path"));
        }
        // MCP servers are accepted and ignored: no command uses tools.
        let next = self.next_session.load(Ordering::Relaxed);
        let (number, journal) = match &self.journals {
            Some(journals) => {
                let (number, journal) = journals
                    .create(next)
                    .map_err(|e| Error::internal_error().data(format!("journal: {e}")))?;
                (number, Some(Arc::new(journal)))
            }
            None => (next, None),
        };
        self.next_session.store(number + 1, Ordering::Relaxed);
        let session_id = SessionId::new(format!("{SESSION_PREFIX}{number}"));
        let mode = SessionModeId::new(MODES[0].0);
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                session_id.clone(),
                Session {
                    journal,
                    cwd: request.cwd,
                    mode: mode.clone(),
                    tool_calls: 0,
                    turn: None,
                    turns: 0,
                },
            );
        Ok(NewSessionResponse::new(session_id).modes(mode_state(mode)))
    }

    /// `session/load`: reads the session's journal, restores its state (turns,
    /// tool calls, mode), replays the transcript as `session/update`
    /// notifications (each prompt as a `user_message_chunk`), then answers.
    fn load_session(
        &self,
        request: LoadSessionRequest,
        cx: &ConnectionTo<Client>,
    ) -> Result<LoadSessionResponse, Error> {
        let Some(journals) = &self.journals else {
            return Err(Error::method_not_found()
                .data("this agent keeps no journals (start it with --journal-dir)"));
        };
        if !request.cwd.is_absolute() {
            return Err(Error::invalid_params().data("cwd must be an absolute path"));
        }
        let running = self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&request.session_id)
            .is_some_and(|s| s.turn.is_some());
        if running {
            return Err(Error::invalid_request().data("a prompt turn is running in this session"));
        }
        let (records, journal) = journals.load(&request.session_id)?;
        let mut session = Session {
            journal: Some(Arc::new(journal)),
            cwd: request.cwd,
            mode: SessionModeId::new(MODES[0].0),
            tool_calls: 0,
            turn: None,
            turns: 0,
        };
        let mut replay = Vec::with_capacity(records.len());
        for record in records {
            match record {
                Record::Prompt { text } => {
                    session.turns += 1;
                    replay.push(SessionUpdate::UserMessageChunk(ContentChunk::new(
                        ContentBlock::Text(TextContent::new(text)),
                    )));
                }
                Record::Update { update } => {
                    if let SessionUpdate::ToolCall(_) = *update {
                        session.tool_calls += 1;
                    }
                    replay.push(*update);
                }
                Record::Mode { mode_id } => session.mode = mode_id,
            }
        }
        let mode = session.mode.clone();
        // Numbers of later sessions stay clear of this one's.
        if let Some(number) = request
            .session_id
            .0
            .strip_prefix(SESSION_PREFIX)
            .and_then(|n| n.parse::<u64>().ok())
        {
            self.next_session.fetch_max(number + 1, Ordering::Relaxed);
        }
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(request.session_id.clone(), session);
        // Queued before the answer, so the client has the whole transcript
        // when session/load returns, as ACP requires.
        for update in replay {
            cx.send_notification(SessionNotification::new(request.session_id.clone(), update))?;
        }
        Ok(LoadSessionResponse::new().modes(mode_state(mode)))
    }

    fn set_mode(&self, request: SetSessionModeRequest) -> Result<SetSessionModeResponse, Error> {
        if !MODES.iter().any(|(id, _)| **id == *request.mode_id.0) {
            return Err(Error::invalid_params().data(format!(
                "unknown mode {:?}; modes are \"default\" and \"plan\"",
                request.mode_id.0
            )));
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(session) = sessions.get_mut(&request.session_id) else {
            return Err(session_not_found(request.session_id));
        };
        if let Some(journal) = &session.journal {
            journal.append(&Record::Mode {
                mode_id: request.mode_id.clone(),
            })?;
        }
        session.mode = request.mode_id;
        Ok(SetSessionModeResponse::new())
    }

    /// Start a turn in the background and answer the prompt when it ends.
    fn prompt(
        self: &Arc<Self>,
        request: PromptRequest,
        responder: Responder<PromptResponse>,
        cx: &ConnectionTo<Client>,
    ) -> Result<(), Error> {
        // Text blocks are joined with newlines so that each block starts a
        // line of its own; other content is ignored.
        let script = request
            .prompt
            .iter()
            .filter_map(|block| match block {
                ContentBlock::Text(text) => Some(text.text.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let started = {
            let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            match sessions.get_mut(&request.session_id) {
                None => Err(session_not_found(request.session_id.clone())),
                Some(session) if session.turn.is_some() => Err(Error::invalid_request()
                    .data("a prompt turn is already running in this session")),
                Some(session) => {
                    let journaled = match &session.journal {
                        Some(journal) => journal
                            .append(&Record::Prompt {
                                text: script.clone(),
                            })
                            .map(|()| Some(journal.clone())),
                        None => Ok(None),
                    };
                    journaled.map(|journal| {
                        session.turns += 1;
                        let cancel = CancellationToken::new();
                        session.turn = Some((session.turns, cancel.clone()));
                        (session.turns, session.cwd.clone(), cancel, journal)
                    })
                }
            }
        };
        let (turn_number, cwd, cancel, journal) = match started {
            Ok(started) => started,
            Err(error) => return responder.respond_with_error(error),
        };

        let session_id = request.session_id;
        let turn = Turn {
            cx: cx.clone(),
            state: self.clone(),
            session_id: session_id.clone(),
            cwd,
            cancel,
            number: turn_number,
            journal,
        };
        let state = self.clone();
        // The turn waits on client responses, so it must run outside the
        // dispatch loop that delivers them.
        cx.spawn(async move {
            let result = turn.run(&script).await;
            // Mark the turn over before answering, so a client that prompts
            // again as soon as it has the answer is not refused.
            state.end_turn(&session_id, turn_number);
            let answered = match result {
                Ok(stop_reason) => {
                    tracing::debug!(%session_id, ?stop_reason, "turn ended");
                    responder.respond(PromptResponse::new(stop_reason))
                }
                Err(error) => {
                    tracing::debug!(%session_id, code = ?error.code, "turn failed");
                    responder.respond_with_error(error)
                }
            };
            if let Err(error) = answered {
                // The connection is going away; nobody is left to tell.
                tracing::debug!(code = ?error.code, "could not answer session/prompt");
            }
            Ok(())
        })
    }

    fn end_turn(&self, session_id: &SessionId, turn_number: u64) {
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(session) = sessions.get_mut(session_id) {
            if session
                .turn
                .as_ref()
                .is_some_and(|(n, _)| *n == turn_number)
            {
                session.turn = None;
            }
        }
    }

    fn cancel(&self, notification: &CancelNotification) {
        let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        match sessions.get(&notification.session_id) {
            Some(Session {
                turn: Some((_, cancel)),
                ..
            }) => cancel.cancel(),
            // Nothing running, or no such session: a notification has no
            // answer, so there is nothing to report.
            _ => tracing::debug!(session_id = %notification.session_id, "nothing to cancel"),
        }
    }
}

fn mode_state(current: SessionModeId) -> SessionModeState {
    let modes = MODES
        .iter()
        .map(|(id, name)| SessionMode::new(*id, *name))
        .collect();
    SessionModeState::new(current, modes)
}

fn session_not_found(session_id: SessionId) -> Error {
    agent_client_protocol::v1::schema::Error::session_not_found(session_id).into()
}

/// Serve the agent side of ACP over `transport` until the client closes it.
pub(crate) async fn run(
    state: Arc<State>,
    transport: impl ConnectTo<Agent> + 'static,
) -> Result<(), Error> {
    Agent
        .v1()
        .name(AGENT_NAME)
        .on_receive_request(
            {
                let state = state.clone();
                async move |request: InitializeRequest, responder, _cx| {
                    responder.respond(state.initialize(request))
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            {
                let state = state.clone();
                async move |request: NewSessionRequest, responder, _cx| {
                    responder.respond_with_result(state.new_session(request))
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            {
                let state = state.clone();
                async move |request: LoadSessionRequest, responder, cx| {
                    responder.respond_with_result(state.load_session(request, &cx))
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            {
                let state = state.clone();
                async move |request: SetSessionModeRequest, responder, _cx| {
                    responder.respond_with_result(state.set_mode(request))
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            {
                let state = state.clone();
                async move |request: PromptRequest, responder, cx| {
                    state.prompt(request, responder, &cx)
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_notification(
            {
                let state = state.clone();
                async move |notification: CancelNotification, _cx| {
                    state.cancel(&notification);
                    Ok(())
                }
            },
            agent_client_protocol::on_receive_notification!(),
        )
        .connect_to(transport)
        .await
}
