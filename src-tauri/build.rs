//! Tauri's build step: tauri-build reads tauri.conf.json, next to this
//! crate's Cargo.toml where the Tauri CLI (`make package`) also looks for
//! it, and the icons it names (in the repository's icons/).

fn main() {
    println!("cargo:rerun-if-changed=../icons");
    // The app grants the page no capabilities and has no capabilities/
    // directory. By default tauri-build watches that missing directory, and
    // cargo counts a missing watched path as changed on every build, which
    // rebuilt and relinked the app each time; naming the pattern ourselves
    // turns that watch off (no directory: nothing to watch).
    let attributes =
        tauri_build::Attributes::new().capabilities_path_pattern("./capabilities/**/*");
    if let Err(e) = tauri_build::try_build(attributes) {
        panic!("tauri-build: {e:#}");
    }
}
