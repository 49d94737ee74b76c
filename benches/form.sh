#!/usr/bin/env bash
# A cluster forms: N fresh nodes start one after the other, the first founding it; how long
# until every slot is placed, owned and still, and the CPU seconds each node spent by then.
# The first node hands about (N-1)/N of the 4,096 slots to the others, all of them empty.
# Servers are pinned to core 0 (see README.md beside this file).
#
#   benches/form.sh N [SERVE FLAGS…]      SYNC=true to sync as `tim serve` does by default
#
# Uses target/release/tim (or $TIM) and 127.0.0.1-N, ports 20002-20005; everything it starts
# lives in a fresh /tmp/tim-form-bench and is stopped at the end.
set -euo pipefail
nodes=${1:?nodes}; shift
source "$(dirname "$0")/lib.sh"
setup tim-form-bench
started=$(date +%s.%N)
for i in $(seq "$nodes"); do start_node "$i" "$@"; done
wait_settled "$nodes"
settled_at=$(date +%s.%N)
cpu=()
for pid in "${pids[@]}"; do
  cpu+=("$(awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$pid/stat")")
done
echo "$nodes nodes settled in $(python3 -c "print(f'{$settled_at - $started:.2f}')") s; CPU seconds per node: ${cpu[*]}"
