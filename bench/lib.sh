# shellcheck shell=bash
# bench/lib.sh: what bench/e2e.sh, bench/loadgen.sh and bench/slowfs.sh share. Source it.
#
# State (keys, configs, logs, PID files, the servers' data roots, binaries) lives in
# $BENCH_STATE, default /dev/shm/sftpgate-e2e-<uid> (its own, so it never disturbs someone
# else's tools/bench servers). Ports: free ones from 2201-2209 only, loopback only.
# Servers are stopped by their recorded PIDs only.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="$REPO/bench/harness"
if [[ -z "${BENCH_STATE:-}" ]]; then
  if [[ -d /dev/shm && -w /dev/shm ]]; then BENCH_STATE="/dev/shm/sftpgate-e2e-$(id -u)"
  else BENCH_STATE="${TMPDIR:-/tmp}/sftpgate-e2e-$(id -u)"; fi
fi
export BENCH_STATE
BIN="$BENCH_STATE/bin"
: "${BENCH_BUILD:=1}"
USER_STORE=""

die() { echo "bench: error: $*" >&2; exit 1; }
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# Ports handed out by this script so far (a server may not be listening yet).
TAKEN_PORTS=" "
# pick_port VAR: a port in 2201-2209 that nothing listens on and that we have not handed out.
pick_port() {
  local p
  for p in 2201 2202 2203 2204 2205 2206 2207 2208 2209; do
    [[ "$TAKEN_PORTS" == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      TAKEN_PORTS+="$p "
      printf -v "$1" '%s' "$p"
      return 0
    fi
  done
  die "no free port in 2201-2209"
}

wait_port() {
  local port="$1" secs="${2:-15}" i
  for ((i = 0; i < secs * 10; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# build_release: release binaries of sftpgate and the load generator, copied to $BIN so that
# a rebuild by someone else during the run cannot change what is measured.
build_release() {
  mkdir -p "$BIN"
  if [[ "$BENCH_BUILD" == 1 ]]; then
    log "cargo build --release -p sftpgate -p sftpgate-loadgen"
    (cd "$REPO" && cargo build --release -p sftpgate -p sftpgate-loadgen) >&2 ||
      die "release build failed (BENCH_BUILD=0 uses the binaries in target/release as they are)"
  fi
  local b
  for b in sftpgate sftpgate-loadgen sftpgate-slowfs-server; do
    [[ -x "$REPO/target/release/$b" ]] || die "target/release/$b missing (cargo build --release)"
    cp "$REPO/target/release/$b" "$BIN/$b.new" && mv "$BIN/$b.new" "$BIN/$b"
  done
  SFTPGATE_REV="$(cd "$REPO" && git rev-parse --short HEAD)$(cd "$REPO" && git diff --quiet HEAD -- crates || echo '+dirty')"
  # The sftpgate-ref target: an earlier build, measured in the same run (A/B).
  if [[ -n "${SFTPGATE_REF:-}" ]]; then
    [[ -x "$SFTPGATE_REF/sftpgate" ]] || die "SFTPGATE_REF=$SFTPGATE_REF has no sftpgate binary"
    mkdir -p "$BIN/ref"
    cp "$SFTPGATE_REF/sftpgate" "$BIN/ref/sftpgate.new" && mv "$BIN/ref/sftpgate.new" "$BIN/ref/sftpgate"
  fi
}

# Keys and authorized_keys in $BENCH_STATE (the harness's ensure_state).
ensure_keys() {
  ( source "$HARNESS/servers/common.sh"; ensure_state )
}

# stop_pid NAME: stops the server whose PID is in $BENCH_STATE/NAME.pid.
stop_pid() {
  local pf="$BENCH_STATE/$1.pid" pid
  [[ -f "$pf" ]] || return 0
  pid="$(cat "$pf")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$pf"
}

# start_sftpgate NAME PORT [TOML_LIMITS]: `sftpgate serve` with user "bench" (key
# $BENCH_STATE/client_ed25519.pub, root $BENCH_STATE/data-NAME on tmpfs). Users come from the
# SQLite store (`sftpgate user add`) when the binary has that command, else from [[users]].
# The binary is $BIN/sftpgate unless SFTPGATE_BINARY names another.
start_sftpgate() {
  local name="$1" port="$2" limits="${3:-}"
  local BIN="$BIN"
  if [[ -n "${SFTPGATE_BINARY:-}" ]]; then BIN="$(dirname "$SFTPGATE_BINARY")"; fi
  local data="$BENCH_STATE/$name-state" root="$BENCH_STATE/data-$name" conf="$BENCH_STATE/$name.toml"
  local pub; pub="$(cat "$BENCH_STATE/client_ed25519.pub")"
  rm -rf "$data"; mkdir -p "$data" "$root"
  cat > "$conf" <<EOF
listen = "127.0.0.1:$port"
data_dir = "$data"

[auth]
password = false
EOF
  [[ -n "$limits" ]] && printf '\n[limits]\n%s\n' "$limits" >> "$conf"
  if "$BIN/sftpgate" user --help >/dev/null 2>&1; then
    USER_STORE="sqlite (sftpgate user add)"
    local out
    if ! out="$(SFTPGATE_CONFIG="$conf" "$BIN/sftpgate" user add bench \
                  --key-file "$BENCH_STATE/client_ed25519.pub" --root "$root" 2>&1)"; then
      out+=$'\n'"$(  "$BIN/sftpgate" user add bench --config "$conf" \
                  --key-file "$BENCH_STATE/client_ed25519.pub" --root "$root" 2>&1)" ||
        die "sftpgate user add failed:
$out
$("$BIN/sftpgate" user add --help 2>&1)"
    fi
  else
    USER_STORE="sftpgate.toml [[users]]"
    cat >> "$conf" <<EOF

[[users]]
name = "bench"
authorized_keys = ["$pub"]
root = "$root"
EOF
  fi
  "$BIN/sftpgate" serve --config "$conf" > "$BENCH_STATE/$name.log" 2>&1 &
  echo $! > "$BENCH_STATE/$name.pid"
  if ! wait_port "$port" 20; then
    cat "$BENCH_STATE/$name.log" >&2
    stop_pid "$name"
    die "sftpgate ($name) did not start listening on 127.0.0.1:$port"
  fi
  log "$name: sftpgate serve pid $(cat "$BENCH_STATE/$name.pid") on 127.0.0.1:$port (users: $USER_STORE${limits:+; $limits})"
}

# start_testserver NAME PORT [ARGS...]: bench/loadgen's sftpgate-slowfs-server (sftpgate's
# Server on LocalFs, see its --help) with user "bench" on $BENCH_STATE/data-NAME.
start_testserver() {
  local name="$1" port="$2"; shift 2
  local root="$BENCH_STATE/data-$name"
  mkdir -p "$root"
  "$BIN/sftpgate-slowfs-server" --listen "127.0.0.1:$port" --root "$root" \
    --host-key "$BENCH_STATE/host_ed25519" --authorized-keys "$BENCH_STATE/authorized_keys" \
    --user bench "$@" > "$BENCH_STATE/$name.log" 2>&1 &
  echo $! > "$BENCH_STATE/$name.pid"
  wait_port "$port" 20 || { cat "$BENCH_STATE/$name.log" >&2; stop_pid "$name"; die "$name did not start"; }
  log "$name: $(head -1 "$BENCH_STATE/$name.log") (pid $(cat "$BENCH_STATE/$name.pid"))"
}

# start_target NAME PORT: any server the scripts know by name.
#   sftpgate            sftpgate serve, defaults
#   sftpgate-nodelay    sftpgate's Server + LocalFs (test server, no +latency); since Server
#                       sets TCP_NODELAY itself, as `sftpgate serve` without the user store
#   sftpgate-inline     as sftpgate-nodelay, file reads/writes inline on the worker (no
#                       spawn_blocking): an experiment for the I/O-path choice
#   sftpgate-spawn      as sftpgate-nodelay, one spawn_blocking per file read/write (LocalFs
#                       before its lanes): the other side of that experiment
#   sftpgate-ref        sftpgate serve, defaults, built earlier: the binary in $SFTPGATE_REF
#                       (a directory, e.g. a copy of an older target/release), for A/B runs
#   openssh-internal, openssh-external, asyncssh, rclone: the harness's reference servers
start_target() {
  local name="$1" port="$2"
  case "$name" in
    sftpgate) start_sftpgate "$name" "$port" ;;
    sftpgate-ref) SFTPGATE_BINARY="$BIN/ref/sftpgate" start_sftpgate "$name" "$port" ;;
    sftpgate-nodelay) start_testserver "$name" "$port" --delay-us 0 --nodelay ;;
    sftpgate-inline) start_testserver "$name" "$port" --delay-us 0 --nodelay --io inline ;;
    sftpgate-spawn) start_testserver "$name" "$port" --delay-us 0 --nodelay --io spawn ;;
    openssh-internal|openssh-external|asyncssh|rclone) start_reference "$name" "$port" ;;
    *) die "unknown target $name" ;;
  esac
}

