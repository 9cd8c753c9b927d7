#!/usr/bin/env bash
# Print BENCH_* settings for one reference server:  eval "$(servers/env.sh asyncssh)"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
case "${1:-}" in
  openssh-internal) port="$PORT_OPENSSH_INTERNAL"; dir="$BENCH_STATE/data-openssh-internal" ;;
  openssh-external) port="$PORT_OPENSSH_EXTERNAL"; dir="$BENCH_STATE/data-openssh-external" ;;
  asyncssh)         port="$PORT_ASYNCSSH";         dir="/" ;;
  rclone)           port="$PORT_RCLONE";           dir="/" ;;
  *) die "usage: $0 openssh-internal|openssh-external|asyncssh|rclone" ;;
esac
printf 'export BENCH_HOST=%q BENCH_PORT=%q BENCH_USER=%q BENCH_KEY=%q BENCH_DIR=%q BENCH_NAME=%q\n' \
  "$LISTEN_ADDR" "$port" "$(id -un)" "$BENCH_STATE/client_ed25519" "$dir" "$1"
pf="$(pidfile "$1")"
if [[ -f "$pf" ]]; then printf 'export BENCH_SERVER_PID=%q\n' "$(cat "$pf")"; else echo "unset BENCH_SERVER_PID"; fi
