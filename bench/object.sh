#!/usr/bin/env bash
# bench/object.sh: upload and download throughput on object storage (Garage on loopback):
#   - directly with an S3 client (rclone's s3 backend, multipart, 4 transfers in flight),
#   - through sftpgate (OpenSSH sftp client, user on an S3 prefix), default settings,
#   - through sftpgate with request concurrency forced to 1 (limits.max_in_flight = 1),
#   - through sftpgate "one at a time all the way": max_in_flight = 1, no read-ahead
#     (s3.read_ahead = 0), one GET per READ (s3.read_chunk = the client's request size),
#     one part uploading at a time (s3.parts_in_flight = 1): what a server that handles one
#     request at a time over a plain S3 client does.
# Every download is checked against the original (sha256). Appends a section to
# docs/performance.md (append only) unless BENCH_DOC is empty.
#
# Loopback Garage answers a call in well under a millisecond; real S3 takes 10-30 ms and
# serves ~50-100 MB/s per stream. BENCH_S3_DELAY_MS / BENCH_S3_CONN_MBPS put
# sftpgate-s3-latency-proxy (bench/loadgen) between Garage and both S3 clients (sftpgate's
# and rclone's) to play such a store.
#
# Usage: eval "$(.ci/garage.sh start)"; bench/object.sh
# Env:   BENCH_SIZE_MB  file size in MiB (1024)
#        BENCH_RUNS     samples per figure; the median is reported (1)
#        BENCH_PROFILE  cargo profile of sftpgate: release (release); dev for a smoke run
#        BENCH_BUILD    1: cargo build first (1)
#        BENCH_S3_DELAY_MS   delay of every S3 request through the proxy, ms (0: no proxy
#                            unless BENCH_S3_CONN_MBPS is set)
#        BENCH_S3_CONN_MBPS  bandwidth cap per S3 connection and direction, MB/s (0: none)
#        BENCH_REQUEST  the sftp client's request size, bytes (261120: what OpenSSH's sftp
#                       takes from sftpgate's limits@openssh.com); the one-at-a-time read_chunk
#        CIPHER         (aes128-gcm@openssh.com)
#        BENCH_DOC      markdown file to append to (docs/performance.md; empty: do not)
#        BENCH_STATE    state dir (/dev/shm/sftpgate-object-<uid>), removed at the end
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${BENCH_SIZE_MB:=1024}"
: "${BENCH_RUNS:=1}"
: "${BENCH_PROFILE:=release}"
: "${BENCH_BUILD:=1}"
: "${BENCH_S3_DELAY_MS:=0}"
: "${BENCH_S3_CONN_MBPS:=0}"
: "${BENCH_REQUEST:=261120}"
: "${CIPHER:=aes128-gcm@openssh.com}"
: "${BENCH_DOC=$REPO/docs/performance.md}"
: "${BENCH_STATE:=/dev/shm/sftpgate-object-$(id -u)}"

die() { echo "bench: error: $*" >&2; exit 1; }
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

for v in SFTPGATE_TEST_S3_ENDPOINT SFTPGATE_TEST_S3_BUCKET SFTPGATE_TEST_S3_ACCESS_KEY SFTPGATE_TEST_S3_SECRET_KEY; do
  [[ -n "${!v:-}" ]] || die "$v is not set: eval \"\$(.ci/garage.sh start)\" first"
done
command -v sftp >/dev/null || die "OpenSSH sftp client not found"
command -v rclone >/dev/null || die "rclone not found (apt-get install rclone)"

use_proxy=0
[[ "$BENCH_S3_DELAY_MS" != 0 || "$BENCH_S3_CONN_MBPS" != 0 ]] && use_proxy=1
if [[ "$BENCH_BUILD" == 1 ]]; then
  log "building sftpgate ($BENCH_PROFILE)"
  (cd "$REPO" && cargo build -q -p sftpgate --profile "$BENCH_PROFILE")
  if [[ "$use_proxy" == 1 ]]; then
    (cd "$REPO" && cargo build -q -p sftpgate-loadgen --bin sftpgate-s3-latency-proxy --profile "$BENCH_PROFILE")
  fi
fi
target_dir="${CARGO_TARGET_DIR:-$REPO/target}"
dir="$BENCH_PROFILE"; [[ "$BENCH_PROFILE" == dev ]] && dir=debug
SFTPGATE="$target_dir/$dir/sftpgate"
PROXY="$target_dir/$dir/sftpgate-s3-latency-proxy"
[[ -x "$SFTPGATE" ]] || die "$SFTPGATE not built"
[[ "$use_proxy" == 0 || -x "$PROXY" ]] || die "$PROXY not built"

rm -rf "$BENCH_STATE"; mkdir -p "$BENCH_STATE"
server_pid=""
proxy_pid=""
cleanup() { # the script's exit status stays its own: a killed child's 143 is not ours
  if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  if [[ -n "$proxy_pid" ]]; then kill "$proxy_pid" 2>/dev/null || true; wait "$proxy_pid" 2>/dev/null || true; fi
  rm -rf "$BENCH_STATE"
}
trap cleanup EXIT