# Servers a script started (start_targets, or its own pick_port + STARTED+=NAME), with
# their ports; stop_started stops them.
STARTED=()
declare -A PORTS
# start_targets NAME...: each target (start_target) on a free port, PORTS[NAME], in a CPU
# cgroup of its own where the machine allows (cpu_cgroup)
start_targets() {
  local t
  for t in "$@"; do
    pick_port "PORTS[$t]"
    STARTED+=("$t")
    start_target "$t" "${PORTS[$t]}"
    cpu_cgroup "$t"
  done
}

# A server's CPU time is read from a cgroup of its own when this machine lets us make one
# (root, a cgroup v1 cpuacct or a cgroup v2 hierarchy mounted writable): the kernel's own
# count in ns (v1 cpuacct.usage) or us (v2 cpu.stat usage_usec), of every process the
# server starts, whether it has exited or been reaped yet or not. /proc/PID/stat, the
# fallback, counts in 10 ms ticks, rounds each process's user and system time down to a
# tick, and sees a child's time only once it is reaped: on the 0.2-0.5 s a 512 MiB transfer
# costs sftpgate, several per cent either way, near the 0.5x CPU target.
declare -A CGROUPS
# cgroup_base: "v1 MOUNT" (cpuacct) or "v2 MOUNT", or nothing.
cgroup_base() {
  local m
  m="$(awk '$3 == "cgroup" && $4 ~ /(^|,)cpuacct(,|$)/ {print $2; exit}' /proc/mounts)"
  if [[ -n "$m" && -w "$m" && -r "$m/cpuacct.usage" ]]; then echo "v1 $m"; return 0; fi
  m="$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)"
  if [[ -n "$m" && -w "$m" ]]; then echo "v2 $m"; fi
  return 0
}
# cpu_cgroup NAME: moves the server in $BENCH_STATE/NAME.pid (with its threads; what it
# starts later follows) into a new cgroup, CGROUPS[NAME]; on any failure none, and its CPU
# comes from /proc.
cpu_cgroup() {
  local name="$1" kind base dir pid
  [[ "${BENCH_CGROUP:-1}" == 1 ]] || return 0
  read -r kind base <<< "$(cgroup_base)"
  [[ -n "$base" ]] || return 0
  pid="$(cat "$BENCH_STATE/$name.pid")"
  dir="$base/sftpgate-bench-$$-$name"
  if mkdir -p "$dir" 2>/dev/null && echo "$pid" > "$dir/cgroup.procs" 2>/dev/null &&
     cgroup_cpu "$dir" >/dev/null; then
    CGROUPS[$name]="$dir"
  else
    log "$name: no CPU cgroup in $base ($kind), its CPU time comes from /proc"
    rmdir "$dir" 2>/dev/null || true
  fi
}
# cgroup_cpu DIR: the CPU seconds the cgroup's processes have used (fails when unreadable).
cgroup_cpu() {
  if [[ -r "$1/cpuacct.usage" ]]; then awk '{printf "%.6f\n", $1 / 1e9}' "$1/cpuacct.usage"
  elif [[ -r "$1/cpu.stat" ]]; then awk '$1 == "usage_usec" {printf "%.6f\n", $2 / 1e6; f = 1} END {exit !f}' "$1/cpu.stat"
  else return 1; fi
}
# server_cpu NAME: the server's CPU seconds so far: from its cgroup, else from
# /proc/PID/stat of its listening process (itself and the children it has reaped).
server_cpu() {
  if [[ -n "${CGROUPS[$1]:-}" ]]; then cgroup_cpu "${CGROUPS[$1]}"; return; fi
  sed 's/^.*) //' "/proc/$(cat "$BENCH_STATE/$1.pid")/stat" |
    awk -v k="$(getconf CLK_TCK 2>/dev/null || echo 100)" '{printf "%.3f\n", ($12 + $13 + $14 + $15) / k}'
}
# cpu_source NAME: how the scripts read the server's CPU, in words for the docs (the
# cgroup's version by the file cgroup_cpu reads).
cpu_source() {
  local dir="${CGROUPS[$1]:-}"
  if [[ -z "$dir" ]]; then echo "/proc (10 ms ticks, reaped children)"
  elif [[ -r "$dir/cpuacct.usage" ]]; then echo "its own cgroup (v1, exact)"
  else echo "its own cgroup (v2, exact)"; fi
}

