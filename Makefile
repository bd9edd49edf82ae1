# `make run` starts Ensemble, `make test` runs every check and test,
# `make bench` prints the performance figures.
CARGO ?= cargo

.PHONY: all setup ui ui-check run serve test lint unit browser bench clean

all: test

setup:
	@./scripts/setup.sh

# The web UI (ui/dist), which the host embeds: built before any cargo build
# that should serve it.
ui: setup
	cd ui && npm run build

# svelte-check + tsc, then the Vitest unit tests.
ui-check: setup
	cd ui && npm run check && npm test

# Until the desktop window lands, `make run` starts the headless host on
# 127.0.0.1:6420; open http://127.0.0.1:6420/ for the UI.
run: ui
	$(CARGO) run --release -p ensemble -- serve

serve: run

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: setup
	$(CARGO) test --workspace --all-targets

# Two Chromium pages against the real host (ui/e2e/multiplayer.mjs).
browser: ui
	$(CARGO) build -p ensemble -p ensemble-scripted-agent
	cd ui && node e2e/multiplayer.mjs

# The UI is checked and built first: the host embeds the build.
test: ui-check ui lint unit browser

bench: setup
	$(CARGO) build --release -p ensemble -p ensemble-bench
	./target/release/ensemble-bench

clean:
	$(CARGO) clean
