//! Every target runs for a moment as part of `cargo test`, so that the
//! harness cannot rot between `make fuzz` runs; `make fuzz` runs them long.

use std::time::Duration;

#[test]
fn every_target_runs_without_a_crash() {
    for target in ensemble_fuzz::TARGETS {
        let report = (target.run)(42, Duration::from_millis(500));
        assert!(report.execs > 0, "{} ran no input", target.name);
        assert!(
            report.crashes.is_empty(),
            "{} crashed on {:?}",
            target.name,
            report
                .crashes
                .iter()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
        );
    }
    assert!(
        ensemble_fuzz::acp_lines::handled() > 0,
        "no ACP line reached a handler"
    );
}
