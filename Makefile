# The two set-up commands of README.md: `make run` and `make test`. Both build the same (dev)
# profile, so RocksDB's C++ is compiled once for both, and both first install the system
# packages the build needs when they are missing (scripts/deps.sh).

CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR

# Arguments for `tim serve` given to `make run`, e.g. make run ARGS="--listen 127.0.0.1:20003".
ARGS ?=

.PHONY: run test deps deps-test build check

deps:
	@scripts/deps.sh

# The detection itself, against directory layouts of machines with and without libclang.
deps-test:
	@scripts/deps_test.sh

build: deps
	cargo build --bin tim

run: build
	$(CARGO_TARGET_DIR)/debug/tim serve $(ARGS)

# The tests also drive a headless Chromium (the chat page and the console), cut links between
# nodes with nftables and step a node's clock with libfaketime.
test: deps
	@scripts/deps.sh --tests
	cargo test --workspace --all-targets

check: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
