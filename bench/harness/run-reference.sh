#!/usr/bin/env bash
# Start the three reference servers, run sftp-bench.sh against each with each cipher, stop them.
#   run-reference.sh [RESULTS_MD]      (default: no file, just the printed tables)
# Env: BENCH_RUNS (3), CIPHERS ("aes128-gcm@openssh.com chacha20-poly1305@openssh.com"),
#      TARGETS ("openssh-internal openssh-external asyncssh"; also: rclone), BENCH_TESTS (all)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RESULTS="${1:-}"
: "${CIPHERS:=aes128-gcm@openssh.com chacha20-poly1305@openssh.com}"
: "${TARGETS:=openssh-internal openssh-external asyncssh}"
STARTED=()
stop_started() { local t; for t in "${STARTED[@]}"; do "$HERE/servers/stop.sh" "$t" || true; done; }
trap stop_started EXIT
for t in $TARGETS; do
  case "$t" in
    openssh-internal) "$HERE/servers/start-openssh.sh" internal ;;
    openssh-external) "$HERE/servers/start-openssh.sh" external ;;
    asyncssh)         "$HERE/servers/start-asyncssh.sh" ;;
    rclone)           "$HERE/servers/start-rclone.sh" ;;
    *) echo "unknown target $t" >&2; exit 1 ;;
  esac
  STARTED+=("$t")
done
for c in $CIPHERS; do
  for t in $TARGETS; do
    ( eval "$("$HERE/servers/env.sh" "$t")"
      BENCH_CIPHER="$c" BENCH_RESULTS="$RESULTS" "$HERE/sftp-bench.sh" )
  done
done
