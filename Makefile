# The two set-up commands of README.md: `make run` and `make test`.
# Both install the system packages the build needs (Debian: libclang for the rocksdb crate,
# a C++ compiler) when they are missing.

CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR

# Arguments for `tim serve` given to `make run`, e.g. make run ARGS="--listen 127.0.0.1:20003".
ARGS ?=

.PHONY: run test deps build check

deps:
	@if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1; then \
		echo "installing build packages (libclang-dev, g++, make)"; \
		apt-get update -qq && apt-get install -y -qq libclang-dev g++ make; \
	fi

build: deps
	cargo build --release --bin tim

run: build
	$(CARGO_TARGET_DIR)/release/tim serve $(ARGS)

test: deps
	cargo test --workspace --all-targets

check: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
