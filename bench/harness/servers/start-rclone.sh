#!/usr/bin/env bash
# Start `rclone serve sftp` (rclone's Go SFTP server, github.com/pkg/sftp under rclone's VFS)
# on loopback port $PORT_RCLONE (2204), serving a temp dir as its root: use BENCH_DIR=/.
# Public-key auth with $BENCH_STATE/authorized_keys. RCLONE_VFS_CACHE_MODE (default off:
# files are read and written straight through to the local directory).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
name=rclone
ensure_state
command -v rclone >/dev/null || die "rclone not found (apt-get install rclone)"
if is_running "$name"; then echo "$name already running (pid $(cat "$(pidfile "$name")"))"; exit 0; fi
port_in_use "$LISTEN_ADDR" "$PORT_RCLONE" && die "port $PORT_RCLONE on $LISTEN_ADDR already in use"
data="$BENCH_STATE/data-$name"
mkdir -p "$data"
: > "$BENCH_STATE/rclone.conf"
RCLONE_CONFIG="$BENCH_STATE/rclone.conf" rclone serve sftp "$data" \
  --addr "$LISTEN_ADDR:$PORT_RCLONE" --key "$BENCH_STATE/host_ed25519" \
  --authorized-keys "$BENCH_STATE/authorized_keys" \
  --vfs-cache-mode "${RCLONE_VFS_CACHE_MODE:-off}" --log-level ERROR \
  >"$BENCH_STATE/$name.log" 2>&1 &
pid=$!
echo "$pid" > "$(pidfile "$name")"
if ! wait_port "$LISTEN_ADDR" "$PORT_RCLONE" 15; then
  cat "$BENCH_STATE/$name.log" >&2; kill "$pid" 2>/dev/null || true
  die "$name did not start listening on $LISTEN_ADDR:$PORT_RCLONE"
fi
echo "$name started: pid $pid, $LISTEN_ADDR:$PORT_RCLONE, root $data"
