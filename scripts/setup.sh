#!/usr/bin/env bash
# Installs what building and testing Ensemble needs on Debian 12, and only
# what is missing: a second run does nothing. Used by `make test`/`make run`.
set -euo pipefail

# Debian packages: a C toolchain for SQLite (bundled), tmux for the
# benchmark's reference figures, what Tauri 2 builds against (WebKitGTK and
# friends), Xvfb for running the window headless, and WebKitWebDriver for
# driving it in the desktop test.
packages=(build-essential pkg-config ca-certificates tmux
  libssl-dev libwebkit2gtk-4.1-dev libayatana-appindicator3-dev librsvg2-dev libxdo-dev
  xvfb xauth webkit2gtk-driver)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust with rustup (https://rustup.rs) and run again" >&2
  exit 1
fi
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    echo "setup: adding rustup component $component"
    rustup component add "$component"
  fi
done

# tauri-driver relays WebDriver sessions to WebKitWebDriver for the desktop
# test; it ships as a crate.
if ! command -v tauri-driver >/dev/null 2>&1; then
  echo "setup: installing tauri-driver"
  cargo install tauri-driver --locked
fi
