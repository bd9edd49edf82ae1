#!/usr/bin/env bash
# Runs tests/keys.rs against a real Secret Service: a private D-Bus session
# (dbus-run-session) with gnome-keyring-daemon unlocked by a throwaway
# password, so `saveAgentKey` -> `createSession {useSavedKey}` -> the
# scripted agent seeing ANTHROPIC_API_KEY is tested end to end, by the host
# test and in Chromium (ui/e2e/keys.mjs; ui/dist must be built). Nothing
# touches the user's own keyring: the daemon keeps its files in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in dbus-run-session gnome-keyring-daemon; do
  command -v "$tool" >/dev/null || { echo "keyring-test: $tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done
cargo build -p ensemble -p ensemble-scripted-agent
home="$(mktemp -d)"
trap 'rm -rf "$home"' EXIT
XDG_DATA_HOME="$home/.local/share" XDG_RUNTIME_DIR="$home" \
  dbus-run-session -- sh -c '
    printf ensemble-test | gnome-keyring-daemon --unlock --components=secrets >/dev/null
    export ENSEMBLE_TEST_KEYRING=1
    cargo test -p ensemble --test keys
    cd ui && node e2e/keys.mjs'
