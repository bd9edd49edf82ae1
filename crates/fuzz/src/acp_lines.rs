//! The JSON-RPC lines an agent writes on its stdout, through the ACP client
//! connection the host runs (crates/host/src/session.rs): the same crate,
//! the same byte transport, handlers for the same notification and request
//! types, and the host's own code where it turns a notification into an
//! event. The handlers here answer without a VM (no workspace, no process):
//! what is fuzzed is decoding and dispatch, not file access. The answers the
//! host reads to its own requests (`initialize`, `session/new`, a prompt)
//! are decoded into their types as well.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_client_protocol::v1::schema::{
    CreateTerminalRequest, CreateTerminalResponse, InitializeResponse, KillTerminalRequest,
    KillTerminalResponse, LoadSessionResponse, NewSessionResponse, PromptResponse,
    ReadTextFileRequest, ReadTextFileResponse, ReleaseTerminalRequest, ReleaseTerminalResponse,
    RequestPermissionOutcome, RequestPermissionRequest, RequestPermissionResponse,
    SessionNotification, TerminalOutputRequest, TerminalOutputResponse, WaitForTerminalExitRequest,
    WaitForTerminalExitResponse, WriteTextFileRequest, WriteTextFileResponse,
};
use agent_client_protocol::v1::{ConnectionTo, Responder};
use agent_client_protocol::{Agent, ByteStreams, Client, Error};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::gen::{mutate_bytes, mutate_value, value, Rng};
use crate::Report;

/// Notifications and requests the handlers were given: a harness whose
/// lines stopped reaching them (a changed crate, a handshake it now wants)
/// would fuzz nothing but the line splitter; the smoke test checks this.
static HANDLED: AtomicU64 = AtomicU64::new(0);

pub fn handled() -> u64 {
    HANDLED.load(Ordering::Relaxed)
}

/// Lines per connection: a connection is set up, fed, and closed (EOF) so
/// that a line that ends it early costs only the rest of its batch.
const BATCH: usize = 2_000;

/// A batch that takes longer than this has hung the connection.
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Valid lines of each kind an agent sends: notifications and requests to
/// the client, and answers to the client's requests.
const SEEDS: &[&str] = &[
    r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"Hello"}}}}"#,
    r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"agent_thought_chunk","content":{"type":"image","data":"iVBORw0KGgo=","mimeType":"image/png"}}}}"#,
    r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"user_message_chunk","content":{"type":"resource_link","uri":"file:///workspace/a.rs","name":"a.rs"}}}}"#,
    r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"resource","resource":{"uri":"file:///workspace/a","text":"fn main() {}"}}}}}"#,
    r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"tool_call","toolCallId":"t1","title":"Run ls","kind":"execute","status":"pending","content":[{"type":"content","content":{"type":"text","text":"x"}},{"type":"diff","path":"/workspace/a","oldText":"a","newText":"b"},{"type":"terminal","terminalId":"term-1"}],"locations":[{"path":"/workspace/a","line":3}],"rawInput":{"command":"ls"}}}}"#,
    r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"tool_call_update","toolCallId":"t1","status":"completed","rawOutput":{"exit":0}}}}"#,
    r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"plan","entries":[{"content":"Read","priority":"high","status":"pending"},{"content":"Write","priority":"low","status":"in_progress"}]}}}"#,
    r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"available_commands_update","availableCommands":[{"name":"test","description":"Run tests","input":{"hint":"which"}}]}}}"#,
    r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"current_mode_update","currentModeId":"code"}}}"#,
    r#"{"jsonrpc":"2.0","id":7,"method":"session/request_permission","params":{"sessionId":"s1","toolCall":{"toolCallId":"t1","title":"Write a.rs","kind":"edit"},"options":[{"optionId":"allow","name":"Allow","kind":"allow_once"},{"optionId":"reject","name":"Reject","kind":"reject_once"}]}}"#,
    r#"{"jsonrpc":"2.0","id":"r-8","method":"fs/read_text_file","params":{"sessionId":"s1","path":"/workspace/a.rs","line":1,"limit":10}}"#,
    r#"{"jsonrpc":"2.0","id":9,"method":"fs/write_text_file","params":{"sessionId":"s1","path":"/workspace/a.rs","content":"x"}}"#,
    r#"{"jsonrpc":"2.0","id":10,"method":"terminal/create","params":{"sessionId":"s1","command":"ls","args":["-l"],"env":[{"name":"A","value":"b"}],"cwd":"/workspace","outputByteLimit":1000}}"#,
    r#"{"jsonrpc":"2.0","id":11,"method":"terminal/output","params":{"sessionId":"s1","terminalId":"term-1"}}"#,
    r#"{"jsonrpc":"2.0","id":12,"method":"terminal/wait_for_exit","params":{"sessionId":"s1","terminalId":"term-1"}}"#,
    r#"{"jsonrpc":"2.0","id":13,"method":"terminal/kill","params":{"sessionId":"s1","terminalId":"term-1"}}"#,
    r#"{"jsonrpc":"2.0","id":14,"method":"terminal/release","params":{"sessionId":"s1","terminalId":"term-1"}}"#,
    r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":1,"agentCapabilities":{"loadSession":true,"promptCapabilities":{"image":true,"embeddedContext":true}},"agentInfo":{"name":"agent","version":"1.0"},"authMethods":[]}}"#,
    r#"{"jsonrpc":"2.0","id":1,"result":{"sessionId":"s1","modes":{"currentModeId":"code","availableModes":[{"id":"code","name":"Code"}]}}}"#,
    r#"{"jsonrpc":"2.0","id":2,"result":{"stopReason":"end_turn"}}"#,
    r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32603,"message":"boom","data":{"why":1}}}"#,
];

