#!/usr/bin/env bash
# Memory benchmark (not a test): the RSS of `sftpgate serve` with N idle authenticated SFTP
# sessions (default 1000) and with M sessions transferring at once (default 50), and the
# per-session figures. Everything on 127.0.0.1, in a temporary directory, stopped at the end.
#
#   bench/memory.sh                      # debug build (as `cargo build` left it)
#   PROFILE=release bench/memory.sh      # cargo build --release first
#   IDLE=1000 BUSY=50 BUSY_SIZE=64M bench/memory.sh
#
# Figures come from VmRSS in /proc/<pid>/status: after start (baseline), once all idle
# sessions are open (and 2 s later, settled), and the peak sampled every 50 ms during the
# transfers. The per-address, per-user and connection limits are raised for the run (one
# user from one address opens them all).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
IDLE=${IDLE:-1000}
BUSY=${BUSY:-50}
BUSY_SIZE=${BUSY_SIZE:-32M}
PROFILE=${PROFILE:-debug}
target=${CARGO_TARGET_DIR:-target}/$PROFILE
build_flags=(); [[ $PROFILE == release ]] && build_flags=(--release)
cargo build -q "${build_flags[@]}" -p sftpgate -p sftpgate-loadgen

tmp=$(mktemp -d)
server_pid=
cleanup() { [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
ssh-keygen -q -t ed25519 -N '' -f "$tmp/key"
"$target/sftpgate" user add bench --key-file "$tmp/key.pub" --data-dir "$tmp/data" >/dev/null
mkdir -p "$tmp/data/files/bench"

rss() { awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status"; }   # KiB
export SFTPGATE_LIMITS_MAX_CONNECTIONS=$((IDLE + BUSY + 64))
export SFTPGATE_LIMITS_MAX_CONNECTIONS_PER_ADDRESS=$((IDLE + BUSY + 64))
export SFTPGATE_LIMITS_MAX_CONNECTIONS_PER_USER=$((IDLE + BUSY + 64))
export SFTPGATE_LIMITS_MAX_UNAUTHENTICATED=256
export SFTPGATE_LIMITS_MAX_UNAUTHENTICATED_PER_ADDRESS=256
RUST_LOG=warn "$target/sftpgate" serve --listen 127.0.0.1:0 --data-dir "$tmp/data" \
    >"$tmp/serve.out" 2>"$tmp/serve.err" &
server_pid=$!
for _ in $(seq 1 100); do grep -q "listening on" "$tmp/serve.out" 2>/dev/null && break; sleep 0.1; done
port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/serve.out" | head -1)
[[ -n $port ]] || { cat "$tmp/serve.err"; echo "server did not start"; exit 1; }
sleep 1
base=$(rss)

# Idle sessions: held until their stdin (a fifo we keep open) closes.
mkfifo "$tmp/hold"
"$target/sftpgate-idle-sessions" --port "$port" --user bench --key "$tmp/key" -n "$IDLE" \
    <"$tmp/hold" >"$tmp/idle.out" 2>"$tmp/idle.err" &
idle_pid=$!
exec 3>"$tmp/hold"
for _ in $(seq 1 1200); do grep -q READY "$tmp/idle.out" 2>/dev/null && break; sleep 0.1; done
grep -q READY "$tmp/idle.out" || { cat "$tmp/idle.err"; echo "idle sessions did not open"; exit 1; }
open_rss=$(rss)
sleep 2
idle_rss=$(rss)
exec 3>&-
wait "$idle_pid" || true
sleep 2
after_idle=$(rss)

# Busy sessions: the load generator's upload + verified download, peak RSS sampled.
peak=$(rss)
"$target/sftpgate-loadgen" --port "$port" --user bench --key "$tmp/key" -n "$BUSY" \
    --size "$BUSY_SIZE" --threads 2 >"$tmp/busy.out" 2>&1 &
busy_pid=$!
while kill -0 "$busy_pid" 2>/dev/null; do
    now=$(rss); ((now > peak)) && peak=$now; sleep 0.05
done
wait "$busy_pid" || { cat "$tmp/busy.out"; echo "load generator failed"; exit 1; }

per_idle=$(( (idle_rss - base) * 1024 / IDLE ))
per_busy=$(( (peak - base) * 1024 / BUSY ))
cat <<REPORT
sftpgate memory ($PROFILE build, $(nproc) cores)
  baseline RSS                         $base KiB
  $IDLE idle sessions open             $open_rss KiB (settled: $idle_rss KiB)
  after they closed                    $after_idle KiB
  peak with $BUSY transferring ($BUSY_SIZE each)  $peak KiB
  per idle session                     $((per_idle / 1024)) KiB ($per_idle bytes)
  per transferring session (peak)      $((per_busy / 1024)) KiB
RESULT profile=$PROFILE base_kib=$base idle_n=$IDLE idle_kib=$idle_rss per_idle_bytes=$per_idle busy_n=$BUSY busy_peak_kib=$peak per_busy_kib=$((per_busy / 1024))
REPORT
