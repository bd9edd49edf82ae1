//! Ensemble's desktop app, a thin Tauri shell: it starts the embedded host
//! ([`embedded`]), opens one window on the host's UI as the owner, and stops
//! the host cleanly when the app exits (window closed, SIGINT or SIGTERM).
//!
//! The webview gets no IPC (no capabilities are granted): the UI talks to the
//! host over WebSocket exactly as it does in a browser, so the app and
//! `ensemble serve` show the same UI.
#![forbid(unsafe_code)]

mod embedded;

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use embedded::EmbeddedHost;
use tauri::webview::PageLoadEvent;
use tauri::{WebviewUrl, WebviewWindowBuilder};

/// What `ensemble-desktop --help` prints: the app has no options of its own;
/// its settings come from the configuration file and the environment.
const USAGE: &str = "Usage: ensemble-desktop [--version | --help]

Opens Ensemble's window on its own host (on 127.0.0.1). Settings: the file
ensemble serve reads ($ENSEMBLE_CONFIG, else ~/.config/ensemble/config.toml),
then ENSEMBLE_DATA_DIR, ENSEMBLE_LAN_BIND, ENSEMBLE_MDNS_INTERFACES,
ENSEMBLE_ISOLATION and ENSEMBLE_VM_NETWORK over it. `ensemble --help` for the
command line.
";

fn main() -> ExitCode {
    // The only arguments: enough for a package manager or a user to check
    // what is installed without opening a window.
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("--version" | "-V") => {
            println!("ensemble-desktop {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some("--help" | "-h") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprint!("ensemble-desktop: unexpected argument {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(ensemble_host::QUIET_LOG_TARGETS.iter().fold(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
            |f, d| f.add_directive(d.parse().expect("a valid directive")),
        ))
        .with_writer(std::io::stderr)
        .init();
    match run() {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ensemble-desktop: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<i32> {
    let started = Instant::now();
    // The settings of `ensemble serve`, from the same file, with the
    // environment in place of its flags; the same data directory, so both
    // open the same VMs.
    let (settings, file) = ensemble::settings::desktop()?;
    if let Some(file) = &file {
        tracing::info!(file = %file.display(), "settings read");
    }
    let data_dir = match settings.data_dir.clone() {
        Some(dir) => dir,
        None => ensemble_host::store::default_data_dir()
            .context("no data directory known for this user; set ENSEMBLE_DATA_DIR")?,
    };
    let config = settings.host_config(&data_dir)?;
    // The host runs on its own runtime so that it outlives Tauri's event loop
    // and can be stopped after the window is gone.
    let runtime = ensemble_host::runtime().context("cannot start the async runtime")?;
    let host = runtime.block_on(EmbeddedHost::start(config))?;
    let url = host.owner_url();
    let origin = url.origin();

    let app = tauri::Builder::default()
        .setup(move |app| {
            WebviewWindowBuilder::new(app, "main", WebviewUrl::External(url))
                .title("Ensemble")
                .inner_size(1280.0, 800.0)
                .min_inner_size(640.0, 400.0)
                // The window shows the host's UI and nothing else.
                .on_navigation(move |to| to.origin() == origin)
                .on_page_load(move |_, page| {
                    if page.event() == PageLoadEvent::Finished {
                        // The path only: the fragment holds the owner token.
                        tracing::info!(
                            path = page.url().path(),
                            ms = started.elapsed().as_millis() as u64,
                            "page loaded"
                        );
                    }
                })
                .build()?;
            Ok(())
        })
        .build(tauri::generate_context!())
        .context("cannot start the window")?;

    // A signal ends the app the way closing its window does.
    let handle = app.handle().clone();
    runtime.spawn(async move {
        ensemble_host::shutdown_signal().await;
        handle.exit(0);
    });
    let code = app.run_return(|_, _| {});
    runtime.block_on(host.stop());
    Ok(code)
}
