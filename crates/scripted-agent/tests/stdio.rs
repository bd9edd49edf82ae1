//! The scripted agent as a real process, driven over its stdin and stdout with
//! raw JSON-RPC lines by a minimal client written here. The client answers
//! the agent's fs, terminal and permission requests itself; its "terminal"
//! is canned answers at the JSON level, which is all the agent can see.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

const BIN: &str = env!("CARGO_BIN_EXE_ensemble-scripted-agent");

/// Upper bound on any single wait: a hang fails the test instead of the suite.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// One line the agent wrote: a JSON-RPC message or anything else.
#[derive(Debug, Clone)]
enum Line {
    Json(Value),
    Raw(String),
}

/// Everything the agent sent during one prompt turn, and its answer (`None`
/// if the agent exited first).
#[derive(Debug, Default)]
struct Transcript {
    lines: Vec<Line>,
    response: Option<Value>,
}

impl Transcript {
    fn messages(&self) -> impl Iterator<Item = &Value> {
        self.lines.iter().filter_map(|line| match line {
            Line::Json(value) => Some(value),
            Line::Raw(_) => None,
        })
    }

    /// The `update` of every `session/update`, in order.
    fn updates(&self) -> Vec<&Value> {
        self.messages()
            .filter(|m| m["method"] == "session/update")
            .map(|m| &m["params"]["update"])
            .collect()
    }

    fn updates_of(&self, kind: &str) -> Vec<&Value> {
        self.updates()
            .into_iter()
            .filter(|u| u["sessionUpdate"] == kind)
            .collect()
    }

