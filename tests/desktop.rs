//! The desktop app end to end: the real `ensemble-desktop` binary in a
//! real window under Xvfb, driven over WebDriver by tauri-driver in front of
//! WebKitWebDriver (both listen on 127.0.0.1 only). The window must open on
//! the UI served by the app's embedded host (data in a temporary directory),
//! connected as the owner, with a working shell; a screenshot must not be
//! blank; joining another host over the LAN must work from the window (a
//! headless `ensemble serve --lan` announced on `lo`: Nearby lists it, both
//! sides show the same verification code, its owner approves, the window
//! drives its shell through the app's relay); ending the app must stop the
//! host and its processes; the app must read `ensemble serve`'s
//! configuration file (a setting from it shows in the host's state, a bad
//! key stops the app with a message naming it). Screenshots and the drivers' logs (which include
//! the app's) go to target/desktop-test-output/.
//!
//! mDNS runs on `lo` only and every listener binds 127.0.0.1.
//!
//! Needs what scripts/setup.sh installs: Xvfb, WebKitWebDriver, tauri-driver;
//! and the `ensemble` binary next to the app's (`cargo build -p ensemble`).

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

const APP: &str = env!("CARGO_BIN_EXE_ensemble-desktop");
/// Launching WebKit and the app in a debug build on a busy 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// One step of the UI (connect, open a shell, echo).
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn the_window_shows_the_ui_as_owner_and_ending_the_app_stops_the_host() {
    let out = output_dir();
    let data_dir = tempfile::tempdir().unwrap();
    // The app's settings file, where `ensemble serve` reads its own; one
    // setting the test can see from outside (the name it would share as).
    let config_home = tempfile::tempdir().unwrap();
    std::fs::create_dir(config_home.path().join("ensemble")).unwrap();
    std::fs::write(
        config_home.path().join("ensemble/config.toml"),
        "lan-name = \"Desk From File\"\n",
    )
    .unwrap();

    let (_xvfb, display) = start_xvfb(&out);
    let driver_port = free_port();
    let _driver = Group::spawn(
        Command::new(tool("tauri-driver"))
            .args(["--port", &driver_port.to_string()])
            .args(["--native-port", &free_port().to_string()])
            .env("DISPLAY", &display)
            // Never on the developer's own screen, even on a Wayland desktop.
            .env_remove("WAYLAND_DISPLAY")
            .env("GDK_BACKEND", "x11")
            .env("ENSEMBLE_DATA_DIR", data_dir.path())
            .env("XDG_CONFIG_HOME", config_home.path())
            .env_remove("ENSEMBLE_CONFIG")
            // The app's LAN side: loopback only, never the real interfaces.
            .env("ENSEMBLE_LAN_BIND", "127.0.0.1:0")
            .env("ENSEMBLE_MDNS_INTERFACES", "lo")
            .stdout(Stdio::null())
            .stderr(File::create(out.join("driver.log")).unwrap()),
    );
    let driver = WebDriver::connect(driver_port);

    let started = Instant::now();
    let session = driver.new_session(APP);
    let host = session.wait_for_host_page();
    let loaded = started.elapsed();
    session.wait_until(
        "the UI to be live",
        "return document.querySelector('[data-status]')?.dataset.status === 'live'",
    );
    println!(
        "desktop: window showing {host}/ {} ms after launch, the UI live after {} ms",
        loaded.as_millis(),
        started.elapsed().as_millis()
    );

    // The page runs in the host's origin: its own fetch reaches the host.
    let health = session.execute_async(
        "const done = arguments[arguments.length - 1];
         fetch('/health').then(r => r.text()).then(done, e => done('fetch failed: ' + e));",
        json!([]),
    );
    assert_eq!(health, json!("ok\n"), "the page's fetch of /health");
    assert!(
        data_dir.path().join("ensemble.db").exists(),
        "the embedded host keeps its data in ENSEMBLE_DATA_DIR"
    );

    // No IPC: the page may not call into the app, not even Tauri's core.
    let ipc = session.execute_async(
        "const done = arguments[arguments.length - 1];
         const ipc = window.__TAURI_INTERNALS__;
         if (!ipc) { done('no IPC'); return; }
         ipc.invoke('plugin:app|version').then(v => done('allowed: ' + v), e => done('refused: ' + e));",
        json!([]),
    );
    let ipc = ipc.as_str().unwrap_or_default();
    println!("desktop: IPC from the page: {ipc}");
    assert!(
        ipc == "no IPC" || ipc.starts_with("refused"),
        "the page reached the app over IPC: {ipc}"
    );

    check_settings_file(&host, &owner_token(data_dir.path()));
    check_ui(&session, &out);
    check_lan_join(&session, &out);
    let sleeper = spawn_sleeper(&session, &owner_token(data_dir.path()));

    // The app ends on SIGTERM as it does when its window closes (WebDriver
    // cannot close the last window without killing the app): it stops its
    // host, so the port stops answering and the VM's process is killed, not
    // left behind.
    let app = app_pid(data_dir.path());
    nix::sys::signal::kill(app, Signal::SIGTERM).unwrap();
    wait_until_gone(app.as_raw() as u32);
    wait_until_refused(&host);
    wait_until_gone(sleeper);
}

