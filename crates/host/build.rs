//! Rebuilds the host when the web UI build (`ui/dist`, embedded by
//! `src/ui.rs`) changes, including when it appears for the first time.
fn main() {
    let dist = std::path::Path::new("../../ui/dist");
    if dist.exists() {
        println!("cargo:rerun-if-changed=../../ui/dist");
    } else {
        // `ui/` gains a `dist` entry when the UI is first built.
        println!("cargo:rerun-if-changed=../../ui");
    }
}
