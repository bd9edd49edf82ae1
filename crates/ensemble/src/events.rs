//! `ensemble events`: a VM's log as JSON Lines on stdout, one event per
//! line in seq order (binary events in their JSON view), gap-free; with
//! `--follow` it goes on with live events and resumes across disconnects.

use std::collections::HashSet;
use std::io::Write;

use anyhow::Context;
use ensemble_client::Event;
use ensemble_protocol::frame::encode_event_frame;

use crate::remote::Remote;

#[derive(clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    remote: Remote,
    /// Print events after this seq (0: the whole history still in the log).
    #[arg(long, default_value_t = 0)]
    since: u64,
    /// Keep printing live events (until interrupted), reconnecting as needed.
    #[arg(long, short)]
    follow: bool,
    /// Only these event names, comma-separated (for example
    /// `sessionEvent,controlChanged`).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    only: Vec<String>,
}

/// One event as a JSON line, the shape `getEvents` and hooks use.
pub fn json_line(event: &Event) -> String {
    match event {
        Event::Json(f) => encode_event_frame(f.seq, f.ts, &f.name, &f.data.to_string()),
        Event::Bytes { header, payload } => encode_event_frame(
            header.seq,
            header.ts,
            header.kind.event_name(),
            &header.json_data(payload).to_string(),
        ),
    }
}

pub async fn run(args: EventsArgs) -> anyhow::Result<()> {
    let only: HashSet<String> = args.only.into_iter().collect();
    let (vm, mut events) = args.remote.open_with_events(Some(args.since)).await?;
    let head = if args.follow {
        u64::MAX
    } else {
        vm.caught_up()
            .await
            .context("the host closed the connection")?
    };
    let mut out = std::io::stdout().lock();
    let mut last = args.since;
    while last < head {
        let Some(event) = events.recv().await else {
            break;
        };
        last = event.seq();
        if only.is_empty() || only.contains(event.name()) {
            if writeln!(out, "{}", json_line(&event)).is_err() {
                // The reader went away (`| head`): that is not an error.
                return Ok(());
            }
            if args.follow {
                let _ = out.flush();
            }
        }
    }
    Ok(())
}
