#!/usr/bin/env bash
# What the build needs from the system, checked for real and installed when missing.
#
#   scripts/deps.sh            check; install what is missing (Debian, as root); fail naming it
#   scripts/deps.sh --check    check only: print what is missing, exit 1 if anything is
#   --tests                    also what the tests need: Chromium and chromedriver (the browser
#                              test of the chat page and the console drives them), nftables (the
#                              cluster tests cut links between nodes) and libfaketime (they step
#                              a node's clock)
#   --root DIR                 look for libraries under DIR instead of / (for the self-test)
#
# The rocksdb crate generates its bindings with bindgen, which loads libclang at build time
# (libclang.so, libclang-N.so or a versioned libclang.so.N). Debian images often ship only
# libclang-cpp.so.N (package libclang-cpp14), a different library bindgen cannot use, so a
# loose `libclang*` glob is not a check. RocksDB itself is C++, so a compiler that can build
# a C++ program with the standard library is needed too.
# LIBCLANG_PATH (as clang-sys reads it) is searched first.
set -euo pipefail

check_only=0
tests=0
root=""
while [ $# -gt 0 ]; do
	case "$1" in
	--check) check_only=1 ;;
	--tests) tests=1 ;;
	--root)
		root="${2:?--root needs a directory}"
		shift
		;;
	*)
		echo "deps.sh: unknown argument '$1'" >&2
		exit 2
		;;
	esac
	shift
done

# The directories clang-sys searches on Linux, LIBCLANG_PATH first.
libclang_dirs() {
	if [ -n "${LIBCLANG_PATH:-}" ]; then
		printf '%s\n' "$root$LIBCLANG_PATH"
	fi
	local d
	for d in "$root"/usr/local/llvm*/lib* "$root"/usr/local/lib* "$root"/usr/local/lib*/* \
		"$root"/usr/lib* "$root"/usr/lib*/* "$root"/usr/lib*/*/*; do
		[ -d "$d" ] && printf '%s\n' "$d"
	done
	return 0
}

# libclang.so, libclang.so.1, libclang-14.so, libclang-14.so.1, libclang-14.0.6.so.1;
# never libclang-cpp.so.14 or the static libclang*.a.
is_libclang() {
	[[ "$1" =~ ^libclang(-[0-9]+(\.[0-9]+)*)?\.so(\.[0-9]+)*$ ]]
}

have_libclang() {
	local dir file
	while IFS= read -r dir; do
		for file in "$dir"/libclang*.so*; do
			[ -e "$file" ] && is_libclang "$(basename "$file")" && return 0
		done
	done < <(libclang_dirs)
	return 1
}

# libclang finds its builtin headers (stddef.h, stdint.h: RocksDB's C API includes them) in
# clang's resource directory; Debian ships them apart from the library (libclang-common-N-dev,
# which libclang-dev pulls in), so the library alone is not enough.
have_clang_headers() {
	local h
	for h in "$root"/usr/lib/llvm-*/lib/clang/*/include/stddef.h "$root"/usr/lib/clang/*/include/stddef.h \
		"$root"/usr/local/llvm*/lib/clang/*/include/stddef.h "$root"/usr/local/lib/clang/*/include/stddef.h; do
		[ -e "$h" ] && return 0
	done
	return 1
}

have_cxx() {
	[ -n "$root" ] && return 0 # the self-test checks library layouts only
	local cxx="${CXX:-c++}" out
	command -v "$cxx" >/dev/null 2>&1 || return 1
	out=$(mktemp)
	if printf '#include <string>\nint main() { return std::string("ok").size() == 2 ? 0 : 1; }\n' |
		"$cxx" -x c++ - -o "$out" >/dev/null 2>&1; then
		rm -f "$out"
		return 0
	fi
	rm -f "$out"
	return 1
}

# Where the browser test looks for them (Debian's packages put them there).
have_browser() {
	[ -n "$root" ] && return 0
	[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]
}

# The cluster tests' tools: nft, and the library that fakes a process's wall clock.
have_nft() {
	[ -n "$root" ] && return 0
	command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ]
}

have_faketime() {
	[ -n "$root" ] && return 0
	[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || [ -e /usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1 ]
}

missing() {
	local list=()
	have_libclang || list+=("libclang (libclang.so or libclang-N.so, Debian package libclang-dev)")
	have_clang_headers || list+=("clang's builtin headers (stddef.h, Debian package libclang-common-N-dev)")
	have_cxx || list+=("a C++ compiler with its standard library (${CXX:-c++}, Debian package g++)")
	if [ "$tests" = 1 ] && ! have_browser; then
		list+=("Chromium and chromedriver (/usr/bin/chromium, /usr/bin/chromedriver: Debian packages chromium and chromium-driver)")
	fi
	if [ "$tests" = 1 ] && ! have_nft; then list+=("nft (Debian package nftables)"); fi
	if [ "$tests" = 1 ] && ! have_faketime; then list+=("libfaketime.so.1 (Debian package libfaketime)"); fi
	if [ ${#list[@]} -gt 0 ]; then printf '%s\n' "${list[@]}"; fi
}

# The Debian packages that provide what is missing.
packages() {
	local list=()
	if ! have_libclang || ! have_clang_headers; then list+=(libclang-dev); fi
	have_cxx || list+=(g++)
	if [ "$tests" = 1 ] && ! have_browser; then list+=(chromium chromium-driver); fi
	if [ "$tests" = 1 ] && ! have_nft; then list+=(nftables); fi
	if [ "$tests" = 1 ] && ! have_faketime; then list+=(libfaketime); fi
	echo "${list[@]}"
}

gaps=$(missing)
if [ -z "$gaps" ]; then
	echo "build dependencies: present"
	exit 0
fi
echo "build dependencies missing:"
printf '%s\n' "$gaps" | sed 's/^/  /'
[ "$check_only" = 1 ] && exit 1

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
	echo "cannot install them here (needs root and apt-get): install the packages named above," >&2
	echo "or point LIBCLANG_PATH at the directory holding libclang.so" >&2
	exit 1
fi
wanted=$(packages)
echo "installing $wanted"
apt-get update -qq
# shellcheck disable=SC2086 # one word per package
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $wanted >/dev/null
gaps=$(missing)
if [ -n "$gaps" ]; then
	echo "still missing after installing:" >&2
	printf '%s\n' "$gaps" | sed 's/^/  /' >&2
	exit 1
fi
echo "build dependencies: installed"
