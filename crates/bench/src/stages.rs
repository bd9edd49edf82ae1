//! What a run cost the host's log, stage by stage, all on its writer
//! thread: commits, WAL checkpoints (with their fsyncs), pruning past the
//! output budget. Read with the test action `getLogStats` before and after a run;
//! the difference is printed beside the run's time, so that a slow run shows
//! which stage it waited on.

use std::fmt;

use anyhow::Result;
use serde_json::{json, Value};

use crate::client;
use crate::host::Target;

/// `getLogStats` of one VM's log; cumulative since the host opened it.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogStats {
    pub commits: u64,
    pub events: u64,
    pub commit_us: u64,
    pub checkpoints: u64,
    pub checkpoint_us: u64,
    pub prunes: u64,
    pub prune_us: u64,
}

impl LogStats {
    /// The stats of VM `key`; `None` when the target refuses the action
    /// (a host without `--test-actions`, a relay to one).
    pub async fn read(host: &impl Target, key: &str) -> Option<LogStats> {
        Self::try_read(host, key).await.ok()
    }

    async fn try_read(host: &impl Target, key: &str) -> Result<LogStats> {
        let mut ws = client::connect(&host.ws_url()).await?;
        client::hello(&mut ws, key, host.token()).await?;
        client::action(&mut ws, 1, "getLogStats", json!([])).await?;
        let v = client::result(&mut ws, 1).await?;
        crate::close_all(vec![ws]).await;
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        Ok(LogStats {
            commits: n("commits"),
            events: n("events"),
            commit_us: n("commitUs"),
            checkpoints: n("checkpoints"),
            checkpoint_us: n("checkpointUs"),
            prunes: n("prunes"),
            prune_us: n("pruneUs"),
        })
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &LogStats) -> LogStats {
        LogStats {
            commits: self.commits.saturating_sub(earlier.commits),
            events: self.events.saturating_sub(earlier.events),
            commit_us: self.commit_us.saturating_sub(earlier.commit_us),
            checkpoints: self.checkpoints.saturating_sub(earlier.checkpoints),
            checkpoint_us: self.checkpoint_us.saturating_sub(earlier.checkpoint_us),
            prunes: self.prunes.saturating_sub(earlier.prunes),
            prune_us: self.prune_us.saturating_sub(earlier.prune_us),
        }
    }
}

/// The stages of a run of `secs` seconds, as shares of it.
pub struct Stages {
    pub log: LogStats,
    pub secs: f64,
}

impl fmt::Display for Stages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.log;
        let share = |us: u64| 100.0 * us as f64 / 1e6 / self.secs.max(1e-9);
        write!(
            f,
            "log writer: {} commits of {:.1} events, {:.0} ms ({:.0} % of the run); checkpoints {} x, {:.0} ms ({:.0} %); prunes {} x, {:.0} ms ({:.0} %)",
            l.commits,
            l.events as f64 / l.commits.max(1) as f64,
            l.commit_us as f64 / 1e3,
            share(l.commit_us),
            l.checkpoints,
            l.checkpoint_us as f64 / 1e3,
            share(l.checkpoint_us),
            l.prunes,
            l.prune_us as f64 / 1e3,
            share(l.prune_us),
        )
    }
}
