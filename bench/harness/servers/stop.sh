#!/usr/bin/env bash
# Stop reference servers started by start-*.sh, by their recorded PIDs only.
#   stop.sh [openssh-internal|openssh-external|asyncssh|rclone|all]   (default: all)
#   stop.sh --purge   also deletes $BENCH_STATE (keys, data) after stopping all
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
purge=0; which="${1:-all}"
[[ "$which" == --purge ]] && { purge=1; which=all; }
[[ "$which" == all ]] && names=(openssh-internal openssh-external asyncssh rclone) || names=("$which")
for n in "${names[@]}"; do
  pf="$(pidfile "$n")"
  [[ -f "$pf" ]] || continue
  pid="$(cat "$pf")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "stopped $n (pid $pid)"
  fi
  rm -f "$pf"
done
if ((purge)); then rm -rf "$BENCH_STATE"; echo "removed $BENCH_STATE"; fi
