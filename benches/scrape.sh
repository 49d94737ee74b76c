#!/usr/bin/env bash
# What a `/metrics` scrape costs a node: one node (benches/lib.sh settings, pinned to core 0) is
# filled by FILL_PAIRS pairs chatting flat out for FILL_SECONDS, so every figure it renders is
# a real one, then `tim bench scrape` calls `/metrics` and `/v1/info` SCRAPES times each from
# core 1 and prints the node's CPU time per call.
#
#   benches/scrape.sh SCRAPES FILL_PAIRS FILL_SECONDS
#
# Uses target/release/tim (TIM=… for another); everything lives in a fresh /tmp/tim-scrape-bench.
set -euo pipefail
scrapes=${1:?scrapes}; fill_pairs=${2:?fill pairs}; fill_secs=${3:?fill seconds}
source "$(dirname "$0")/lib.sh"
setup tim-scrape-bench
start_node 1
taskset -c 1 "$tim" bench --server 127.0.0.1:20003 --prefix fill \
  chat --pairs "$fill_pairs" --duration "$fill_secs" --rate 0 --window 64 > /dev/null
taskset -c 1 "$tim" bench --server-pid "${pids[0]}" --json "$dir/scrape.json" \
  scrape --admin 127.0.0.1:20002 --secret-file "$dir/key" --scrapes "$scrapes"
