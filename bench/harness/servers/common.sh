# shellcheck shell=bash
# Shared helpers for the reference-server scripts. Source it; do not run it.
# State (keys, configs, logs, PID files, server data roots) lives in one temp dir:
#   $BENCH_STATE, default: <tmpfs or $TMPDIR>/sftpgate-bench-<uid>
set -euo pipefail

if [[ -z "${BENCH_STATE:-}" ]]; then
  if [[ -d /dev/shm && -w /dev/shm ]]; then _base=/dev/shm; else _base="${TMPDIR:-/tmp}"; fi
  BENCH_STATE="$_base/sftpgate-bench-$(id -u)"
fi
export BENCH_STATE
SERVERS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() { echo "error: $*" >&2; exit 1; }

# Ports: only 2201-2209 on loopback are used by this harness.
PORT_OPENSSH_INTERNAL="${PORT_OPENSSH_INTERNAL:-2201}"
PORT_OPENSSH_EXTERNAL="${PORT_OPENSSH_EXTERNAL:-2202}"
PORT_ASYNCSSH="${PORT_ASYNCSSH:-2203}"
PORT_RCLONE="${PORT_RCLONE:-2204}"
LISTEN_ADDR="${LISTEN_ADDR:-127.0.0.1}"
case "$LISTEN_ADDR" in 127.0.0.1|::1) ;; *) die "LISTEN_ADDR must be 127.0.0.1 or ::1";; esac

ensure_state() {
  mkdir -p "$BENCH_STATE"
  chmod 700 "$BENCH_STATE"
  if [[ ! -f "$BENCH_STATE/host_ed25519" ]]; then
    ssh-keygen -q -t ed25519 -N '' -C sftpgate-bench-host -f "$BENCH_STATE/host_ed25519"
  fi
  if [[ ! -f "$BENCH_STATE/client_ed25519" ]]; then
    ssh-keygen -q -t ed25519 -N '' -C sftpgate-bench-client -f "$BENCH_STATE/client_ed25519"
  fi
  cp "$BENCH_STATE/client_ed25519.pub" "$BENCH_STATE/authorized_keys"
  chmod 600 "$BENCH_STATE/authorized_keys"
}

# pidfile NAME -> path of the PID file of server NAME
pidfile() { echo "$BENCH_STATE/$1.pid"; }

is_running() {
  local pf; pf="$(pidfile "$1")"
  [[ -f "$pf" ]] && kill -0 "$(cat "$pf")" 2>/dev/null
}

# wait_port HOST PORT [SECONDS]: wait until something accepts TCP on HOST:PORT
wait_port() {
  local host="$1" port="$2" secs="${3:-10}" i
  for ((i = 0; i < secs * 10; i++)); do
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

port_in_use() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

find_sftp_server() {
  local p
  for p in "${SFTP_SERVER_BIN:-}" /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server \
           /usr/libexec/sftp-server /usr/lib/ssh/sftp-server; do
    [[ -n "$p" && -x "$p" ]] && { echo "$p"; return 0; }
  done
  die "sftp-server binary not found (set SFTP_SERVER_BIN)"
}