/// Field names of ACP messages.
const KEYS: &[&str] = &[
    "jsonrpc",
    "id",
    "method",
    "params",
    "result",
    "error",
    "code",
    "message",
    "sessionId",
    "update",
    "sessionUpdate",
    "content",
    "type",
    "text",
    "toolCallId",
    "toolCall",
    "title",
    "kind",
    "status",
    "path",
    "line",
    "limit",
    "command",
    "args",
    "env",
    "name",
    "value",
    "cwd",
    "outputByteLimit",
    "terminalId",
    "options",
    "optionId",
    "entries",
    "priority",
    "mimeType",
    "data",
    "uri",
    "stopReason",
    "agentCapabilities",
    "loadSession",
    "_meta",
];

/// One line an agent might write, without its newline.
fn line(rng: &mut Rng) -> String {
    let seed = *rng.pick(SEEDS);
    let text = match rng.below(8) {
        0 => value(rng, 4, KEYS).to_string(),
        1 | 2 => seed.to_owned(),
        _ => match serde_json::from_str::<Value>(seed) {
            Ok(mut v) => {
                mutate_value(rng, &mut v, KEYS);
                v.to_string()
            }
            Err(_) => seed.to_owned(),
        },
    };
    if !rng.one_in(4) {
        return text;
    }
    let mut bytes = text.into_bytes();
    mutate_bytes(rng, &mut bytes);
    // The host reads lines of UTF-8; a line that is not ends the agent's
    // session by design, which would end every batch at its first one.
    String::from_utf8_lossy(&bytes).replace('\n', " ")
}

/// The answers to the host's own requests, decoded as the host decodes
/// them, and re-encoded where the host keeps them (`agentInfo`,
/// `agentCapabilities`, `stopReason`).
fn decode_answer(line: &str) {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return;
    };
    let Some(result) = v.get("result") else {
        return;
    };
    if let Ok(init) = serde_json::from_value::<InitializeResponse>(result.clone()) {
        let _ = serde_json::to_value(&init.agent_info);
        let _ = serde_json::to_value(&init.agent_capabilities);
    }
    let _ = serde_json::from_value::<NewSessionResponse>(result.clone());
    let _ = serde_json::from_value::<LoadSessionResponse>(result.clone());
    if let Ok(prompt) = serde_json::from_value::<PromptResponse>(result.clone()) {
        let _ = serde_json::to_value(prompt.stop_reason);
    }
}

fn refuse<T: agent_client_protocol::JsonRpcResponse>(
    responder: Responder<T>,
    what: &str,
) -> Result<(), Error> {
    HANDLED.fetch_add(1, Ordering::Relaxed);
    responder.respond_with_error(Error::invalid_params().data(format!("fuzz: no {what}")))
}