# stop_started: what a script's EXIT trap does: stop every server in STARTED, then remove
# $BENCH_STATE unless BENCH_KEEP_STATE=1.
stop_started() {
  local n
  for n in "${STARTED[@]}"; do stop_pid "$n"; done
  # Empty once its processes are gone (sshd's sessions end with the listener).
  for n in "${!CGROUPS[@]}"; do
    for _ in $(seq 50); do rmdir "${CGROUPS[$n]}" 2>/dev/null && break; sleep 0.1; done
  done
  if [[ "${BENCH_KEEP_STATE:-0}" != 1 ]]; then rm -rf "$BENCH_STATE"; fi
}

# bench_prepare: what every bench script does before it starts servers: an EXIT trap that
# runs the script's own `on_exit` (if it defines one), then stop_started, and keeps the exit
# status (INT and TERM exit 130); the state directory, the keys, the release build.
bench_prepare() {
  trap bench_exit EXIT
  trap 'exit 130' INT TERM
  mkdir -p "$BENCH_STATE"
  ensure_keys
  build_release
}

bench_exit() {
  local rc=$?
  if declare -F on_exit >/dev/null; then on_exit; fi
  stop_started
  exit "$rc"
}

# start_reference NAME PORT: one of the harness's servers (openssh-internal, openssh-external,
# asyncssh, rclone) on PORT, with our $BENCH_STATE.
start_reference() {
  local name="$1" port="$2"
  export PORT_OPENSSH_INTERNAL PORT_OPENSSH_EXTERNAL PORT_ASYNCSSH PORT_RCLONE
  case "$name" in
    openssh-internal) PORT_OPENSSH_INTERNAL="$port"; "$HARNESS/servers/start-openssh.sh" internal ;;
    openssh-external) PORT_OPENSSH_EXTERNAL="$port"; "$HARNESS/servers/start-openssh.sh" external ;;
    asyncssh)         PORT_ASYNCSSH="$port";         "$HARNESS/servers/start-asyncssh.sh" ;;
    rclone)           PORT_RCLONE="$port";           "$HARNESS/servers/start-rclone.sh" ;;
    *) die "unknown reference server $name" ;;
  esac >&2
}

