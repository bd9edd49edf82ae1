# `make run` starts the Ensemble desktop app, `make test` runs every check
# and test (the desktop one under Xvfb, the Debian package installed and
# removed), `make package` builds that package, `make bench` prints the
# performance figures, `make fuzz` and `make soak` run the fuzzer and the
# soak run (neither is part of `make test`).
CARGO ?= cargo

.PHONY: all setup ui ui-check run serve test lint unit keyring browser package package-test bench fuzz soak clean

all: test

setup:
	@./scripts/setup.sh

# The web UI (ui/dist), which the host embeds: built before any cargo build
# that should serve it, and only when its sources changed (a rebuild
# rewrites ui/dist, which makes cargo rebuild the host).
UI_SOURCES := $(shell find ui/src ui/index.html ui/package-lock.json ui/vite.config.ts ui/svelte.config.js ui/tsconfig.json -type f 2>/dev/null)

ui: setup ui/dist/index.html

ui/dist/index.html: $(UI_SOURCES)
	cd ui && npm run build
	@touch $@

# svelte-check + tsc, then the Vitest unit tests.
ui-check: setup
	cd ui && npm run check && npm test

# `make run` opens the desktop app, which starts its own host. It needs a
# display; `make run XVFB=1` runs it under Xvfb instead (nothing to see, but
# it starts and serves). `make serve` runs the headless host on
# 127.0.0.1:6420 (open the owner URL it prints in a browser).
run: ui
	@if [ -z "$$DISPLAY$$WAYLAND_DISPLAY" ] && [ -z "$(XVFB)" ]; then \
	  echo "make run: no display (DISPLAY and WAYLAND_DISPLAY are unset), so no window can open." >&2; \
	  echo "  make serve        runs the headless host instead" >&2; \
	  echo "  make run XVFB=1   runs the app under Xvfb (an invisible window)" >&2; \
	  exit 1; \
	fi
	$(if $(XVFB),xvfb-run -a -s "-screen 0 1280x800x24 -nolisten tcp") $(CARGO) run --release -p ensemble-desktop

serve: ui
	$(CARGO) run --release -p ensemble -- serve

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: setup
	$(CARGO) test --workspace --all-targets

# Chromium pages against real hosts: three participants of one VM
# (ui/e2e/multiplayer.mjs), and a teammate joining over the LAN through her
# own host's relay (ui/e2e/lan.mjs: two hosts, mDNS on lo only); following
# a session (ui/e2e/follow.mjs: turns, stick to bottom, permission dock,
# toasts and title, focus and shortcuts); the agent picker without a
# keyring (ui/e2e/keys.mjs; `make keyring` runs it with one).
browser: ui
	$(CARGO) build -p ensemble -p ensemble-scripted-agent
	cd ui && node e2e/multiplayer.mjs
	cd ui && node e2e/lan.mjs
	cd ui && node e2e/follow.mjs
	cd ui && node e2e/keys.mjs

# tests/keys.rs again, against a real Secret Service (a private D-Bus session
# with gnome-keyring), and ui/e2e/keys.mjs with its saved-key steps: a key
# saved from the page reaches the agent's env.
keyring: ui
	./scripts/keyring-test.sh

# `make package`: a Debian package of the desktop app, with the `ensemble`
# command, the scripted agent and the manual pages, by Tauri's bundler (the
# Tauri CLI from ui/node_modules, prebuilt by npm; the .deb target needs no
# download). It lands in target/release/bundle/deb/. PACKAGE_PROFILE=debug
# packages the debug build instead (what package-test installs: it reuses
# the build the other tests made, where a release build takes many minutes).
# A release package holds its programs without debug info (a tenth of the
# size). The app is built first and bundled after (`tauri bundle`, which
# compiles nothing), so that it can be stripped in target/ for the bundling
# only and put back after. The command and the app are built by separate
# cargo runs: cargo unifies dependencies' features over the packages of one
# run, and apart they reuse what `make browser`, `make bench` and `make run`
# built instead of compiling another variant of every shared crate.
PACKAGE_PROFILE ?= release
PACKAGE_DIR := target/$(PACKAGE_PROFILE)/bundle/deb
TAURI := ui/node_modules/.bin/tauri
RELEASE := $(filter release,$(PACKAGE_PROFILE))
APP := target/$(PACKAGE_PROFILE)/ensemble-desktop

package: ui
	$(CARGO) build $(if $(RELEASE),--release) -p ensemble -p ensemble-scripted-agent
	$(CARGO) build $(if $(RELEASE),--release) -p ensemble-desktop
	rm -rf target/package && mkdir -p target/package/man
	cp target/$(PACKAGE_PROFILE)/ensemble target/$(PACKAGE_PROFILE)/ensemble-scripted-agent target/package/
	$(if $(RELEASE),strip --strip-debug target/package/ensemble target/package/ensemble-scripted-agent)
	target/package/ensemble man --dir target/package/man
	rm -f $(PACKAGE_DIR)/*.deb
	$(if $(RELEASE),cp -p $(APP) target/package/app-unstripped && strip --strip-debug $(APP))
	$(TAURI) bundle $(if $(RELEASE),,--debug) --bundles deb; status=$$?; \
	  $(if $(RELEASE),mv target/package/app-unstripped $(APP);) exit $$status
	@ls -l $(PACKAGE_DIR)/*.deb

# Installs the package on this machine with dpkg (root), runs what it
# installed, and purges it: scripts/package-test.sh.
package-test:
	$(MAKE) package PACKAGE_PROFILE=debug
	./scripts/package-test.sh target/debug/bundle/deb/*.deb

# The UI is checked and built first: the host embeds the build.
test: ui-check ui lint unit keyring browser package-test

bench: setup
	$(CARGO) build --release -p ensemble -p ensemble-bench -p ensemble-scripted-agent
	./target/release/ensemble-bench

# Fuzzes what the host and the client parse from outside (crates/fuzz):
# clients' text frames, action arguments, binary frames, agents' ACP
# lines; FUZZ_SECS seconds per target, executions and crashes printed
# (docs/testing.md). Not part of `make test`, which runs a short smoke.
FUZZ_SECS ?= 120

fuzz: setup
	$(CARGO) build --release -p ensemble-fuzz
	./target/release/ensemble-fuzz --secs $(FUZZ_SECS)

# An hour (SOAK_SECS) of clients joining, resuming, stalling and leaving
# while shells and a scripted session stream; fails on a gap in a stream or
# on host RSS, fds or threads growing after warm-up (docs/benchmarks.md).
SOAK_SECS ?= 3600

soak: setup
	$(CARGO) build --release -p ensemble -p ensemble-bench -p ensemble-scripted-agent
	./target/release/ensemble-bench soak --secs $(SOAK_SECS)

clean:
	$(CARGO) clean
