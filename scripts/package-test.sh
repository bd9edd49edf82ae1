#!/usr/bin/env bash
# The Debian package installs, runs and goes away cleanly, on this machine:
# dpkg -i (as root), then what it installed (`ensemble --version`,
# `ensemble-desktop --version`, the manual page, the desktop entry and icons,
# and a host from /usr/bin running a turn of the scripted agent it finds
# beside itself), then dpkg -P, after which none of its files may be left.
# Usage: scripts/package-test.sh path/to/Ensemble_VERSION_ARCH.deb
set -euo pipefail

deb="${1:?usage: $0 PACKAGE.deb}"
[ -f "$deb" ] || { echo "package-test: no such package: $deb" >&2; exit 1; }
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
name="$(dpkg-deb --field "$deb" Package)"
version="$(dpkg-deb --field "$deb" Version)"

# Never replace (and then purge) an installation that was here before.
if dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q "installed"; then
  echo "package-test: $name is already installed here; remove it first (dpkg -P $name)" >&2
  exit 1
fi

work="$(mktemp -d)"
serve_pid=""
cleanup() {
  local status=$?
  if [ -n "$serve_pid" ]; then
    kill "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
  fi
  # Whatever happened, the machine is left without the package.
  if dpkg-query -W "$name" >/dev/null 2>&1; then $sudo dpkg -P "$name" >/dev/null || true; fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

fail() { echo "package-test: $*" >&2; exit 1; }

echo "package-test: installing $deb"
$sudo dpkg -i "$deb"
dpkg-query -L "$name" >"$work/files"

# The three programs, on PATH.
[ "$(ensemble --version)" = "ensemble $version" ] || fail "ensemble --version: $(ensemble --version)"
[ "$(ensemble-desktop --version)" = "ensemble-desktop $version" ] ||
  fail "ensemble-desktop --version: $(ensemble-desktop --version)"
[ "$(command -v ensemble-scripted-agent)" = /usr/bin/ensemble-scripted-agent ] ||
  fail "ensemble-scripted-agent is not in /usr/bin"

# The manual pages, found by man itself.
MANPAGER=cat MANWIDTH=80 man ensemble 2>/dev/null | grep -q "ensemble-attach(1)" ||
  fail "man ensemble does not list ensemble-attach(1)"
MANPAGER=cat man ensemble-serve 2>/dev/null | grep -q -- "--lan-bind" || fail "man ensemble-serve"

# The desktop entry starts the app, with its icon installed.
entry=/usr/share/applications/Ensemble.desktop
[ -f "$entry" ] || fail "no desktop entry $entry"
grep -qx "Exec=ensemble-desktop" "$entry" || fail "$entry does not start ensemble-desktop"
icon="$(sed -n 's/^Icon=//p' "$entry")"
for size in 32x32 128x128 512x512; do
  [ -f "/usr/share/icons/hicolor/$size/apps/$icon.png" ] || fail "no $size icon $icon"
done

# The installed host finds the installed scripted agent beside it: a turn
# of `ensemble prompt` answers, in the VM's sandbox. Loopback only, data in
# a temporary directory.
ensemble serve --bind 127.0.0.1:0 --data-dir "$work/data" >"$work/serve.out" 2>"$work/serve.err" &
serve_pid=$!
url=""
for _ in $(seq 100); do
  # (The file may not exist yet: the shell creates it when serve starts.)
  url="$(sed -n 's|^Ensemble host listening on \(ws://127\.0\.0\.1:[0-9]*\)/.*|\1|p' "$work/serve.out" 2>/dev/null || true)"
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || fail "the installed host did not start: $(cat "$work/serve.err")"
answer="$(timeout 60 ensemble prompt --url "$url" --data-dir "$work/data" --key pkg --agent scripted "say hello from the package" 2>"$work/prompt.err")" ||
  fail "ensemble prompt with the scripted agent failed: $(cat "$work/prompt.err")"
[ "$answer" = "hello from the package" ] || fail "the scripted agent answered ${answer@Q}: $(cat "$work/prompt.err")"
kill "$serve_pid"
wait "$serve_pid" || fail "the installed host did not stop cleanly: $(cat "$work/serve.err")"
serve_pid=""

echo "package-test: removing $name"
$sudo dpkg -P "$name"
if dpkg-query -W "$name" >/dev/null 2>&1; then fail "$name is still known to dpkg after dpkg -P"; fi
# Every file the package installed is gone (directories shared with other
# packages, /usr/bin and the like, stay).
left=0
while read -r path; do
  if [ -e "$path" ] && [ ! -d "$path" ]; then
    echo "package-test: left behind: $path" >&2
    left=1
  fi
done <"$work/files"
[ "$left" -eq 0 ] || fail "files were left behind after dpkg -P"
echo "package-test: $name $version installed, ran and was removed cleanly"