# client_buflen PORT USER: the request sizes OpenSSH's sftp picks by default against that
# server ("upload/download" bytes; from limits@openssh.com, else its built-in 32768).
client_buflen() {
  local out
  out="$(printf 'pwd\n' | timeout 30 sftp -vvv -b - -P "$1" -F /dev/null -i "$BENCH_STATE/client_ed25519" \
          -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no \
          -o UserKnownHostsFile=/dev/null -o User="$2" 127.0.0.1 2>&1 || true)"
  if [[ "$out" =~ using\ ([0-9]+)\ /\ ([0-9]+) ]]; then
    echo "${BASH_REMATCH[1]}/${BASH_REMATCH[2]} B (from limits@openssh.com)"
  else
    echo "32768/32768 B (no limits@openssh.com)"
  fi
}

# describe_target NAME: one markdown line on what the server is.
describe_target() {
  case "$1" in
    sftpgate) echo "sftpgate serve, default settings (users: ${USER_STORE:-?})" ;;
    sftpgate-ref) echo "sftpgate serve as above, built earlier: ${SFTPGATE_REF_NAME:-$SFTPGATE_REF/sftpgate}" ;;
    sftpgate-nodelay) echo "sftpgate's Server and LocalFs, default limits, in bench/loadgen's test server (sftpgate-slowfs-server --delay-us 0 --nodelay): as sftpgate serve without the user store" ;;
    sftpgate-inline) echo "as sftpgate-nodelay, and file reads/writes inline on the runtime worker (--io inline; experiment)" ;;
    sftpgate-spawn) echo "as sftpgate-nodelay, and one spawn_blocking per file read/write, as LocalFs before its lanes (--io spawn; experiment)" ;;
    openssh-internal) echo "OpenSSH $(ssh -V 2>&1 | cut -d' ' -f1 | cut -d_ -f2) sshd, Subsystem sftp internal-sftp" ;;
    openssh-external) echo "OpenSSH sshd, Subsystem sftp /usr/lib/openssh/sftp-server (the issue's baseline)" ;;
    asyncssh) echo "AsyncSSH $(python3 -c 'import asyncssh; print(asyncssh.__version__)' 2>/dev/null) SFTPServer (bench/harness/servers/asyncssh_server.py)" ;;
    rclone) echo "$( (rclone version 2>/dev/null || echo rclone) | awk 'NR == 1') serve sftp, --vfs-cache-mode ${RCLONE_VFS_CACHE_MODE:-off}" ;;
    *) echo "$1" ;;
  esac
}

