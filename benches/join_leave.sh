#!/usr/bin/env bash
# Order and delivery through a join and a leave: `tim bench chat` (100 pairs, 2,000 msg/s, each
# sender keeping up to 32 messages in flight, its default window) across three nodes while a
# fourth joins and then node 2 leaves (`tim cluster leave`). Prints what the bench counts:
# lost, duplicated, reordered, sent again, and the delivery latency tail.
#
#   benches/join_leave.sh [SERVE FLAGS…]        TIM=path/to/tim to measure another build
#
# Uses target/release/tim and 127.0.0.1-4, ports 20002-20005; everything it starts lives in a
# fresh /tmp/tim-join-leave-bench and is stopped at the end.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
setup tim-join-leave-bench
for i in 1 2 3; do start_node "$i" "$@"; done
wait_settled 3
list=$(IFS=,; echo "${servers[*]}")
taskset -c 1 "$tim" bench --server "$list" --json "$dir/chat.json" chat --pairs 100 --rate 2000 --duration 60 \
  > /dev/null 2> "$dir/bench.err" &
bench=$!
sleep 12
start_node 4 "$@"
wait_settled 4
sleep 5
"$tim" cluster leave --server 127.0.0.2:20005 --secret-file "$dir/key" > /dev/null
wait "$bench"
python3 - "$dir/chat.json" <<'PY'
import json, sys
figures = {f["name"]: f["value"] for f in json.load(open(sys.argv[1]))["figures"]}
for name in ["messages sent", "messages lost", "messages duplicated", "messages reordered", "messages sent again",
             "messages refused", "delivery latency p99", "delivery latency p99.9", "delivery latency max"]:
    print(f"{name}: {figures[name]:g}")
PY
