#!/usr/bin/env bash
# Server CPU per delivered 1:1 message on one node or on a three-node cluster, every server
# pinned to core 0 and the load generator to core 1 (see README.md beside this file).
#
#   benches/cluster.sh NODES MODE RATE
#     NODES  1 or 3
#     MODE   spread: sender and recipient of a pair on different nodes
#            together: both on one node (pair k on node k mod 3)
#     RATE   messages per second offered in total, 0 = flat out
#
# Uses target/release/tim and the loopback addresses 127.0.0.1-3, ports 20003-20005;
# everything it starts lives in a fresh /tmp/tim-cluster-bench and is stopped at the end.
set -euo pipefail
nodes=${1:?nodes}; mode=${2:?mode}; rate=${3:?rate}
source "$(dirname "$0")/lib.sh"
setup tim-cluster-bench
if [ "$nodes" = 1 ]; then
  # A node running alone: no gossip, no links.
  taskset -c 0 "$tim" serve --listen 127.0.0.1:20003 --data-dir "$dir/node1" --secret-file "$dir/key" \
    --argon2-memory-kib 8 --argon2-passes 1 --device-limit 2 --sync false --rate-connection 0 --rate-account 0 \
    > "$dir/node1.out" 2> "$dir/node1.log" &
  pids+=($!); servers+=(127.0.0.1:20003)
  for _ in $(seq 600); do grep -q "tim ready" "$dir/node1.out" && break; sleep 0.1; done
else
  for i in $(seq 1 "$nodes"); do start_node "$i"; done
  wait_settled "$nodes"
fi
together=(); [ "$mode" = together ] && together=(--together)
taskset -c 1 "$tim" bench --server "$(IFS=,; echo "${servers[*]}")" --server-pid "$(IFS=,; echo "${pids[*]}")" \
  chat --pairs 100 --duration 10 --rate "$rate" "${together[@]}"
