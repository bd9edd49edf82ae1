//! The scripted agent driven by the agent-client-protocol crate's own v1
//! client, the way the host drives agents: the process spawned with a clean
//! environment, its pipes as the transport, typed handlers answering
//! `session/request_permission`, `fs/*` and `terminal/*`, and
//! `session/update` notifications collected from a handler.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use agent_client_protocol::schema::ProtocolVersion;
use agent_client_protocol::v1::schema::{
    CancelNotification, ClientCapabilities, ContentBlock, CreateTerminalRequest,
    CreateTerminalResponse, FileSystemCapabilities, Implementation, InitializeRequest,
    NewSessionRequest, PermissionOptionKind, PromptRequest, ReadTextFileRequest,
    ReadTextFileResponse, ReleaseTerminalRequest, ReleaseTerminalResponse,
    RequestPermissionOutcome, RequestPermissionRequest, RequestPermissionResponse,
    SelectedPermissionOutcome, SessionNotification, SessionUpdate, StopReason, TerminalExitStatus,
    TerminalOutputRequest, TerminalOutputResponse, TextContent, WaitForTerminalExitRequest,
    WaitForTerminalExitResponse, WriteTextFileRequest, WriteTextFileResponse,
};
use agent_client_protocol::v1::ConnectionTo;
use agent_client_protocol::{Agent, ByteStreams, Client, Error};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

const BIN: &str = env!("CARGO_BIN_EXE_ensemble-scripted-agent");

fn text_of(update: &SessionUpdate) -> Option<&str> {
    match update {
        SessionUpdate::AgentMessageChunk(chunk) => match &chunk.content {
            ContentBlock::Text(text) => Some(&text.text),
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test]
async fn sdk_client_runs_a_script() -> Result<(), Error> {
    // A clean environment, as the host gives agents in a VM: only what the
    // session asked for.
    let mut child = tokio::process::Command::new(BIN)
        .env_clear()
        .env("API_KEY", "secret-value")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(Error::into_internal_error)?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(Error::internal_error().data("no pipes"));
    };
    let transport = ByteStreams::new(stdin.compat_write(), stdout.compat());

    let updates: Arc<Mutex<Vec<SessionUpdate>>> = Arc::default();
    let written: Arc<Mutex<Vec<WriteTextFileRequest>>> = Arc::default();
    let terminals: Arc<Mutex<Vec<String>>> = Arc::default();

    Client
        .v1()
        .name("ensemble-host")
        .on_receive_notification(
            {
                let updates = updates.clone();
                async move |notification: SessionNotification, _cx| {
                    updates.lock().unwrap().push(notification.update);
                    Ok(())
                }
            },
            agent_client_protocol::on_receive_notification!(),
        )
        .on_receive_request(
            async move |request: RequestPermissionRequest, responder, cx: ConnectionTo<Agent>| {
                // A real host waits for a person here, so it answers from a
                // task: a handler holds the dispatch loop until it returns.
                cx.spawn(async move {
                    let allow = request
                        .options
                        .iter()
                        .find(|option| option.kind == PermissionOptionKind::AllowOnce)
                        .map(|option| option.option_id.clone());
                    let outcome = match allow {
                        Some(id) => RequestPermissionOutcome::Selected(
                            SelectedPermissionOutcome::new(id),
                        ),
                        None => RequestPermissionOutcome::Cancelled,
                    };
                    responder.respond(RequestPermissionResponse::new(outcome))
                })
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            {
                let written = written.clone();
                async move |request: WriteTextFileRequest, responder, _cx| {
                    written.lock().unwrap().push(request);
                    responder.respond(WriteTextFileResponse::new())
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |request: ReadTextFileRequest, responder, _cx| {
                responder.respond(ReadTextFileResponse::new(format!(
                    "contents of {}",
                    request.path.display()
                )))
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            {
                let terminals = terminals.clone();
                async move |request: CreateTerminalRequest, responder, _cx| {
                    terminals.lock().unwrap().push(request.args.join(" "));
                    responder.respond(CreateTerminalResponse::new("term-1"))
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |_request: WaitForTerminalExitRequest, responder, cx: ConnectionTo<Agent>| {
                // Waiting for a process takes time: never inside the handler.
                cx.spawn(async move {
                    responder.respond(WaitForTerminalExitResponse::new(
                        TerminalExitStatus::new().exit_code(0),
                    ))
                })
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |_request: TerminalOutputRequest, responder, _cx| {
                responder.respond(TerminalOutputResponse::new("hi\n", false))
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |_request: ReleaseTerminalRequest, responder, _cx| {
                responder.respond(ReleaseTerminalResponse::new())
            },
            agent_client_protocol::on_receive_request!(),
        )
        .connect_with(transport, async |cx: ConnectionTo<Agent>| {
            let init = cx
                .send_request(
                    InitializeRequest::new(ProtocolVersion::V1)
                        .client_capabilities(
                            ClientCapabilities::new()
                                .fs(FileSystemCapabilities::new()
                                    .read_text_file(true)
                                    .write_text_file(true))
                                .terminal(true),
                        )
                        .client_info(Implementation::new("ensemble-host", "0")),
                )
                .block_task()
                .await?;
            assert_eq!(init.protocol_version, ProtocolVersion::V1);
            assert_eq!(init.agent_info.map(|info| info.name).as_deref(), Some("scripted"));

            let session = cx
                .send_request(NewSessionRequest::new("/work/space"))
                .block_task()
                .await?;
            assert_eq!(&*session.session_id.0, "scripted-1");

            let script = "say hello there\nwrite notes.txt hi\nrun echo hi\nread a.txt\ngarbage\nenv API_KEY";
            let prompt = PromptRequest::new(
                session.session_id.clone(),
                vec![ContentBlock::Text(TextContent::new(script))],
            );
            // The foreground runs outside the dispatch loop, so it may block
            // on the answer while handlers serve the agent's requests.
            let done = cx.send_request(prompt).block_task().await?;
            assert_eq!(done.stop_reason, StopReason::EndTurn);

            let texts: Vec<String> = updates
                .lock()
                .unwrap()
                .iter()
                .filter_map(text_of)
                .map(str::to_owned)
                .collect();
            assert_eq!(
                texts,
                [
                    "hello ",
                    "there",
                    "wrote notes.txt",
                    "exit 0",
                    "contents of /work/space/a.txt",
                    "still ",
                    "here",
                    "env API_KEY is set (12 chars)",
                ]
            );
            let written = written.lock().unwrap().clone();
            assert_eq!(written.len(), 1);
            assert_eq!(written[0].path.to_str(), Some("/work/space/notes.txt"));
            assert_eq!(written[0].content, "hi");
            assert_eq!(*terminals.lock().unwrap(), ["-c echo hi"]);

            // Cancel a waiting turn from another task.
            updates.lock().unwrap().clear();
            let waiting = cx.send_request(PromptRequest::new(
                session.session_id.clone(),
                vec![ContentBlock::Text(TextContent::new("wait"))],
            ));
            cx.send_notification(CancelNotification::new(session.session_id.clone()))?;
            let cancelled = waiting.block_task().await?;
            assert_eq!(cancelled.stop_reason, StopReason::Cancelled);
            Ok(())
        })
        .await?;

    // connect_with returned and dropped the transport: the agent sees EOF.
    let status = child.wait().await.map_err(Error::into_internal_error)?;
    assert_eq!(status.code(), Some(0));
    Ok(())
}