# target_env NAME: prints BENCH_* exports for a started server (reference or sftpgate-like).
target_env() {
  local name="$1"
  if [[ -n "${CGROUPS[$name]:-}" ]]; then
    printf 'export BENCH_SERVER_CGROUP=%q\n' "${CGROUPS[$name]}"
  else
    echo "unset BENCH_SERVER_CGROUP"
  fi
  case "$name" in
    openssh-*|asyncssh|rclone)
      PORT_OPENSSH_INTERNAL="${PORTS[openssh-internal]:-2201}" PORT_OPENSSH_EXTERNAL="${PORTS[openssh-external]:-2202}" \
        PORT_ASYNCSSH="${PORTS[asyncssh]:-2203}" PORT_RCLONE="${PORTS[rclone]:-2204}" "$HARNESS/servers/env.sh" "$name" ;;
    *)
      printf 'export BENCH_HOST=127.0.0.1 BENCH_PORT=%q BENCH_USER=bench BENCH_KEY=%q BENCH_DIR=/ BENCH_NAME=%q BENCH_SERVER_PID=%q\n' \
        "${PORTS[$name]}" "$BENCH_STATE/client_ed25519" "$name" "$(cat "$BENCH_STATE/$name.pid")" ;;
  esac
}

# machine_info: markdown lines about this machine and the tools' versions.
machine_info() {
  echo "- machine: $(nproc) vCPU ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -sr); files on tmpfs (/dev/shm)"
  echo "- sftpgate $SFTPGATE_REV (release build, $(rustc --version 2>/dev/null | cut -d' ' -f1-2)); $(ssh -V 2>&1); AsyncSSH $(python3 -c 'import asyncssh; print(asyncssh.__version__)' 2>/dev/null || echo n/a); $( (rclone version 2>/dev/null || echo 'rclone n/a') | awk 'NR == 1'); $(openssl version | cut -d' ' -f1-2)"
}

# write_section FILE NAME < CONTENT: replaces the section between
# `<!-- BEGIN NAME -->` and `<!-- END NAME -->` in FILE (appends it when missing); the rest
# of FILE is left as it is.
write_section() {
  local script
  script="$(cat <<'PY'
import os, sys
path, name = sys.argv[1], sys.argv[2]
body = sys.stdin.read().rstrip("\n") + "\n"
begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
text = open(path).read() if os.path.exists(path) else "# Performance\n"
block = f"{begin}\n{body}{end}\n"
if begin in text and end in text:
    a = text.index(begin)
    b = text.index(end) + len(end)
    if b < len(text) and text[b] == "\n":
        b += 1
    text = text[:a] + block + text[b:]
else:
    text = text.rstrip("\n") + "\n\n" + block
open(path + ".tmp", "w").write(text)
os.replace(path + ".tmp", path)
PY
)"
  python3 -c "$script" "$1" "$2"
}