    /// The text of every agent message chunk, in order.
    fn chunks(&self) -> Vec<String> {
        self.updates_of("agent_message_chunk")
            .into_iter()
            .map(|u| {
                assert_eq!(u["content"]["type"], "text", "{u}");
                u["content"]["text"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    /// Method names of the agent's requests and notifications, in order,
    /// with each session/update shown as `update:<kind>`.
    fn trace(&self) -> Vec<String> {
        self.messages()
            .filter_map(|m| {
                let method = m["method"].as_str()?;
                Some(if method == "session/update" {
                    format!(
                        "update:{}",
                        m["params"]["update"]["sessionUpdate"].as_str().unwrap()
                    )
                } else {
                    method.to_owned()
                })
            })
            .collect()
    }

    /// The agent's requests (method, params), in order.
    fn requests(&self) -> Vec<(&str, &Value)> {
        self.messages()
            .filter(|m| m.get("id").is_some() && m.get("method").is_some())
            .map(|m| (m["method"].as_str().unwrap(), &m["params"]))
            .collect()
    }

    fn stop_reason(&self) -> &str {
        let response = self.response.as_ref().expect("the turn was answered");
        response["result"]["stopReason"]
            .as_str()
            .unwrap_or_else(|| panic!("no stopReason in {response}"))
    }
}

/// The agent process and a minimal client speaking to it.
struct Agent {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    next_id: u64,
    /// Filled by a task reading stderr, so the pipe never fills up.
    stderr: tokio::task::JoinHandle<String>,
}

impl Agent {
    fn spawn(args: &[&str]) -> Self {
        Self::spawn_with_env(args, &[])
    }

    /// The environment is cleared first: the agent gets only `env`.
    fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = tokio::process::Command::new(BIN)
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the scripted agent");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            drop(stderr.read_to_string(&mut text).await);
            text
        });
        Self {
            child,
            stdin,
            stdout,
            next_id: 1,
            stderr,
        }
    }

    async fn send(&mut self, message: Value) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        let mut line = message.to_string();
        line.push('\n');
        stdin.write_all(line.as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// The next line, or `None` at EOF.
    async fn next_line(&mut self) -> Option<Line> {
        let line = tokio::time::timeout(STEP_TIMEOUT, self.stdout.next_line())
            .await
            .expect("the agent wrote nothing for too long")
            .unwrap()?;
        Some(match serde_json::from_str(&line) {
            Ok(value) => Line::Json(value),
            Err(_) => Line::Raw(line),
        })
    }

    async fn send_request(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        id
    }

    /// Send a request and return its response, which must be the next line.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send_request(method, params).await;
        match self.next_line().await {
            Some(Line::Json(response)) if response["id"] == id => response,
            other => panic!("expected the response to {method}, got {other:?}"),
        }
    }

    async fn initialize(&mut self, capabilities: Value) -> Value {
        let response = self
            .call(
                "initialize",
                json!({
                    "protocolVersion": 1,
                    "clientCapabilities": capabilities,
                    "clientInfo": {"name": "stdio-test", "version": "0"},
                }),
            )
            .await;
        assert!(response.get("result").is_some(), "{response}");
        response
    }

    async fn new_session(&mut self, cwd: &str) -> String {
        let response = self
            .call("session/new", json!({"cwd": cwd, "mcpServers": []}))
            .await;
        response["result"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {response}"))
            .to_owned()
    }

    /// An initialized agent with a client that offers everything, and one
    /// session in `cwd`.
    async fn ready(cwd: &str) -> (Self, String) {
        let mut agent = Self::spawn(&[]);
        agent.initialize(all_capabilities()).await;
        let session = agent.new_session(cwd).await;
        (agent, session)
    }

    /// Send a prompt and collect the turn. `client` sees each message the
    /// agent sends and returns what to send back (answers, `session/cancel`).
    async fn prompt(
        &mut self,
        session: &str,
        script: &str,
        mut client: impl FnMut(&Value) -> Vec<Value>,
    ) -> Transcript {
        let id = self
            .send_request(
                "session/prompt",
                json!({"sessionId": session, "prompt": [{"type": "text", "text": script}]}),
            )
            .await;
        let mut transcript = Transcript::default();
        while let Some(line) = self.next_line().await {
            if let Line::Json(message) = &line {
                if message["id"] == id && message.get("method").is_none() {
                    transcript.response = Some(message.clone());
                    break;
                }
                for reply in client(message) {
                    self.send(reply).await;
                }
            }
            transcript.lines.push(line);
        }
        transcript
    }

    /// Close stdin and wait for the exit code; also returns stderr.
    async fn finish(mut self) -> (Option<i32>, String) {
        drop(self.stdin.take());
        let status = tokio::time::timeout(STEP_TIMEOUT, self.child.wait())
            .await
            .expect("the agent did not exit")
            .unwrap();
        let stderr = self.stderr.await.unwrap();
        (status.code(), stderr)
    }
}

fn all_capabilities() -> Value {
    json!({"fs": {"readTextFile": true, "writeTextFile": true}, "terminal": true})
}

fn is_request(message: &Value, method: &str) -> bool {
    message["method"] == method && message.get("id").is_some()
}

fn answer(request: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": request["id"], "result": result})
}

fn answer_error(request: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": request["id"], "error": {"code": code, "message": message}})
}

fn cancel(session: &str) -> Value {
    json!({"jsonrpc": "2.0", "method": "session/cancel", "params": {"sessionId": session}})
}

fn select(option: &str) -> Value {
    json!({"outcome": {"outcome": "selected", "optionId": option}})
}

/// A client with no terminal, fs or permission prompts to answer.
fn no_requests(message: &Value) -> Vec<Value> {
    assert!(message.get("id").is_none(), "unexpected request {message}");
    Vec::new()
}

/// A client whose canned terminal ran a command that printed `output` and
/// exited with `exit_code`, and that answers everything else with success.
fn fake_terminal(output: &'static str, exit_code: u32) -> impl FnMut(&Value) -> Vec<Value> {
    move |message| {
        let Some(method) = message["method"].as_str() else {
            return Vec::new();
        };
        if message.get("id").is_none() {
            return Vec::new();
        }
        let result = match method {
            "terminal/create" => json!({"terminalId": "term-1"}),
            "terminal/wait_for_exit" => json!({"exitCode": exit_code}),
            "terminal/output" => json!({
                "output": output,
                "truncated": false,
                "exitStatus": {"exitCode": exit_code},
            }),
            "terminal/release" => json!({}),
            other => panic!("unexpected request {other}"),
        };
        vec![answer(message, result)]
    }
}

#[tokio::test]
async fn initialize_and_new_session() {
    let mut agent = Agent::spawn(&[]);
    let response = agent.initialize(all_capabilities()).await;
    let result = &response["result"];
    assert_eq!(result["protocolVersion"], 1);
    assert_eq!(
        result["agentInfo"],
        json!({"name": "scripted", "version": env!("CARGO_PKG_VERSION")})
    );
    assert_eq!(result["agentCapabilities"]["loadSession"], false);
    assert_eq!(
        result["agentCapabilities"]["promptCapabilities"],
        json!({"image": false, "audio": false, "embeddedContext": false})
    );

    let first = agent
        .call("session/new", json!({"cwd": "/tmp", "mcpServers": []}))
        .await;
    assert_eq!(
        first["result"],
        json!({
            "sessionId": "scripted-1",
            "modes": {
                "currentModeId": "default",
                "availableModes": [
                    {"id": "default", "name": "Default"},
                    {"id": "plan", "name": "Plan"},
                ],
            },
        })
    );
    assert_eq!(agent.new_session("/").await, "scripted-2");

    let relative = agent
        .call(
            "session/new",
            json!({"cwd": "relative/dir", "mcpServers": []}),
        )
        .await;
    assert_eq!(relative["error"]["code"], -32602, "{relative}");

    let (code, _) = agent.finish().await;
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn set_mode() {
    let (mut agent, session) = Agent::ready("/tmp").await;
    let set = agent
        .call(
            "session/set_mode",
            json!({"sessionId": session, "modeId": "plan"}),
        )
        .await;
    assert_eq!(set["result"], json!({}), "{set}");
    let unknown_mode = agent
        .call(
            "session/set_mode",
            json!({"sessionId": session, "modeId": "yolo"}),
        )
        .await;
    assert_eq!(unknown_mode["error"]["code"], -32602, "{unknown_mode}");
    let unknown_session = agent
        .call(
            "session/set_mode",
            json!({"sessionId": "nope", "modeId": "plan"}),
        )
        .await;
    assert_eq!(
        unknown_session["error"]["code"], -32002,
        "{unknown_session}"
    );
    assert_eq!(
        unknown_session["error"]["data"],
        json!({"sessionId": "nope"})
    );
}

#[tokio::test]
async fn say_streams_chunks_that_reassemble() {
    let (mut agent, session) = Agent::ready("/tmp").await;
    let turn = agent
        .prompt(&session, "say hello brave new world", no_requests)
        .await;
    assert_eq!(turn.chunks(), ["hello brave ", "new ", "world"]);
    assert_eq!(turn.chunks().concat(), "hello brave new world");
    assert_eq!(turn.stop_reason(), "end_turn");
    assert!(turn.messages().all(|m| m["params"]["sessionId"] == session));

    // Commands run in order within the turn; unknown lines are reported.
    let turn = agent
        .prompt(
            &session,
            "think let me see\n\nsay one\nhello there\nsay two",
            no_requests,
        )
        .await;
    assert_eq!(
        turn.trace(),
        [
            "update:agent_thought_chunk",
            "update:agent_message_chunk",
            "update:agent_message_chunk",
            "update:agent_message_chunk"
        ]
    );
    assert_eq!(
        turn.updates_of("agent_thought_chunk")[0]["content"],
        json!({"type": "text", "text": "let me see"})
    );
    assert_eq!(
        turn.chunks(),
        ["one", "unknown command: hello there", "two"]
    );
    assert_eq!(turn.stop_reason(), "end_turn");
}

#[tokio::test]
async fn text_blocks_are_joined_by_newlines() {
    let (mut agent, session) = Agent::ready("/tmp").await;
    let id = agent
        .send_request(
            "session/prompt",
            json!({"sessionId": session, "prompt": [
                {"type": "text", "text": "say first"},
                {"type": "resource_link", "uri": "file:///tmp/x", "name": "x"},
                {"type": "text", "text": "say second"},
            ]}),
        )
        .await;
    let mut texts = Vec::new();
    loop {
        let Some(Line::Json(message)) = agent.next_line().await else {
            panic!("the agent stopped");
        };
        if message["id"] == id {
            assert_eq!(message["result"]["stopReason"], "end_turn");
            break;
        }
        texts.push(message["params"]["update"]["content"]["text"].clone());
    }
    assert_eq!(texts, [json!("first"), json!("second")]);
}

#[tokio::test]
async fn plan_marks_steps_one_at_a_time() {
    let (mut agent, session) = Agent::ready("/tmp").await;
    let turn = agent
        .prompt(
            &session,
            "plan read the code; fix it ;write tests",
            no_requests,
        )
        .await;
    let plans: Vec<Vec<(String, String)>> = turn
        .updates_of("plan")
        .into_iter()
        .map(|plan| {
            plan["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|entry| {
                    assert_eq!(entry["priority"], "medium");
                    (
                        entry["content"].as_str().unwrap().to_owned(),
                        entry["status"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .collect();
    let step = |statuses: [&str; 3]| -> Vec<(String, String)> {
        ["read the code", "fix it", "write tests"]
            .into_iter()
            .zip(statuses)
            .map(|(content, status)| (content.to_owned(), status.to_owned()))
            .collect()
    };
    assert_eq!(
        plans,
        [
            step(["pending", "pending", "pending"]),
            step(["in_progress", "pending", "pending"]),
            step(["completed", "pending", "pending"]),
            step(["completed", "in_progress", "pending"]),
            step(["completed", "completed", "pending"]),
            step(["completed", "completed", "in_progress"]),
            step(["completed", "completed", "completed"]),
        ]
    );
    assert_eq!(turn.stop_reason(), "end_turn");
}

#[tokio::test]
async fn run_uses_a_client_terminal() {
    let (mut agent, session) = Agent::ready("/work/space").await;
    let turn = agent
        .prompt(
            &session,
            "run echo hi && ls",
            fake_terminal("hi\nfile\n", 0),
        )
        .await;
    assert_eq!(
        turn.trace(),
        [
            "update:tool_call",
            "terminal/create",
            "update:tool_call_update",
            "terminal/wait_for_exit",
            "terminal/output",
            "terminal/release",
            "update:tool_call_update",
            "update:agent_message_chunk",
        ]
    );
    let requests = turn.requests();
    assert_eq!(
        *requests[0].1,
        json!({
            "sessionId": session,
            "command": "sh",
            "args": ["-c", "echo hi && ls"],
            "cwd": "/work/space",
        })
    );
    for (_, params) in &requests[1..] {
        assert_eq!(
            **params,
            json!({"sessionId": session, "terminalId": "term-1"})
        );
    }
    let updates = turn.updates();
    assert_eq!(
        *updates[0],
        json!({
            "sessionUpdate": "tool_call",
            "toolCallId": "call-1",
            "title": "run echo hi && ls",
            "kind": "execute",
        })
    );
    assert_eq!(
        *updates[1],
        json!({
            "sessionUpdate": "tool_call_update",
            "toolCallId": "call-1",
            "status": "in_progress",
            "content": [{"type": "terminal", "terminalId": "term-1"}],
        })
    );
    assert_eq!(
        *updates[2],
        json!({
            "sessionUpdate": "tool_call_update",
            "toolCallId": "call-1",
            "status": "completed",
            "content": [{"type": "content", "content": {"type": "text", "text": "hi\nfile\n"}}],
        })
    );
    assert_eq!(turn.chunks(), ["exit 0"]);
    assert_eq!(turn.stop_reason(), "end_turn");

    // A non-zero exit fails the tool call; tool call ids go on counting.
    let turn = agent
        .prompt(&session, "run false", fake_terminal("", 1))
        .await;
    let updates = turn.updates_of("tool_call_update");
    assert_eq!(updates[1]["toolCallId"], "call-2");
    assert_eq!(updates[1]["status"], "failed");
    assert_eq!(turn.chunks(), ["exit 1"]);
    assert_eq!(turn.stop_reason(), "end_turn");
}

#[tokio::test]
async fn run_reports_a_terminal_error() {
    let (mut agent, session) = Agent::ready("/tmp").await;
    let turn = agent
        .prompt(&session, "run true\nsay after", |message| {
            if is_request(message, "terminal/create") {
                vec![answer_error(message, -32603, "no shell here")]
            } else {
                no_requests(message)
            }
        })
        .await;
    assert_eq!(
        turn.trace(),
        [
            "update:tool_call",
            "terminal/create",
            "update:tool_call_update",
            "update:agent_message_chunk",
            "update:agent_message_chunk",
        ]
    );
    assert_eq!(turn.updates()[1]["status"], "failed");
    assert_eq!(turn.chunks(), ["run failed: no shell here", "after"]);
    assert_eq!(turn.stop_reason(), "end_turn");
}

#[tokio::test]
async fn write_allowed() {
    let (mut agent, session) = Agent::ready("/work/space").await;
    let mut written = Vec::new();
    let turn = agent
        .prompt(&session, "write notes/todo.txt buy  milk", |message| {
            if is_request(message, "session/request_permission") {
                vec![answer(message, select("allow"))]
            } else if is_request(message, "fs/write_text_file") {
                written.push(message["params"].clone());
                vec![answer(message, json!({}))]
            } else {
                no_requests(message)
            }
        })
        .await;
    assert_eq!(
        turn.trace(),
        [
            "update:tool_call",
            "session/request_permission",
            "fs/write_text_file",
            "update:tool_call_update",
            "update:agent_message_chunk",
        ]
    );
    assert_eq!(
        *turn.updates()[0],
        json!({
            "sessionUpdate": "tool_call",
            "toolCallId": "call-1",
            "title": "write notes/todo.txt",
            "kind": "edit",
            "content": [{"type": "diff", "path": "/work/space/notes/todo.txt", "newText": "buy  milk"}],
            "locations": [{"path": "/work/space/notes/todo.txt"}],
        })
    );
    let permission = turn.requests()[0].1;
    assert_eq!(permission["sessionId"], session);
    assert_eq!(permission["toolCall"]["toolCallId"], "call-1");
    assert_eq!(
        permission["options"],
        json!([
            {"optionId": "allow", "name": "Allow", "kind": "allow_once"},
            {"optionId": "reject", "name": "Reject", "kind": "reject_once"},
        ])
    );
    assert_eq!(
        written,
        [json!({
            "sessionId": session,
            "path": "/work/space/notes/todo.txt",
            "content": "buy  milk",
        })]
    );
    assert_eq!(
        *turn.updates()[1],
        json!({"sessionUpdate": "tool_call_update", "toolCallId": "call-1", "status": "completed"})
    );
    assert_eq!(turn.chunks(), ["wrote notes/todo.txt"]);
    assert_eq!(turn.stop_reason(), "end_turn");

    // Absolute paths are used as they are.
    let turn = agent
        .prompt(&session, "write /etc/motd hi", |message| {
            if is_request(message, "session/request_permission") {
                vec![answer(message, select("allow"))]
            } else if is_request(message, "fs/write_text_file") {
                assert_eq!(message["params"]["path"], "/etc/motd");
                vec![answer(message, json!({}))]
            } else {
                no_requests(message)
            }
        })
        .await;
    assert_eq!(turn.chunks(), ["wrote /etc/motd"]);
}

#[tokio::test]
async fn write_rejected() {
    let (mut agent, session) = Agent::ready("/tmp").await;
    let turn = agent
        .prompt(&session, "write a.txt nope\nsay still going", |message| {
            if is_request(message, "session/request_permission") {
                vec![answer(message, select("reject"))]
            } else {
                no_requests(message)
            }
        })
        .await;
    assert_eq!(
        turn.trace(),
        [
            "update:tool_call",
            "session/request_permission",
            "update:tool_call_update",
            "update:agent_message_chunk",
            "update:agent_message_chunk",
            "update:agent_message_chunk",
        ]
    );
    assert_eq!(turn.updates()[1]["status"], "failed");
    assert_eq!(turn.chunks(), ["permission denied", "still ", "going"]);
    assert_eq!(turn.stop_reason(), "end_turn");
}

#[tokio::test]
async fn write_permission_cancelled() {
    let (mut agent, session) = Agent::ready("/tmp").await;
    let turn = agent
        .prompt(&session, "write a.txt x\nsay never", |message| {
            if is_request(message, "session/request_permission") {
                vec![answer(
                    message,
                    json!({"outcome": {"outcome": "cancelled"}}),
                )]
            } else {
                no_requests(message)
            }
        })
        .await;
    assert_eq!(
        turn.trace(),
        ["update:tool_call", "session/request_permission"]
    );
    assert_eq!(turn.stop_reason(), "cancelled");
}

#[tokio::test]
async fn write_error_from_the_client() {
    let (mut agent, session) = Agent::ready("/tmp").await;
    let turn = agent
        .prompt(&session, "write /ro/a.txt x\nsay after", |message| {
            if is_request(message, "session/request_permission") {
                vec![answer(message, select("allow"))]
            } else if is_request(message, "fs/write_text_file") {
                vec![answer_error(message, -32603, "read-only file system")]
            } else {
                no_requests(message)
            }
        })
        .await;
    assert_eq!(turn.updates_of("tool_call_update")[0]["status"], "failed");
    assert_eq!(
        turn.chunks(),
        ["write failed: read-only file system", "after"]
    );
    assert_eq!(turn.stop_reason(), "end_turn");
}

#[tokio::test]
async fn read_file() {
    let (mut agent, session) = Agent::ready("/work").await;
    let turn = agent
        .prompt(&session, "read src/main.rs\nread /missing", |message| {
            if is_request(message, "fs/read_text_file") {
                if message["params"]["path"] == "/work/src/main.rs" {
                    vec![answer(message, json!({"content": "fn main() {}\n"}))]
                } else {
                    vec![answer_error(message, -32002, "Resource not found")]
                }
            } else {
                no_requests(message)
            }
        })
        .await;
    assert_eq!(
        turn.trace(),
        [
            "fs/read_text_file",
            "update:agent_message_chunk",
            "fs/read_text_file",
            "update:agent_message_chunk",
        ]
    );
    assert_eq!(
        *turn.requests()[0].1,
        json!({"sessionId": session, "path": "/work/src/main.rs"})
    );
    assert_eq!(
        turn.chunks(),
        ["fn main() {}\n", "read failed: Resource not found"]
    );
}

#[tokio::test]
async fn a_client_without_capabilities_gets_no_fs_or_terminal_requests() {
    let mut agent = Agent::spawn(&[]);
    agent.initialize(json!({})).await;
    let session = agent.new_session("/tmp").await;
    let turn = agent
        .prompt(&session, "run ls\nwrite a.txt x\nread a.txt", no_requests)
        .await;
    assert!(turn.requests().is_empty());
    assert_eq!(
        turn.chunks(),
        [
            "run failed: the client does not offer terminals",
            "write failed: the client cannot write files",
            "read failed: the client cannot read files",
        ]
    );
    let failed: Vec<_> = turn
        .updates_of("tool_call_update")
        .into_iter()
        .map(|u| u["status"].clone())
        .collect();
    assert_eq!(failed, [json!("failed"), json!("failed")]);
}

#[tokio::test]
async fn wait_until_cancelled() {
    let (mut agent, session) = Agent::ready("/tmp").await;
    let turn = agent
        .prompt(&session, "say waiting\nwait\nsay never", |message| {
            if message["params"]["update"]["content"]["text"] == "waiting" {
                vec![cancel(&session)]
            } else {
                no_requests(message)
            }
        })
        .await;
    assert_eq!(turn.chunks(), ["waiting"]);
    assert_eq!(turn.stop_reason(), "cancelled");

    // The session takes the next prompt.
    let turn = agent.prompt(&session, "say again", no_requests).await;
    assert_eq!(turn.chunks(), ["again"]);
    assert_eq!(turn.stop_reason(), "end_turn");
}

#[tokio::test]
async fn sleep_is_cancellable() {
    let (mut agent, session) = Agent::ready("/tmp").await;
    let turn = agent
        .prompt(&session, "sleep 1\nsay woke", no_requests)
        .await;
    assert_eq!(turn.chunks(), ["woke"]);
    let turn = agent
        .prompt(&session, "say zzz\nsleep 600000\nsay never", |message| {
            if message["params"]["update"]["content"]["text"] == "zzz" {
                vec![cancel(&session)]
            } else {
                no_requests(message)
            }
        })
        .await;
    assert_eq!(turn.stop_reason(), "cancelled");
}

#[tokio::test]
async fn stream_sends_numbered_timestamped_chunks() {
    let (mut agent, session) = Agent::ready("/tmp").await;
    let before = unix_micros();
    let turn = agent
        .prompt(&session, "stream 1000\nsay done", no_requests)
        .await;
    let after = unix_micros();
    let chunks = turn.chunks();
    assert_eq!(chunks.len(), 1001);
    assert_eq!(chunks[1000], "done");
    let mut last_sent = before;
    for (i, chunk) in chunks[..1000].iter().enumerate() {
        let rest = chunk
            .strip_prefix(&format!("stream {} t=", i + 1))
            .and_then(|rest| rest.strip_suffix('\n'))
            .unwrap_or_else(|| panic!("chunk {i}: {chunk:?}"));
        let sent: u128 = rest.parse().unwrap_or_else(|_| panic!("{chunk:?}"));
        // Same clock: sent during the turn, never earlier than the chunk before.
        assert!(sent >= last_sent && sent <= after, "{chunk:?}");
        last_sent = sent;
    }
    assert_eq!(turn.stop_reason(), "end_turn");
    let turn = agent
        .prompt(&session, "stream 0\nstream x", no_requests)
        .await;
    assert_eq!(turn.chunks(), ["unknown command: stream x"]);

    // Cancelled part-way: no chunk after the cancel is acted on, the turn ends.
    let turn = agent
        .prompt(&session, "stream 100000000\nsay never", |message| {
            if message["params"]["update"]["content"]["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("stream 100 "))
            {
                vec![cancel(&session)]
            } else {
                no_requests(message)
            }
        })
        .await;
    assert_eq!(turn.stop_reason(), "cancelled");
    let chunks = turn.chunks();
    assert!(
        chunks.len() >= 100 && chunks.len() < 100_000_000,
        "{}",
        chunks.len()
    );
    assert!(chunks.iter().all(|c| c.starts_with("stream ")));
}

fn unix_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

#[tokio::test]
async fn cancel_while_waiting_for_permission() {
    let (mut agent, session) = Agent::ready("/tmp").await;
    let mut permission = None;
    let turn = agent
        .prompt(&session, "write a.txt x", |message| {
            if is_request(message, "session/request_permission") {
                // Leave the request open, as a person deciding would.
                permission = Some(message.clone());
                vec![cancel(&session)]
            } else {
                no_requests(message)
            }
        })
        .await;
    assert_eq!(
        turn.trace(),
        ["update:tool_call", "session/request_permission"]
    );
    assert_eq!(turn.stop_reason(), "cancelled");

    // The client then answers the abandoned request, as ACP requires; the
    // agent drops the answer and serves the next turn.
    let permission = permission.unwrap();
    agent
        .send(answer(
            &permission,
            json!({"outcome": {"outcome": "cancelled"}}),
        ))
        .await;
    let turn = agent.prompt(&session, "say next", no_requests).await;
    assert_eq!(turn.chunks(), ["next"]);
}

#[tokio::test]
async fn cancel_while_a_terminal_runs_releases_it() {
    let (mut agent, session) = Agent::ready("/tmp").await;
    let turn = agent
        .prompt(&session, "run sleep 1000\nsay never", |message| {
            if is_request(message, "terminal/create") {
                vec![answer(message, json!({"terminalId": "term-9"}))]
            } else if is_request(message, "terminal/wait_for_exit") {
                // Not answered: the command is still running.
                vec![cancel(&session)]
            } else if is_request(message, "terminal/release") {
                assert_eq!(message["params"]["terminalId"], "term-9");
                vec![answer(message, json!({}))]
            } else {
                no_requests(message)
            }
        })
        .await;
    assert_eq!(
        turn.trace(),
        [
            "update:tool_call",
            "terminal/create",
            "update:tool_call_update",
            "terminal/wait_for_exit",
            "terminal/release",
        ]
    );
    assert_eq!(turn.stop_reason(), "cancelled");
}

#[tokio::test]
async fn a_terminal_created_after_cancel_is_released() {
    let (mut agent, session) = Agent::ready("/tmp").await;
    let mut create = None;
    let turn = agent
        .prompt(&session, "run sleep 1000", |message| {
            if is_request(message, "terminal/create") {
                create = Some(message.clone());
                vec![cancel(&session)]
            } else {
                no_requests(message)
            }
        })
        .await;
    assert_eq!(turn.trace(), ["update:tool_call", "terminal/create"]);
    assert_eq!(turn.stop_reason(), "cancelled");

    // The client created the terminal after all: the agent releases it.
    agent
        .send(answer(&create.unwrap(), json!({"terminalId": "late"})))
        .await;
    match agent.next_line().await {
        Some(Line::Json(release)) if is_request(&release, "terminal/release") => {
            assert_eq!(
                release["params"],
                json!({"sessionId": session, "terminalId": "late"})
            );
        }
        other => panic!("expected terminal/release, got {other:?}"),
    }
}

#[tokio::test]
async fn one_turn_at_a_time_per_session() {
    let (mut agent, session) = Agent::ready("/tmp").await;
    let first = agent
        .send_request(
            "session/prompt",
            json!({"sessionId": session, "prompt": [{"type": "text", "text": "wait"}]}),
        )
        .await;
    let second = agent
        .call(
            "session/prompt",
            json!({"sessionId": session, "prompt": [{"type": "text", "text": "say hi"}]}),
        )
        .await;
    assert_eq!(second["error"]["code"], -32600, "{second}");
    let unknown = agent
        .call(
            "session/prompt",
            json!({"sessionId": "scripted-99", "prompt": [{"type": "text", "text": "say hi"}]}),
        )
        .await;
    assert_eq!(unknown["error"]["code"], -32002, "{unknown}");

    // A second session runs while the first waits.
    let other = agent.new_session("/tmp").await;
    let turn = agent.prompt(&other, "say meanwhile", no_requests).await;
    assert_eq!(turn.chunks(), ["meanwhile"]);

    agent.send(cancel(&session)).await;
    match agent.next_line().await {
        Some(Line::Json(response)) if response["id"] == first => {
            assert_eq!(response["result"]["stopReason"], "cancelled");
        }
        other => panic!("expected the first turn's answer, got {other:?}"),
    }
}

#[tokio::test]
async fn crash_exits_with_code_3_mid_turn() {
    let (mut agent, session) = Agent::ready("/tmp").await;
    let turn = agent
        .prompt(&session, "say before\ncrash\nsay after", no_requests)
        .await;
    assert!(turn.response.is_none(), "the turn must not be answered");
    assert_eq!(turn.chunks(), ["before", "crashing"]);
    let (code, _) = agent.finish().await;
    assert_eq!(code, Some(3));
}

#[tokio::test]
async fn hang_initialize_never_answers() {
    let mut agent = Agent::spawn(&["--hang-initialize"]);
    agent
        .send_request(
            "initialize",
            json!({"protocolVersion": 1, "clientCapabilities": {}}),
        )
        .await;
    // Still running after the request: it neither answered nor exited.
    let early = tokio::time::timeout(Duration::from_millis(300), agent.child.wait()).await;
    assert!(early.is_err(), "the agent exited: {early:?}");
    // Closing stdin ends it; it wrote nothing at all.
    drop(agent.stdin.take());
    assert!(agent.next_line().await.is_none());
    let (code, _) = agent.finish().await;
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn exit_at_start() {
    let mut agent = Agent::spawn(&["--exit-at-start", "7"]);
    assert!(agent.next_line().await.is_none());
    let (code, _) = agent.finish().await;
    assert_eq!(code, Some(7));
}

#[tokio::test]
async fn env_never_leaks_a_value() {
    const SECRET: &str = "sk-test-7f3a9c2e51d04b8e";
    // Logging at its most verbose, to check the logs too.
    let mut agent = Agent::spawn_with_env(&["--log", "trace"], &[("API_KEY", SECRET)]);
    agent.initialize(all_capabilities()).await;
    let session = agent.new_session("/tmp").await;
    let turn = agent
        .prompt(
            &session,
            "env API_KEY\nenv NOT_SET\nrun echo $API_KEY",
            fake_terminal("", 0),
        )
        .await;
    let chunks = turn.chunks();
    assert_eq!(
        chunks[..2],
        [
            format!("env API_KEY is set ({} chars)", SECRET.len()),
            "env NOT_SET is not set".to_owned(),
        ]
    );
    // `run` passes the line to the client as written: the shell expands it.
    assert_eq!(turn.requests()[0].1["args"], json!(["-c", "echo $API_KEY"]));

    let (code, stderr) = agent.finish().await;
    assert_eq!(code, Some(0));
    assert!(!stderr.is_empty(), "--log trace logged nothing");
    for line in &turn.lines {
        let text = match line {
            Line::Json(value) => value.to_string(),
            Line::Raw(raw) => raw.clone(),
        };
        assert!(!text.contains(SECRET), "leaked on stdout: {text}");
    }
    assert!(!stderr.contains(SECRET), "leaked on stderr");
}

#[tokio::test]
async fn garbage_lines_sit_between_whole_messages() {
    let (mut agent, session) = Agent::ready("/tmp").await;
    let turn = agent
        .prompt(
            &session,
            "say one two three four\ngarbage\nsay done",
            no_requests,
        )
        .await;
    let shape: Vec<String> = turn
        .lines
        .iter()
        .map(|line| match line {
            Line::Json(value) => value["params"]["update"]["content"]["text"]
                .as_str()
                .unwrap()
                .to_owned(),
            Line::Raw(raw) => format!("raw: {raw}"),
        })
        .collect();
    let mut expected: Vec<String> = ["one two ", "three ", "four"].map(str::to_owned).to_vec();
    expected.extend(
        ensemble_scripted_agent::GARBAGE_LINES
            .iter()
            .map(|line| format!("raw: {line}")),
    );
    expected.extend(["still ".to_owned(), "here".to_owned(), "done".to_owned()]);
    assert_eq!(shape, expected);
    assert_eq!(turn.stop_reason(), "end_turn");
}

#[tokio::test]
async fn garbage_at_start_then_normal_service() {
    let mut agent = Agent::spawn(&["--garbage-at-start"]);
    for expected in ensemble_scripted_agent::GARBAGE_LINES {
        match agent.next_line().await {
            Some(Line::Raw(line)) => assert_eq!(line, expected),
            other => panic!("expected garbage, got {other:?}"),
        }
    }
    agent.initialize(all_capabilities()).await;
    let session = agent.new_session("/tmp").await;
    let turn = agent.prompt(&session, "say fine", no_requests).await;
    assert_eq!(turn.chunks(), ["fine"]);
}

#[tokio::test]
async fn help_lists_the_flags() {
    let output = tokio::process::Command::new(BIN)
        .arg("--help")
        .env_clear()
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--hang-initialize",
        "--exit-at-start",
        "--garbage-at-start",
        "--log",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

/// Sends `session/load` and collects what the agent sends until it answers.
async fn load(agent: &mut Agent, session: &str, cwd: &str) -> Transcript {
    let id = agent
        .send_request(
            "session/load",
            json!({"sessionId": session, "cwd": cwd, "mcpServers": []}),
        )
        .await;
    let mut transcript = Transcript::default();
    while let Some(line) = agent.next_line().await {
        if let Line::Json(message) = &line {
            if message["id"] == id && message.get("method").is_none() {
                transcript.response = Some(message.clone());
                break;
            }
        }
        transcript.lines.push(line);
    }
    transcript
}

#[tokio::test]
async fn a_journaled_session_is_loaded_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let journal_arg = journal.to_str().unwrap();

    let mut agent = Agent::spawn(&["--journal-dir", journal_arg]);
    let init = agent.initialize(all_capabilities()).await;
    assert_eq!(init["result"]["agentCapabilities"]["loadSession"], true);
    let session = agent.new_session("/tmp").await;
    assert_eq!(session, "scripted-1");
    let first = agent
        .prompt(&session, "say hello brave world\nturn", no_requests)
        .await;
    assert_eq!(first.chunks(), ["hello ", "brave ", "world", "turn 1"]);
    let set = agent
        .call(
            "session/set_mode",
            json!({"sessionId": session, "modeId": "plan"}),
        )
        .await;
    assert!(set.get("result").is_some(), "{set}");
    let second = agent
        .prompt(&session, "turn\nrun echo hi", fake_terminal("hi\n", 0))
        .await;
    assert_eq!(second.chunks(), ["turn 2", "exit 0"]);
    // Killed, not closed: the journal must already hold everything sent.
    agent.child.kill().await.unwrap();

    let mut agent = Agent::spawn(&["--journal-dir", journal_arg]);
    agent.initialize(all_capabilities()).await;
    assert_eq!(
        agent.new_session("/tmp").await,
        "scripted-2",
        "a new session does not take the journaled one's id"
    );
    let loaded = load(&mut agent, &session, "/tmp").await;
    let response = loaded.response.as_ref().unwrap();
    assert_eq!(
        response["result"]["modes"]["currentModeId"], "plan",
        "{response}"
    );
    let tool_calls = loaded.updates_of("tool_call");
    assert_eq!(tool_calls.len(), 1);
    assert_eq!(tool_calls[0]["toolCallId"], "call-1");
    let replayed: Vec<(String, String)> = loaded
        .updates()
        .into_iter()
        .filter(|u| {
            u["sessionUpdate"]
                .as_str()
                .unwrap()
                .ends_with("message_chunk")
        })
        .map(|u| {
            (
                u["sessionUpdate"].as_str().unwrap().to_owned(),
                u["content"]["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("user_message_chunk", "say hello brave world\nturn"),
        ("agent_message_chunk", "hello "),
        ("agent_message_chunk", "brave "),
        ("agent_message_chunk", "world"),
        ("agent_message_chunk", "turn 1"),
        ("user_message_chunk", "turn\nrun echo hi"),
        ("agent_message_chunk", "turn 2"),
        ("agent_message_chunk", "exit 0"),
    ];
    assert_eq!(
        replayed,
        expected.map(|(k, t)| (k.to_owned(), t.to_owned())),
        "the transcript is replayed in order before the answer"
    );
    assert!(loaded
        .messages()
        .all(|m| m["params"]["sessionId"] == session.as_str()));
    let third = agent
        .prompt(&session, "turn\nrun true", fake_terminal("", 0))
        .await;
    assert_eq!(
        third.chunks(),
        ["turn 3", "exit 0"],
        "the loaded session goes on"
    );
    assert_eq!(third.updates_of("tool_call")[0]["toolCallId"], "call-2");

    for unknown in [
        "scripted-99",
        "../journal/scripted-1",
        "scripted-",
        "other-1",
    ] {
        let missing = load(&mut agent, unknown, "/tmp").await;
        let response = missing.response.unwrap();
        assert_eq!(response["error"]["code"], -32002, "{unknown}: {response}");
        assert!(missing.lines.is_empty());
    }
    let relative = load(&mut agent, &session, "relative").await;
    assert_eq!(relative.response.unwrap()["error"]["code"], -32602);
    let (code, _) = agent.finish().await;
    assert_eq!(code, Some(0));

    // Without a journal directory nothing is kept and nothing can be loaded.
    let (mut agent, _) = Agent::ready("/tmp").await;
    let refused = load(&mut agent, &session, "/tmp").await;
    assert_eq!(refused.response.unwrap()["error"]["code"], -32601);
}