/// The embedded host took its settings from the configuration file: its
/// owner sees the LAN name the file sets.
fn check_settings_file(host: &str, owner_token: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let lan = runtime.block_on(async {
        let url = host.replace("http://", "ws://");
        let vm = ensemble_client::Client::new(url)
            .with_token(owner_token)
            .get_or_create("default")
            .await
            .expect("the owner connects to the app's host");
        vm.call("getLan", json!([{"browse": false}]))
            .await
            .expect("getLan")
    });
    assert_eq!(
        lan["displayName"], "Desk From File",
        "the app's host did not take lan-name from config.toml: {lan}"
    );
}

#[test]
fn a_bad_settings_file_stops_the_app_before_any_window_naming_the_key() {
    let data_dir = tempfile::tempdir().unwrap();
    let config = data_dir.path().join("settings.toml");
    std::fs::write(&config, "lan-bnd = \"127.0.0.1:0\"\n").unwrap();
    // No display at all: the app must stop at its settings, before GTK.
    let out = Command::new(APP)
        .env("ENSEMBLE_DATA_DIR", data_dir.path())
        .env("ENSEMBLE_CONFIG", &config)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the app started with a bad setting");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lan-bnd") && err.contains("settings.toml"),
        "the message names neither the key nor the file: {err}"
    );
}

/// The app's pid: the process running our binary with our data directory.
fn app_pid(data_dir: &Path) -> Pid {
    let app = std::fs::canonicalize(APP).unwrap();
    let marker = format!("ENSEMBLE_DATA_DIR={}", data_dir.display()).into_bytes();
    let found: Vec<Pid> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let exe = std::fs::read_link(entry.path().join("exe")).ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let ours = exe == app && environ.split(|b| *b == 0).any(|v| v == marker);
            ours.then(|| Pid::from_raw(pid))
        })
        .collect();
    assert_eq!(found.len(), 1, "one app process: {found:?}");
    found[0]
}

/// The owner token the host writes to its data directory; the UI takes it
/// from the window's URL, then hides it there.
fn owner_token(data_dir: &Path) -> String {
    let token = std::fs::read_to_string(data_dir.join("owner-token"))
        .expect("the host wrote DATA_DIR/owner-token");
    token.trim().to_owned()
}

/// Starts `sleep 120` in a VM over the page's own WebSocket to the host (the
/// way the UI talks to it: same origin, as the owner) and returns its pid.
fn spawn_sleeper(session: &Session, owner_token: &str) -> u32 {
    let answer = session.execute_async(
        "const [token, done] = arguments;
         const hello = {type: 'hello', protocol: 1, key: ['desktop-test'], token};
         const ws = new WebSocket(`ws://${location.host}/v1/ws`);
         ws.onerror = () => done({type: 'error', message: 'the WebSocket failed'});
         // Input needs control, which the owner may always take; actions
         // run concurrently, so spawn waits for takeControl's answer.
         ws.onopen = () => {
           ws.send(JSON.stringify(hello));
           ws.send(JSON.stringify({type: 'action', id: 1, name: 'takeControl'}));
         };
         ws.onmessage = (m) => {
           if (typeof m.data !== 'string') return;
           const msg = JSON.parse(m.data);
           if (msg.type === 'result' && msg.id === 1) {
             ws.send(JSON.stringify({type: 'action', id: 2, name: 'spawn', args: ['sleep', ['120']]}));
           } else if (msg.type === 'error' || msg.id === 2) {
             done(msg);
           }
         };",
        json!([owner_token]),
    );
    assert_eq!(
        answer["type"], "result",
        "spawn over the page's WebSocket: {answer}"
    );
    let pid = answer["value"]["pid"]
        .as_u64()
        .expect("spawn answers a pid");
    u32::try_from(pid).expect("a pid fits u32")
}

/// A process is gone once /proc has no entry for it or it is a zombie.
fn wait_until_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next());
        if matches!(state, None | Some("Z")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} outlived the app: {stat}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a person sees once the UI is live: connected as the owner, and a
