//! Watches a VM's sandbox limits: when its processes run out of memory or
//! into the process limit, the offenders are killed (by the kernel, or by
//! the sandbox for a fork bomb) and the VM's log gets a `sandboxLimit`
//! event that everyone sees.

use std::sync::Arc;
use std::time::Duration;

use ensemble_sandbox::{LimitHit, VmSandbox};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::log::{Log, NewEvent};

/// How often the counters are read: a fork bomb is stopped within this.
const POLL: Duration = Duration::from_millis(200);

/// Runs until `cancel` (the VM closes).
pub async fn watch(sandbox: Arc<VmSandbox>, log: Log, cancel: CancellationToken) {
    if !sandbox.isolated() {
        return;
    }
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Reads a few sysfs files and may kill: off the async threads.
        let polled = sandbox.clone();
        let Ok(hits) = tokio::task::spawn_blocking(move || polled.poll_limits()).await else {
            return;
        };
        for hit in hits {
            let data = event(&hit);
            tracing::warn!(%data, "a VM hit a sandbox limit");
            let appended = log
                .append(vec![NewEvent::Json {
                    name: "sandboxLimit".to_owned(),
                    data: data.to_string(),
                }])
                .await;
            if let Err(e) = appended {
                tracing::error!(error = %e, "sandboxLimit not logged");
            }
        }
    }
}

/// The event's data: `{limit, max, killed, pid}`.
fn event(hit: &LimitHit) -> serde_json::Value {
    match hit {
        LimitHit::Memory { max_bytes, kills } => json!({
            "limit": "memory", "max": max_bytes, "killed": kills, "pid": null,
        }),
        LimitHit::Pids {
            max,
            pid,
            processes,
        } => json!({
            "limit": "pids", "max": max, "killed": processes, "pid": pid,
        }),
    }
}
