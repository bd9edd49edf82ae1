//! Tauri's build step. tauri-build reads tauri.conf.json (and the icons it
//! names) from the current directory, and in this repository they live at
//! the root, one level above this crate.
use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let root = manifest_dir.join("..");
    println!("cargo:rerun-if-changed=../tauri.conf.json");
    println!("cargo:rerun-if-changed=../icons");
    std::env::set_current_dir(&root).expect("the repository root is readable");
    tauri_build::build();
}