/// shell that echoes what they type. Ends with a screenshot, `ui.png`, that
/// must not be a single colour (a blank one means the webview does not
/// paint, a known failure mode of WebKit under Xvfb).
fn check_ui(session: &Session, out: &Path) {
    session.wait_until(
        "the owner in the participants list",
        "return [...document.querySelectorAll('[data-participant]')].some(p =>
           p.textContent.includes('(you)') && p.querySelector('.badge')?.textContent.trim() === 'owner')",
    );
    session.execute(
        "[...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Take control')?.click()",
    );
    session.wait_until(
        "+ Shell to be enabled",
        "const b = document.querySelector('button.open-shell');
         if (b && !b.disabled) { b.click(); return true; }
         return false;",
    );
    session.wait_until(
        "the shell's prompt",
        "return (document.querySelector('.shell .xterm-rows')?.textContent ?? '').trim() !== ''",
    );
    session.execute("document.querySelector('.shell .xterm-helper-textarea').focus()");
    session.type_keys("echo desktop-$((6*7))\u{E007}");
    // The command line shows the expression, only the output shows 42.
    session.wait_until(
        "the shell's output",
        "return (document.querySelector('.shell .xterm-rows')?.textContent ?? '').includes('desktop-42')",
    );
    let shot = session.screenshot(&out.join("ui.png"));
    assert!(shot.width >= 640 && shot.height >= 400, "{shot:?}");
    assert!(
        shot.colours > 1,
        "ui.png is a single colour: the webview painted nothing"
    );
}

/// A headless host shared on the LAN (TLS on 127.0.0.1, announced on `lo`).
struct HeadlessHost {
    _process: Group,
    _data_dir: tempfile::TempDir,
    /// Its loopback listener (`127.0.0.1:PORT`), for its owner's client.
    http: String,
    fingerprint: String,
    owner_token: String,
}

