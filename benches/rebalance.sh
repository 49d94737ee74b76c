#!/usr/bin/env bash
# A fourth node joins a three-node cluster that holds data, under a steady 1:1 chat: how long
# the join takes (from its start until every slot is placed, owned and still), and the echo
# latency of the chat during the join (from 2 s before it to its end) against the same load
# for 30 s without a move. Servers are
# pinned to core 0, the load generators to core 1 (see README.md beside this file).
#
#   benches/rebalance.sh FILL_PAIRS FILL_SECONDS RATE [SERVE FLAGS…]
#     FILL_PAIRS, FILL_SECONDS  the data: that many pairs chat flat out for that long first
#     RATE                      messages per second of the chat measured (100 pairs, window 1)
#     SERVE FLAGS               extra `tim serve` flags of every node, e.g. --migration-rate N
#
# Uses target/release/tim and 127.0.0.1-4, ports 20003-20005; everything it starts lives in
# a fresh /tmp/tim-rebalance-bench and is stopped at the end.
set -euo pipefail
fill_pairs=${1:?fill pairs}; fill_secs=${2:?fill seconds}; rate=${3:?rate}; shift 3
source "$(dirname "$0")/lib.sh"
setup tim-rebalance-bench
for i in 1 2 3; do start_node "$i" "$@"; done
wait_settled 3
list=$(IFS=,; echo "${servers[*]}")
chat() { taskset -c 1 "$tim" bench --server "$list" --prefix "$1" --json "$dir/$1.json" chat "${@:2}" > /dev/null; }
figure() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(next(f["value"] for f in r["figures"] if f["name"]==sys.argv[2]))' "$dir/$1.json" "$2"; }
chat fill --pairs "$fill_pairs" --duration "$fill_secs" --rate 0 --window 64
echo "data: $((2 * fill_pairs)) users, $(figure fill "messages sent") messages"
measured=(--pairs 100 --rate "$rate" --window 1)
chat still "${measured[@]}" --duration 30
# The same load from 2 s before the join until it ends (SIGTERM ends the sending; taskset
# runs the bench in its own process).
taskset -c 1 "$tim" bench --server "$list" --prefix moving --json "$dir/moving.json" \
  chat "${measured[@]}" --duration 600 > /dev/null &
load=$!
sleep 2
"$tim" cluster status --json --server 127.0.0.1:20005 --secret-file "$dir/key" > "$dir/before.json"
started=$(date +%s.%N)
start_node 4 "$@"
wait_settled 4
joined=$(date +%s.%N)
"$tim" cluster status --json --server 127.0.0.1:20005 --secret-file "$dir/key" > "$dir/status.json"
kill -TERM "$load"
wait "$load"
python3 - "$started" "$joined" "$dir" <<'PY'
import json, sys
started, joined, folder = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
def moved(name):
    members = json.load(open(f"{folder}/{name}.json"))
    return sum(m["moved_slots"] for m in members), sum(m["moved_bytes"] for m in members)
(slots, sent), (slots_before, sent_before) = moved("status"), moved("before")
slots, sent = slots - slots_before, sent - sent_before
print(f"join: {joined - started:.1f} s from the fourth node's start until every slot is owned and still; "
      f"{slots} slots, {sent / 1e6:.1f} MB moved")
for name in ("still", "moving"):
    figures = {f["name"]: f["value"] for f in json.load(open(f"{folder}/{name}.json"))["figures"]}
    print(f"{name:>7}: echo p50 {figures['echo latency p50']:.2f} ms, p99 {figures['echo latency p99']:.2f} ms, "
          f"max {figures['echo latency max']:.2f} ms; sent {figures['messages sent']:.0f}, "
          f"lost {figures['messages lost']:.0f}, duplicated {figures['messages duplicated']:.0f}, "
          f"reordered {figures['messages reordered']:.0f}, sent again {figures['messages sent again']:.0f}")
PY
