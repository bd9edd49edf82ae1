#!/usr/bin/env bash
# Installs what building and testing Ensemble needs on Debian 12, and only
# what is missing: a second run does nothing. Used by `make test`/`make run`.
set -euo pipefail

# Debian packages: a C toolchain for SQLite (bundled), tmux for the
# benchmark's reference figures, Chromium for the browser test, what Tauri 2
# builds against (WebKitGTK and friends), Xvfb for running the window
# headless, WebKitWebDriver for driving it in the desktop test, and
# iproute2 for the LAN test's network namespaces, asciinema, which
# checks the recordings `ensemble export` writes, bubblewrap, the sandbox
# every VM's processes run in (docs/sandbox.md), libdbus-1-dev for the
# keyring crate (Secret Service), gnome-keyring (with dbus-daemon) for
# scripts/keyring-test.sh, which saves an agent key in a real keyring, and
# groff-base, which renders the manual pages in tests/cli.rs.
packages=(build-essential pkg-config ca-certificates tmux chromium iproute2 asciinema bubblewrap
  libdbus-1-dev gnome-keyring dbus-daemon groff-base
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

# The web UI (ui/): Node.js 20.19 or newer (Vite 8), and its packages from
# package-lock.json, installed again whenever the lock file changed. They
# include the Tauri CLI (@tauri-apps/cli, a prebuilt binary) that `make
# package` bundles the desktop app with.
if ! command -v node >/dev/null 2>&1 || ! node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)'; then
  echo "setup: the web UI needs Node.js 20.19 or newer with npm (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi
ui="$(dirname "$0")/../ui"
if [ ! -f "$ui/node_modules/.package-lock.json" ] || [ "$ui/package-lock.json" -nt "$ui/node_modules/.package-lock.json" ]; then
  echo "setup: npm ci in ui/"
  (cd "$ui" && npm ci --no-audit --no-fund)
fi

# Real ACP agents the tests start (tests/real_agents.rs), pinned by
# tests/agents/package-lock.json so that no test downloads anything. The
# claude package asks for Node 22 but runs on 20: its engine warning is
# expected.
agents="$(dirname "$0")/../tests/agents"
if [ ! -f "$agents/node_modules/.package-lock.json" ] || [ "$agents/package-lock.json" -nt "$agents/node_modules/.package-lock.json" ]; then
  echo "setup: npm ci in tests/agents/"
  (cd "$agents" && npm ci --no-audit --no-fund)
fi

# tauri-driver relays WebDriver sessions to WebKitWebDriver for the desktop
# test; it ships as a crate.
if ! command -v tauri-driver >/dev/null 2>&1; then
  echo "setup: installing tauri-driver"
  cargo install tauri-driver --locked
fi