s3_endpoint="$SFTPGATE_TEST_S3_ENDPOINT"
store_note="Garage 2.5.0 single-node on loopback (sqlite metadata, data in /tmp)"
if [[ "$use_proxy" == 1 ]]; then
  "$PROXY" --upstream "$SFTPGATE_TEST_S3_ENDPOINT" --delay-ms "$BENCH_S3_DELAY_MS" \
    --conn-mbps "$BENCH_S3_CONN_MBPS" >"$BENCH_STATE/proxy.out" 2>"$BENCH_STATE/proxy.log" &
  proxy_pid=$!
  for _ in $(seq 1 100); do grep -q '^PORT ' "$BENCH_STATE/proxy.out" 2>/dev/null && break; sleep 0.05; done
  proxy_port=$(sed -n 's/^PORT //p' "$BENCH_STATE/proxy.out")
  [[ -n "$proxy_port" ]] || die "the latency proxy did not start: $(cat "$BENCH_STATE/proxy.log")"
  s3_endpoint="http://127.0.0.1:$proxy_port"
  cap="no bandwidth cap"; [[ "$BENCH_S3_CONN_MBPS" != 0 ]] && cap="$BENCH_S3_CONN_MBPS MB/s per connection and direction"
  store_note="$store_note, reached through sftpgate-s3-latency-proxy: **+$BENCH_S3_DELAY_MS ms per S3 request**, $cap"
  log "S3 through the latency proxy at $s3_endpoint (+$BENCH_S3_DELAY_MS ms per request, $cap)"
fi

export RCLONE_CONFIG_GARAGE_TYPE=s3 RCLONE_CONFIG_GARAGE_PROVIDER=Other \
  RCLONE_CONFIG_GARAGE_ENDPOINT="$s3_endpoint" \
  RCLONE_CONFIG_GARAGE_REGION="${SFTPGATE_TEST_S3_REGION:-garage}" \
  RCLONE_CONFIG_GARAGE_ACCESS_KEY_ID="$SFTPGATE_TEST_S3_ACCESS_KEY" \
  RCLONE_CONFIG_GARAGE_SECRET_ACCESS_KEY="$SFTPGATE_TEST_S3_SECRET_KEY" \
  RCLONE_CONFIG_GARAGE_FORCE_PATH_STYLE=true
# A CA bundle set for a proxy breaks rclone's S3 client; the endpoint is plain HTTP.
unset AWS_CA_BUNDLE
bucket="$SFTPGATE_TEST_S3_BUCKET"
run_id="bench-$(date -u +%Y%m%dT%H%M%S)-$$"