/// Runs one connection over `lines`; returns whether it ended in time.
async fn connection(lines: Vec<String>) -> bool {
    let (host_side, agent_side) = tokio::io::duplex(1 << 16);
    let (host_read, host_write) = tokio::io::split(host_side);
    let (mut agent_read, mut agent_write) = tokio::io::split(agent_side);
    let transport = ByteStreams::new(host_write.compat_write(), host_read.compat());
    let host = Client
        .v1()
        .name("ensemble-fuzz")
        .on_receive_notification(
            async move |n: SessionNotification, _cx| {
                HANDLED.fetch_add(1, Ordering::Relaxed);
                // The host's own step: the notification becomes an event.
                let event = ensemble_host::session::session_event(&n);
                assert!(serde_json::from_str::<Value>(&event).is_ok());
                Ok(())
            },
            agent_client_protocol::on_receive_notification!(),
        )
        .on_receive_request(
            async move |request: RequestPermissionRequest,
                        responder: Responder<RequestPermissionResponse>,
                        _cx: ConnectionTo<Agent>| {
                HANDLED.fetch_add(1, Ordering::Relaxed);
                // What the host logs as `permissionRequest`.
                let _ =
                    json!({"toolCall": request.tool_call, "options": request.options}).to_string();
                responder.respond(RequestPermissionResponse::new(
                    RequestPermissionOutcome::Cancelled,
                ))
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |request: ReadTextFileRequest,
                        responder: Responder<ReadTextFileResponse>,
                        _cx| {
                let _ = request.path.display().to_string();
                refuse(responder, "workspace")
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |request: WriteTextFileRequest,
                        responder: Responder<WriteTextFileResponse>,
                        _cx| {
                let _ = request.path.display().to_string();
                refuse(responder, "workspace")
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |request: CreateTerminalRequest,
                        responder: Responder<CreateTerminalResponse>,
                        _cx| {
                let _ = request.cwd.as_ref().map(|p| p.display().to_string());
                let _ = request.output_byte_limit.map(usize::try_from);
                let _: Vec<(String, String)> = request
                    .env
                    .iter()
                    .map(|v| (v.name.clone(), v.value.clone()))
                    .collect();
                refuse(responder, "VM")
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |request: TerminalOutputRequest,
                        responder: Responder<TerminalOutputResponse>,
                        _cx| { refuse(responder, &request.terminal_id.0) },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |request: WaitForTerminalExitRequest,
                        responder: Responder<WaitForTerminalExitResponse>,
                        _cx| { refuse(responder, &request.terminal_id.0) },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |request: KillTerminalRequest,
                        responder: Responder<KillTerminalResponse>,
                        _cx| { refuse(responder, &request.terminal_id.0) },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |request: ReleaseTerminalRequest,
                        responder: Responder<ReleaseTerminalResponse>,
                        _cx| { refuse(responder, &request.terminal_id.0) },
            agent_client_protocol::on_receive_request!(),
        )
        .connect_with(transport, async |cx: ConnectionTo<Agent>| {
            cx.incoming_closed().await;
            Ok(())
        });
    let agent = async move {
        for line in &lines {
            let written = async {
                agent_write.write_all(line.as_bytes()).await?;
                agent_write.write_all(b"\n").await
            };
            // The host side closed (a line ended the connection): the rest
            // of the batch has nowhere to go.
            if written.await.is_err() {
                break;
            }
        }
        let _ = agent_write.shutdown().await;
    };
    // The host's answers are read and dropped, else its writes would block.
    let drain = async move {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(agent_read.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    let all = async {
        let (_, _, _) = tokio::join!(host, agent, drain);
    };
    tokio::time::timeout(BATCH_TIMEOUT, all).await.is_ok()
}

pub fn run(seed: u64, budget: Duration) -> Report {
    crate::count_panics();
    let mut rng = Rng::new(seed);
    let mut report = Report {
        name: "acp_lines",
        execs: 0,
        elapsed: Duration::ZERO,
        crashes: Vec::new(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => panic!("no tokio runtime: {e}"),
    };
    let start = Instant::now();
    while start.elapsed() < budget {
        let lines: Vec<String> = (0..BATCH).map(|_| line(&mut rng)).collect();
        for line in &lines {
            decode_answer(line);
        }
        let panics = crate::panics();
        let ended = runtime.block_on(connection(lines.clone()));
        report.execs += lines.len() as u64;
        // A panic anywhere in the connection (its tasks included), or a
        // hang, is a crash of the batch: kept whole, one line a line.
        if crate::panics() > panics || !ended {
            report.crashes.push(lines.join("\n").into_bytes());
        }
    }
    report.elapsed = start.elapsed();
    report
}