fn start_headless_host(out: &Path) -> HeadlessHost {
    let bin = Path::new(APP).with_file_name("ensemble");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p ensemble` first",
        bin.display()
    );
    let data_dir = tempfile::tempdir().unwrap();
    let mut process = Group::spawn(
        Command::new(&bin)
            .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path())
            .args([
                "--lan",
                "--lan-bind",
                "127.0.0.1:0",
                "--mdns-interfaces",
                "lo",
            ])
            .args(["--lan-name", "Headless"])
            .stdout(Stdio::piped())
            .stderr(File::create(out.join("headless-host.log")).unwrap()),
    );
    let stdout = BufReader::new(process.0.stdout.take().unwrap());
    let (mut http, mut fingerprint) = (None, None);
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("Ensemble host listening on ws://") {
            http = rest.split('/').next().map(str::to_owned);
        }
        if line.starts_with("Sharing on the LAN") {
            fingerprint = line.rsplit(' ').next().map(str::to_owned);
            break;
        }
    }
    let (Some(http), Some(fingerprint)) = (http, fingerprint) else {
        panic!("the headless host did not start sharing (see headless-host.log)");
    };
    assert_eq!(fingerprint.len(), 64, "fingerprint {fingerprint:?}");
    let owner_token = owner_token(data_dir.path());
    HeadlessHost {
        _process: process,
        _data_dir: data_dir,
        http,
        fingerprint,
        owner_token,
    }
}

/// Joining another host from the window: the Nearby panel lists the
/// headless host (told from other hosts on `lo` by its fingerprint), Join
/// shows a verification code equal to the one the headless host's owner
/// sees in `listJoinRequests`; once they approve, the window opens the
/// host's VM through the app's relay (a banner says whose host it is) and
/// drives its shell.
fn check_lan_join(session: &Session, out: &Path) {
    let other = start_headless_host(out);
    // Its owner has the VM open (as their window would): a join request is
    // made in an existing VM, since only the owner creates VMs.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        ensemble_client::Client::new(format!("ws://{}", other.http))
            .with_token(other.owner_token.clone())
            .get_or_create("default")
            .await
            .expect("the owner opens the VM")
    });
    let entry = format!(
        "document.querySelector('[data-nearby-host][data-fingerprint=\"{}\"]')",
        other.fingerprint
    );
    session.execute(
        "[...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Nearby').click()",
    );
    let opened = Instant::now();
    session.wait_until(
        "the headless host in the Nearby list",
        &format!("return !!{entry}"),
    );
    println!(
        "desktop: the headless host listed {} ms after Nearby opened",
        opened.elapsed().as_millis()
    );
    session.screenshot(&out.join("lan-nearby.png"));
    session.execute(&format!(
        "[...{entry}.querySelectorAll('button')].find(b => b.textContent.trim() === 'Join').click()"
    ));
    let code_js = "return document.querySelector('[data-lan-panel] [data-verification-code]')?.dataset.verificationCode ?? null";
    session.wait_until(
        "the verification code in the window",
        "return !!document.querySelector('[data-lan-panel] [data-verification-code]')",
    );
    let code = session.execute(code_js);
    let code = code.as_str().expect("a code").to_owned();
    assert!(
        code.len() == 7 && code.as_bytes()[3] == b' ',
        "code {code:?}"
    );
    session.screenshot(&out.join("lan-code.png"));

    // The headless host's owner sees the request with the same code and
    // approves it.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = ensemble_client::Client::new(format!("ws://{}", other.http))
            .with_token(other.owner_token.clone());
        let vm = client
            .get_or_create("default")
            .await
            .expect("owner connects");
        let deadline = Instant::now() + STEP_TIMEOUT;
        let request = loop {
            let list = vm
                .call("listJoinRequests", json!([]))
                .await
                .expect("listJoinRequests");
            if let Some(r) = list.as_array().and_then(|l| l.first()) {
                break r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no join request reached the headless host"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            request["code"],
            json!(code),
            "the codes differ: the window shows {code}, the host's owner {request}"
        );
        assert!(
            request["fingerprint"]
                .as_str()
                .is_some_and(|f| f.len() == 64),
            "the request names the app's certificate: {request}"
        );
        println!("desktop: verification code {code} on both sides");
        vm.call(
            "approveJoin",
            json!([request["requestId"], {"role": "collaborator"}]),
        )
        .await
        .expect("approveJoin");
    });

    session.wait_until(
        "the join approved",
        "const b = [...document.querySelectorAll('[data-lan-panel] button')].find(b => b.textContent.trim().startsWith('Open Headless'));
         if (b) { b.click(); return true; }
         return false;",
    );
    session.wait_until(
        "the banner naming the headless host",
        "return (document.querySelector('[data-host-banner]')?.textContent ?? '').includes(\"On Headless's host\")",
    );
    session.wait_until(
        "the peer's VM to be live",
        "return document.querySelector('[data-status]')?.dataset.status === 'live'",
    );
    assert!(
        session
            .execute("return location.search")
            .as_str()
            .is_some_and(|s| s.contains("peer=h")),
        "the window's URL names the peer"
    );
    session.wait_until(
        "control of the peer's VM",
        "const b = [...document.querySelectorAll('.control button')].find(b => b.textContent.trim() === 'Take control');
         if (b) b.click();
         return (document.querySelector('.control')?.textContent ?? '').includes('you are driving');",
    );
    session.wait_until(
        "+ Shell on the peer's VM",
        "const b = document.querySelector('button.open-shell');
         if (b && !b.disabled) { b.click(); return true; }
         return false;",
    );
    session.wait_until(
        "the peer shell's prompt",
        "return (document.querySelector('.shell .xterm-rows')?.textContent ?? '').trim() !== ''",
    );
    session.execute("document.querySelector('.shell .xterm-helper-textarea').focus()");
    session.type_keys("echo relayed-$((6*7))\u{E007}");
    session.wait_until(
        "the peer shell's output",
        "return (document.querySelector('.shell .xterm-rows')?.textContent ?? '').includes('relayed-42')",
    );
    let shot = session.screenshot(&out.join("lan-peer-shell.png"));
    assert!(shot.colours > 1, "lan-peer-shell.png is a single colour");
}

/// Where screenshots and logs go: target/desktop-test-output/.
fn output_dir() -> PathBuf {
    let target = Path::new(APP)
        .ancestors()
        .nth(2)
        .expect("the app binary lives in target/<profile>/");
    let dir = target.join("desktop-test-output");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tool scripts/setup.sh installs, or a clear failure naming it.
fn tool(name: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(found, "{name} is not installed: run scripts/setup.sh");
    name.to_owned()
}

/// Xvfb on a display number it picks itself (no race with other X servers),
/// without TCP.
fn start_xvfb(out: &Path) -> (Group, String) {
    let mut xvfb = Group::spawn(
        Command::new(tool("Xvfb"))
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                "1280x800x24",
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::piped())
            .stderr(File::create(out.join("xvfb.log")).unwrap()),
    );
    let stdout = xvfb.0.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let number: u32 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("Xvfb did not start (see xvfb.log): {line:?}"));
    (xvfb, format!(":{number}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// After the window closes the app stops its host: the port stops answering.
fn wait_until_refused(host: &str) {
    let addr = host.trim_start_matches("http://");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the host at {addr} still answers after the window closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child in its own process group; dropping it ends the group (TERM, then
/// KILL), so nothing outlives the test, whichever way it ends.
struct Group(Child);

impl Group {
    fn spawn(command: &mut Command) -> Group {
        use std::os::unix::process::CommandExt;
        Group(command.process_group(0).spawn().unwrap())
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = Pid::from_raw(self.0.id() as i32);
        let _ = killpg(pgid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// The few WebDriver commands this test needs, as plain HTTP.
struct WebDriver {
    base: String,
    agent: ureq::Agent,
}

struct Session<'a> {
    driver: &'a WebDriver,
    id: String,
}

#[derive(Debug)]
struct Screenshot {
    width: u32,
    height: u32,
    /// Distinct colours, counted up to 2 (enough to tell blank from not).
    colours: usize,
}

impl WebDriver {
    fn connect(port: u16) -> WebDriver {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(START_TIMEOUT))
            .build()
            .into();
        let driver = WebDriver {
            base: format!("http://127.0.0.1:{port}"),
            agent,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut r) = driver.agent.get(format!("{}/status", driver.base)).call() {
                if r.status() == 200 && r.body_mut().read_json::<Value>().is_ok() {
                    return driver;
                }
            }
            assert!(
                Instant::now() < deadline,
                "tauri-driver did not answer (see driver.log)"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn send(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self.agent.post(&url).send_json(body.unwrap_or(json!({}))),
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status();
        let value: Value = response
            .body_mut()
            .read_json()
            .unwrap_or_else(|e| panic!("{method} {path}: answer is not JSON: {e}"));
        assert!(status == 200, "{method} {path}: {status} {value}");
        value["value"].clone()
    }

    fn new_session(&self, app: &str) -> Session<'_> {
        let value = self.send(
            "POST",
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {"tauri:options": {"application": app}}}})),
        );
        let id = value["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {value}"))
            .to_owned();
        Session { driver: self, id }
    }
}

impl Session<'_> {
    fn path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.id)
    }

    fn execute(&self, script: &str) -> Value {
        self.driver.send(
            "POST",
            &self.path("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Runs `script` with `args` followed by the callback it must call.
    fn execute_async(&self, script: &str, args: Value) -> Value {
        self.driver.send(
            "POST",
            &self.path("/execute/async"),
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Polls `script` until it returns true.
    fn wait_until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        while self.execute(script) != json!(true) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `text` into the focused element as key presses (WebDriver
    /// key codes such as U+E007, Enter, allowed).
    fn type_keys(&self, text: &str) {
        let actions: Vec<Value> = text
            .chars()
            .flat_map(|c| {
                let key = c.to_string();
                [
                    json!({"type": "keyDown", "value": key}),
                    json!({"type": "keyUp", "value": key}),
                ]
            })
            .collect();
        self.driver.send(
            "POST",
            &self.path("/actions"),
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        );
    }

    /// Waits until the window shows a loaded page from the embedded host,
    /// `http://127.0.0.1:PORT/` whatever its fragment, and returns its origin.
    fn wait_for_host_page(&self) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let url = self.driver.send("GET", &self.path("/url"), None);
            let url = url.as_str().unwrap_or_default();
            if let Some(rest) = url.strip_prefix("http://127.0.0.1:") {
                let (port, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                let path = path.split('#').next().unwrap_or_default();
                assert_eq!(path, "/", "the window opens on the UI's root: {url}");
                if self.execute("return document.readyState") == json!("complete") {
                    let port: u16 = port.parse().unwrap_or_else(|_| panic!("bad port in {url}"));
                    return format!("http://127.0.0.1:{port}");
                }
            }
            assert!(
                Instant::now() < deadline,
                "the window never showed the host's page (last URL {url:?})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Saves a screenshot of the window to `path` and describes it.
    fn screenshot(&self, path: &Path) -> Screenshot {
        let encoded = self.driver.send("GET", &self.path("/screenshot"), None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())
            .expect("the screenshot is base64");
        std::fs::write(path, &bytes).unwrap();
        let mut decoder = png::Decoder::new(Cursor::new(&bytes));
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info().expect("the screenshot is a PNG");
        let mut pixels = vec![0; reader.output_buffer_size().expect("a sane PNG size")];
        let frame = reader.next_frame(&mut pixels).expect("the PNG decodes");
        let channels = frame.color_type.samples();
        let pixels = &pixels[..frame.buffer_size()];
        let first = &pixels[..channels];
        let colours = if pixels.chunks(channels).all(|p| p == first) {
            1
        } else {
            2
        };
        Screenshot {
            width: frame.width,
            height: frame.height,
            colours,
        }
    }
}
