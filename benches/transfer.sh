#!/usr/bin/env bash
# Export and import: a cluster of SOURCE_NODES is filled by a flat-out chat, exported to a
# file (plain, then sealed), and the file imported into a fresh cluster of TARGET_NODES, then
# imported there again (nothing written). Prints the time, records and bytes of each step.
# Servers are pinned to core 0, the tools to core 1 (see README.md beside this file).
#
#   benches/transfer.sh SOURCE_NODES TARGET_NODES FILL_PAIRS FILL_SECONDS
#
# Uses target/release/tim (TIM=… for another) and 127.0.0.1-N, ports 20002-20005; everything
# it starts lives in a fresh /tmp/tim-transfer-bench and is stopped at the end.
set -euo pipefail
source_nodes=${1:?source nodes}; target_nodes=${2:?target nodes}; fill_pairs=${3:?fill pairs}
fill_secs=${4:?fill seconds}
source "$(dirname "$0")/lib.sh"
setup tim-transfer-bench
for i in $(seq "$source_nodes"); do start_node "$i"; done
wait_settled "$source_nodes"
list=$(IFS=,; echo "${servers[*]}")
taskset -c 1 "$tim" bench --server "$list" --prefix fill --json "$dir/fill.json" \
  chat --pairs "$fill_pairs" --duration "$fill_secs" --rate 0 --window 64 > /dev/null
echo "data: $((2 * fill_pairs)) users; $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(next(int(f["value"]) for f in r["figures"] if f["name"]=="messages sent"))' "$dir/fill.json") messages"
admin=(--server 127.0.0.1:20002 --secret-file "$dir/key")
step() { local name=$1; shift; local t0; t0=$(date +%s.%N); taskset -c 1 "$tim" "$@" 2> "$dir/$name.txt"
  python3 -c 'import sys; print(f"{sys.argv[1]:>14}: {float(sys.argv[3]) - float(sys.argv[2]):6.2f} s  {open(sys.argv[4]).readline().strip()}")' \
    "$name" "$t0" "$(date +%s.%N)" "$dir/$name.txt"; }
echo "a long passphrase" > "$dir/pass"
step export export --to "$dir/plain.timdump" "${admin[@]}"
step export-sealed export --to "$dir/sealed.timdump" --passphrase-file "$dir/pass" "${admin[@]}"
step verify export --verify "$dir/plain.timdump"
ls -l "$dir/plain.timdump" "$dir/sealed.timdump" | awk '{print "  " $5 " bytes  " $9}'
# The target: a fresh cluster on the same secret.
kill "${pids[@]}"; wait 2>/dev/null || true
pids=(); servers=()
rm -rf "$dir"/node*
for i in $(seq "$target_nodes"); do start_node "$i"; done
wait_settled "$target_nodes"
step import import --from "$dir/plain.timdump" "${admin[@]}"
step import-again import --from "$dir/sealed.timdump" --passphrase-file "$dir/pass" "${admin[@]}"
