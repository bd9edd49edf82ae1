# `make run` starts Ensemble, `make test` runs every check and test,
# `make bench` prints the performance figures.
CARGO ?= cargo

.PHONY: all setup run serve test lint unit bench clean

all: test

setup:
	@./scripts/setup.sh

# The desktop window arrives with the UI (issue "The desktop app and the web
# UI"); until then `make run` starts the headless host on 127.0.0.1:6420.
run: setup
	$(CARGO) run --release -p ensemble -- serve

serve: run

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: setup
	$(CARGO) test --workspace --all-targets

test: lint unit

bench: setup
	$(CARGO) build --release -p ensemble -p ensemble-bench
	./target/release/ensemble-bench

clean:
	$(CARGO) clean
