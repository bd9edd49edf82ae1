//! Tauri's build step: tauri-build reads tauri.conf.json, next to this
//! crate's Cargo.toml where the Tauri CLI (`make package`) also looks for
//! it, and the icons it names (in the repository's icons/).

fn main() {
    println!("cargo:rerun-if-changed=../icons");
    tauri_build::build();
}
