#!/usr/bin/env bash
# Self-test of scripts/deps.sh's libclang detection against directory layouts of real machines.
# A loose glob once took Debian's libclang-cpp.so.14 (the image's only clang library, which
# bindgen cannot load) for libclang, so `make run` failed on a fresh machine.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0

# layout NAME EXPECTED FILE...: files created under a fresh root; EXPECTED is present|missing.
layout() {
	local name="$1" expected="$2" root="$work/$1" got
	shift 2
	mkdir -p "$root/usr/lib"
	local f
	for f in "$@"; do
		mkdir -p "$root/$(dirname "$f")"
		: >"$root/$f"
	done
	if LIBCLANG_PATH="" "$here/deps.sh" --check --root "$root" >/dev/null; then got=present; else got=missing; fi
	if [ "$got" = "$expected" ]; then
		echo "ok   $name: $got"
	else
		echo "FAIL $name: expected $expected, got $got"
		failures=$((failures + 1))
	fi
}

layout bookworm-image missing usr/lib/llvm-14/lib/libclang-cpp.so.14 usr/lib/x86_64-linux-gnu/libclang-cpp.so.14
layout static-only missing usr/lib/llvm-14/lib/libclangAST.a usr/lib/llvm-14/lib/libclangBasic.a
layout empty missing
headers=usr/lib/llvm-14/lib/clang/14.0.6/include/stddef.h
layout libclang-dev present usr/lib/llvm-14/lib/libclang-cpp.so.14 usr/lib/llvm-14/lib/libclang.so \
	usr/lib/llvm-14/lib/libclang-14.so.1 usr/lib/x86_64-linux-gnu/libclang-14.so.1 "$headers"
layout library-without-headers missing usr/lib/x86_64-linux-gnu/libclang-14.so.1
layout libclang1-and-headers present usr/lib/x86_64-linux-gnu/libclang-14.so.1 "$headers"
layout versioned-so present usr/lib/x86_64-linux-gnu/libclang-14.so.14.0.6 "$headers"
layout local-llvm present usr/local/llvm-17/lib/libclang.so usr/local/llvm-17/lib/clang/17/include/stddef.h

if [ "$failures" -gt 0 ]; then
	echo "deps detection: $failures layout(s) wrong"
	exit 1
fi
echo "deps detection: all layouts right"
