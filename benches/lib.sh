# Shared by the cluster benchmarks: start nodes pinned to core 0, wait for the cluster to settle.
# Sourced; `setup` first.

# setup NAME: $tim, and a fresh $dir (/tmp/NAME) holding a deployment secret; the nodes started
# are stopped when the script exits.
setup() {
  tim=${TIM:-target/release/tim}
  dir=/tmp/$1
  rm -rf "$dir"; mkdir -p "$dir"
  head -c 32 /dev/urandom > "$dir/key"
  pids=(); servers=()
  trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
}

# start_node I [FLAGS…]: node I on 127.0.0.I (admin 20002, client 20003, gossip 20004, links 20005), joining
# through node 1 unless it is node 1; appends its pid to `pids` and its address to `servers`.
# Unsynced unless SYNC=true.
start_node() {
  local i=$1; shift
  local flags=(--listen "127.0.0.$i:20003" --data-dir "$dir/node$i" --secret-file "$dir/key"
    --argon2-memory-kib 8 --argon2-passes 1 --device-limit 2 --sync "${SYNC:-false}"
    --rate-connection 0 --rate-account 0
    --admin-listen "127.0.0.$i:20002" --gossip-listen "127.0.0.$i:20004" --rpc-listen "127.0.0.$i:20005" "$@")
  [ "$i" != 1 ] && flags+=(--seeds 127.0.0.1:20004)
  taskset -c 0 "$tim" serve "${flags[@]}" > "$dir/node$i.out" 2> "$dir/node$i.log" &
  pids+=($!); servers+=("127.0.0.$i:20003")
  for _ in $(seq 600); do grep -qs "tim ready" "$dir/node$i.out" && return; sleep 0.1; done
  echo "node $i did not start: see $dir/node$i.log" >&2; return 1
}

# settled N: whether N members are live, own every slot, agree on placement, and move nothing.
settled() {
  "$tim" cluster status --json --server 127.0.0.1:20005 --secret-file "$dir/key" | NODES=$1 python3 -c '
import json, os, sys
live = [m for m in json.load(sys.stdin) if m["live"]]
settled = len(live) == int(os.environ["NODES"]) and sum(m["slots"] for m in live) == 4096 \
    and len({m["placement"] for m in live}) == 1 and sum(m["leaving_slots"] for m in live) == 0
sys.exit(0 if settled else 1)'
}

# wait_settled N: waits (up to ten minutes) until `settled N`.
wait_settled() {
  for _ in $(seq 6000); do settled "$1" && return; sleep 0.1; done
  echo "the cluster did not settle" >&2; return 1
}
