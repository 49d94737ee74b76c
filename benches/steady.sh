#!/usr/bin/env bash
# What a message costs on a node that has been running a while: its store holds table files
# in several levels, not only a memtable, as the fresh stores of `tim bench sweep` do. One node
# (benches/lib.sh settings, pinned to core 0) is filled by FILL_PAIRS pairs chatting flat out
# for FILL_SECONDS, then 100 other pairs chat at RATE messages per second for 10 s from core 1
# on the same store, and the bench prints its report (CPU per message, echo and delivery
# latency, lost / duplicated / reordered).
#
#   SYNC=true benches/steady.sh FILL_PAIRS FILL_SECONDS RATE [SERVE FLAGS…]
#
# SYNC=true syncs every commit, as `tim serve` does by default (lib.sh's nodes do not).
# Uses target/release/tim (TIM=… for another); everything lives in a fresh /tmp/tim-steady-bench.
set -euo pipefail
fill_pairs=${1:?fill pairs}; fill_secs=${2:?fill seconds}; rate=${3:?rate}; shift 3
source "$(dirname "$0")/lib.sh"
setup tim-steady-bench
start_node 1 "$@"
taskset -c 1 "$tim" bench --server 127.0.0.1:20003 --prefix fill \
  chat --pairs "$fill_pairs" --duration "$fill_secs" --rate 0 --window 64 > /dev/null
echo "table files after the fill: $(find "$dir/node1" -name '*.sst' | wc -l)"
taskset -c 1 "$tim" bench --server 127.0.0.1:20003 --server-pid "${pids[0]}" --json "$dir/steady.json" \
  chat --pairs 100 --duration 10 --rate "$rate"