log "writing a $BENCH_SIZE_MB MiB file"
head -c "$((BENCH_SIZE_MB << 20))" /dev/urandom >"$BENCH_STATE/big.bin"
sum=$(sha256sum "$BENCH_STATE/big.bin" | cut -d' ' -f1)
check() { [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$sum" ]] || die "$1 differs from the original"; rm -f "$1"; }

# seconds CMD...: runs CMD, prints its wall time in seconds.
seconds() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mbps() { echo "$BENCH_SIZE_MB / $1" | bc -l | xargs printf '%.1f'; }

# ---- sftpgate -------------------------------------------------------------------------
ssh-keygen -q -t ed25519 -N '' -f "$BENCH_STATE/key"
data="$BENCH_STATE/data"
free_port() { local p; while :; do p=$((30000 + RANDOM % 20000)); (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }; done; }
HOME="$BENCH_STATE" "$SFTPGATE" user add bench --key-file "$BENCH_STATE/key.pub" --data-dir "$data" >/dev/null
HOME="$BENCH_STATE" "$SFTPGATE" user set-storage bench "s3://$bucket/$run_id/sftpgate" --data-dir "$data" >/dev/null

start_server() { # start_server LIMITS-TOML S3-TOML: extra lines of [limits] and [s3]
  local port; port=$(free_port)
  cat >"$BENCH_STATE/sftpgate.toml" <<EOF
listen = "127.0.0.1:$port"
[limits]
$1
[s3]
endpoint = "$s3_endpoint"
region = "${SFTPGATE_TEST_S3_REGION:-garage}"
access_key_id = "$SFTPGATE_TEST_S3_ACCESS_KEY"
secret_access_key = "$SFTPGATE_TEST_S3_SECRET_KEY"
$2
EOF
  HOME="$BENCH_STATE" "$SFTPGATE" serve --config "$BENCH_STATE/sftpgate.toml" --data-dir "$data" \
    >"$BENCH_STATE/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  PORT=$port
}
stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""; }
sftp_batch() { # sftp_batch BATCH
  printf '%s\n' "$1" >"$BENCH_STATE/batch"
  (cd "$BENCH_STATE" && sftp -q -F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o LogLevel=ERROR -o IdentitiesOnly=yes -o BatchMode=yes -c "$CIPHER" -i "$BENCH_STATE/key" \
    -P "$PORT" -b "$BENCH_STATE/batch" bench@127.0.0.1)
}

declare -A up down
measure() { # measure NAME UPLOAD-CMD DOWNLOAD-CMD DOWNLOADED-FILE
  local name=$1 ups=() downs=()
  for _ in $(seq 1 "$BENCH_RUNS"); do
    ups+=("$(seconds eval "$2")")
    downs+=("$(seconds eval "$3")")
    check "$4"
  done
  up[$name]=$(printf '%s\n' "${ups[@]}" | median)
  down[$name]=$(printf '%s\n' "${downs[@]}" | median)
  log "$name: up ${up[$name]} s ($(mbps "${up[$name]}") MiB/s), down ${down[$name]} s ($(mbps "${down[$name]}") MiB/s)"
}

log "direct S3 (rclone s3 backend)"
measure direct \
  "rclone copyto --ignore-times '$BENCH_STATE/big.bin' 'garage:$bucket/$run_id/direct/big.bin'" \
  "rclone copyto --ignore-times 'garage:$bucket/$run_id/direct/big.bin' '$BENCH_STATE/back-direct.bin'" \
  "$BENCH_STATE/back-direct.bin"

log "sftpgate, default settings"
start_server "" ""
measure sftpgate "sftp_batch 'put big.bin'" "sftp_batch 'get big.bin back-sg.bin'" "$BENCH_STATE/back-sg.bin"
stop_server

log "sftpgate, max_in_flight = 1"
start_server "max_in_flight = 1" ""
measure one "sftp_batch 'put big.bin'" "sftp_batch 'get big.bin back-one.bin'" "$BENCH_STATE/back-one.bin"
stop_server

log "sftpgate, one at a time all the way"
start_server "max_in_flight = 1" $'read_ahead = 0\nread_chunk = '"$BENCH_REQUEST"$'\nparts_in_flight = 1'
measure serial "sftp_batch 'put big.bin'" "sftp_batch 'get big.bin back-serial.bin'" "$BENCH_STATE/back-serial.bin"
stop_server

rclone purge "garage:$bucket/$run_id" >/dev/null 2>&1 || true

ratio() { echo "$1 / $2" | bc -l | xargs printf '%.2f'; }
secs() { printf '%.2f' "$1"; }
row() { echo "| $1 | $(secs "${up[$2]}") | $(mbps "${up[$2]}") | $(secs "${down[$2]}") | $(mbps "${down[$2]}") |"; }
load=$(uptime | sed 's/.*load average/load average/')
table=$(cat <<EOF

## Object storage: sftpgate on Garage vs direct S3 (bench/object.sh)

$(date -u '+%Y-%m-%d %H:%M UTC'), \`BENCH_SIZE_MB=$BENCH_SIZE_MB BENCH_RUNS=$BENCH_RUNS BENCH_PROFILE=$BENCH_PROFILE BENCH_S3_DELAY_MS=$BENCH_S3_DELAY_MS BENCH_S3_CONN_MBPS=$BENCH_S3_CONN_MBPS bench/object.sh\`,
one $BENCH_SIZE_MB MiB file, $store_note; OpenSSH \`sftp\` with \`$CIPHER\` (its default
64 requests in flight of $BENCH_REQUEST B, the size it takes from sftpgate's limits@openssh.com);
direct = rclone's s3 backend on the same S3 endpoint (multipart, 4 parts in flight). Medians of
$BENCH_RUNS; every download checked by sha256. A shared 2-core machine ($load at the end):
compare the ratios, not the absolute figures.

| path | upload s | upload MiB/s | download s | download MiB/s |
|---|---|---|---|---|
$(row "direct S3 (rclone)" direct)
$(row "sftpgate, default settings" sftpgate)
$(row "sftpgate, max_in_flight = 1" one)
$(row "sftpgate, one at a time all the way (max_in_flight = 1, read_ahead = 0, read_chunk = $BENCH_REQUEST, parts_in_flight = 1)" serial)

sftpgate / direct S3 throughput: upload $(ratio "${up[direct]}" "${up[sftpgate]}")×, download
$(ratio "${down[direct]}" "${down[sftpgate]}")× (aim ≥ 0.8×). sftpgate / max_in_flight = 1: upload
$(ratio "${up[one]}" "${up[sftpgate]}")×, download $(ratio "${down[one]}" "${down[sftpgate]}")×. sftpgate / one at a
time all the way: upload $(ratio "${up[serial]}" "${up[sftpgate]}")×, download
$(ratio "${down[serial]}" "${down[sftpgate]}")× (aim ≥ 5×).
EOF
)
echo "$table"
if [[ -n "$BENCH_DOC" ]]; then
  printf '%s\n' "$table" >>"$BENCH_DOC"
  log "appended to $BENCH_DOC"
fi
