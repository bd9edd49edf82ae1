# `make run` starts the Ensemble desktop app, `make test` runs every check
# and test (the desktop one under Xvfb),
# `make bench` prints the performance figures.
CARGO ?= cargo

.PHONY: all setup run serve test lint unit bench clean

all: test

setup:
	@./scripts/setup.sh

# `make run` opens the desktop app, which starts its own host. It needs a
# display; `make run XVFB=1` runs it under Xvfb instead (nothing to see, but
# it starts and serves). `make serve` runs the headless host on
# 127.0.0.1:6420.
run: setup
	@if [ -z "$$DISPLAY$$WAYLAND_DISPLAY" ] && [ -z "$(XVFB)" ]; then \
	  echo "make run: no display (DISPLAY and WAYLAND_DISPLAY are unset), so no window can open." >&2; \
	  echo "  make serve        runs the headless host instead" >&2; \
	  echo "  make run XVFB=1   runs the app under Xvfb (an invisible window)" >&2; \
	  exit 1; \
	fi
	$(if $(XVFB),xvfb-run -a -s "-screen 0 1280x800x24 -nolisten tcp") $(CARGO) run --release -p ensemble-desktop

serve: setup
	$(CARGO) run --release -p ensemble -- serve

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
