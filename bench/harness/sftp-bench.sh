#!/usr/bin/env bash
# sftp-bench.sh: black-box SFTP server benchmark with the OpenSSH sftp client (batch mode).
# Runs unchanged against any SFTP server that accepts the key. See README.md.
#
# Target (env):  BENCH_HOST (127.0.0.1)  BENCH_PORT (required)  BENCH_USER ($USER)
#                BENCH_KEY (required, private key file)  BENCH_DIR (required, remote dir to work in)
# Options (env): BENCH_CIPHER   aes128-gcm@openssh.com | chacha20-poly1305@openssh.com | ...
#                BENCH_RUNS     repetitions per figure (3)
#                BENCH_TESTS    comma list from: conn,big,bigdeep,small,ls,stat,raw,crypto (all)
#                BENCH_SIZE_MB  big-file size in MiB (1024)
#                BENCH_SMALL_N  number of small files (2000), BENCH_SMALL_KB size each (4)
#                BENCH_LS_N     entries in the listed directory (10000)
#                BENCH_LS_REPEAT listings per timed session (5): the figure is the session's time
#                               less the median session setup, divided by this; a bare session
#                               setup can vary by more than one listing takes (OpenSSH's sshd:
#                               330-430 ms against ~100 ms), so one listing per session mostly
#                               measured that
#                BENCH_STAT_N   sequential stats per run (500)
#                BENCH_DEEP_ARGS sftp args of the deep-pipelining variant ("-R 256 -B 261120"; an
#                               OpenSSH <= 9.x client rejects -B 262144: request+header > 256 KiB)
#                BENCH_KEX      pin the sftp/ssh key exchange (e.g. curve25519-sha256); default: client default
#                BENCH_SERVER_PID  optional PID of the server's listening process (same machine): then
#                               the server's CPU time per GiB is recorded for the 1 GiB transfers
#                               (utime+stime of it and of its reaped children, from /proc; the median
#                               server CPU of a bare session setup is subtracted)
#                BENCH_SERVER_CGROUP  optional cgroup directory that holds the server and what it starts
#                               (bench/lib.sh makes one): then its CPU time comes from the cgroup
#                               (v1 cpuacct.usage or v2 cpu.stat), exact, instead of /proc's 10 ms
#                               ticks, which also miss a child not yet reaped
#                BENCH_RAW      auto|yes|no: raw 'ssh cat' ceiling (auto = only if the target gives a shell)
#                BENCH_NAME     label for the results (host:port)
#                BENCH_RESULTS  markdown file to append result rows to (none)
#                BENCH_ALLOW_REMOTE=1 to allow a non-loopback BENCH_HOST
#                BENCH_CACHE    local directory that keeps the random test files between runs of
#                               this script (big-<MiB>.bin, small-<N>x<KB>/); default: made per run
#
# Copy of tools/bench (../shared/bench) improved for sftpgate's bench/e2e.sh: every 1 GiB
# download (which reads back the upload of the same run) is compared byte for byte with the
# source, every small-file download too (diff -r); test files can be reused (BENCH_CACHE).
# The "default" variant is labelled "-B per server limits": OpenSSH >= 8.x's sftp without -B
# sizes its requests from the server's limits@openssh.com reply (OpenSSH's sftp-server and
# sftpgate: 255 KiB), and only uses 32 KiB against servers without that extension.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() { echo "sftp-bench: error: $*" >&2; exit 1; }
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

: "${BENCH_HOST:=127.0.0.1}"
: "${BENCH_PORT:?set BENCH_PORT}"
: "${BENCH_USER:=$(id -un)}"
: "${BENCH_KEY:?set BENCH_KEY (private key file)}"
: "${BENCH_DIR:?set BENCH_DIR (remote directory to work in)}"
: "${BENCH_CIPHER:=aes128-gcm@openssh.com}"
: "${BENCH_RUNS:=3}"
: "${BENCH_TESTS:=conn,big,bigdeep,small,ls,stat,raw,crypto}"
: "${BENCH_SIZE_MB:=1024}"
: "${BENCH_SMALL_N:=2000}"
: "${BENCH_SMALL_KB:=4}"
: "${BENCH_LS_N:=10000}"
: "${BENCH_LS_REPEAT:=5}"
: "${BENCH_STAT_N:=500}"
: "${BENCH_RAW:=auto}"
: "${BENCH_DEEP_ARGS:=-R 256 -B 261120}"
: "${BENCH_NAME:=$BENCH_HOST:$BENCH_PORT}"
: "${BENCH_RESULTS:=}"
: "${PYTHON:=python3}"
export BENCH_HOST BENCH_PORT BENCH_USER BENCH_KEY BENCH_CIPHER

case "$BENCH_HOST" in
  127.0.0.1|::1|localhost) ;;
  *) [[ "${BENCH_ALLOW_REMOTE:-0}" == 1 ]] || die "BENCH_HOST=$BENCH_HOST is not loopback (set BENCH_ALLOW_REMOTE=1)";;
esac
[[ -r "$BENCH_KEY" ]] || die "cannot read BENCH_KEY=$BENCH_KEY"
command -v sftp >/dev/null || die "OpenSSH sftp client not found"
"$PYTHON" -c 'import asyncssh' 2>/dev/null || die "python module asyncssh missing (pip install asyncssh)"
want() { [[ ",$BENCH_TESTS," == *",$1,"* ]]; }

# ---- local scratch (tmpfs if available) and remote run dir ----------------------------------
if [[ -d /dev/shm && -w /dev/shm ]]; then LBASE=/dev/shm; else LBASE="${TMPDIR:-/tmp}"; fi
LTMP="$(mktemp -d "$LBASE/sftp-bench.XXXXXX")"
RUNID="sftp-bench-$(date +%s)-$$"
RDIR="${BENCH_DIR%/}/$RUNID"
[[ "$BENCH_DIR" == / ]] && RDIR="/$RUNID"
REMOTE_MADE=0
cleanup() {
  local rc=$?
  rm -rf "$LTMP"
  if ((REMOTE_MADE)); then
    timeout 300 "$PYTHON" "$HERE/sftp_meta.py" rmtree "$RDIR" >/dev/null 2>&1 || echo "sftp-bench: warning: could not remove remote $RDIR" >&2
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SSH_OPTS=(-F /dev/null -i "$BENCH_KEY" -c "$BENCH_CIPHER" -o IdentitiesOnly=yes -o BatchMode=yes
          -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
          -o Compression=no -o ControlMaster=no -o ControlPath=none -o ConnectTimeout=15
          -o User="$BENCH_USER")
[[ -n "${BENCH_KEX:-}" ]] && SSH_OPTS+=(-o KexAlgorithms="$BENCH_KEX")
# sftp parses "host:path", so an IPv6 literal needs brackets there (ssh takes it bare)
SFTP_HOST="$BENCH_HOST"; [[ "$BENCH_HOST" == *:* ]] && SFTP_HOST="[$BENCH_HOST]"
# sftp_batch FILE [extra sftp args...]: run one non-interactive sftp session
sftp_batch() {
  local b="$1"; shift
  sftp -q -b "$b" -P "$BENCH_PORT" "${SSH_OPTS[@]}" "$@" "$SFTP_HOST"
}
now() { date +%s.%N; }
# server CPU seconds so far (self + reaped children), or empty if BENCH_SERVER_PID is not usable
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
srv_cpu() {
  if [[ -n "${BENCH_SERVER_CGROUP:-}" ]]; then
    if [[ -r "$BENCH_SERVER_CGROUP/cpuacct.usage" ]]; then
      awk '{printf "%.6f\n", $1 / 1e9}' "$BENCH_SERVER_CGROUP/cpuacct.usage"; return 0
    elif [[ -r "$BENCH_SERVER_CGROUP/cpu.stat" ]]; then
      awk '$1 == "usage_usec" {printf "%.6f\n", $2 / 1e6}' "$BENCH_SERVER_CGROUP/cpu.stat"; return 0
    fi
  fi
  [[ -n "${BENCH_SERVER_PID:-}" && -r "/proc/${BENCH_SERVER_PID}/stat" ]] || return 0
  sed 's/^.*) //' "/proc/${BENCH_SERVER_PID}/stat" | awk -v t="$CLK_TCK" '{printf "%.3f\n", ($12+$13+$14+$15)/t}'
}
# cpu_per_gib BEFORE AFTER BYTES -> server CPU seconds per GiB
SETUP_CPU=0
cpu_per_gib() { [[ -n "$1" && -n "$2" ]] && echo "($2 - $1 - $SETUP_CPU) * 1073741824 / $3" | bc -l | awk '{printf "%.3f\n", $1}'; return 0; }
# Session setup (TCP + key exchange + auth + SFTP init) is measured first and its median is
# subtracted from every timed session below, so the figures describe the transfer itself.
SETUP_S=0
net() { echo "$2 - $1 - $SETUP_S" | bc -l | awk '{printf "%.6f\n", ($1 < 0.001) ? 0.001 : $1}'; }
# stats: read numbers on stdin -> "median min max"
stats() { sort -g | awk '{a[NR]=$1} END{ if(NR==0){print "nan nan nan"; exit}
  m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.6g %.6g %.6g\n", m, a[1], a[NR]}'; }

ROWS=()
# record METRIC UNIT "median min max" NOTE
record() {
  local metric="$1" unit="$2" med min max; read -r med min max <<<"$3"
  ROWS+=("$metric|$med|$min|$max|$unit|${4:-}")
  printf '  %-34s median %-10s min %-10s max %-10s %s\n' "$metric" "$med" "$min" "$max" "$unit" >&2
}
# rate BYTES_OR_COUNT SCALE: times on stdin -> "median min max" of COUNT/time/SCALE (min rate = max time)
rate() { local n="$1" scale="$2"; stats | awk -v n="$n" -v s="$scale" '{printf "%.1f %.1f %.1f\n", n/$1/s, n/$3/s, n/$2/s}'; }

# ---- connectivity check ----------------------------------------------------------------------
log "target $BENCH_NAME ($BENCH_USER@$BENCH_HOST:$BENCH_PORT dir $BENCH_DIR) cipher $BENCH_CIPHER runs $BENCH_RUNS"
printf 'pwd\n' > "$LTMP/b.pwd"
if ! out="$(timeout 30 sftp -b "$LTMP/b.pwd" -P "$BENCH_PORT" "${SSH_OPTS[@]}" "$SFTP_HOST" 2>&1)"; then
  die "target $BENCH_HOST:$BENCH_PORT did not give an SFTP session with key $BENCH_KEY and cipher $BENCH_CIPHER:
$out"
fi
SERVER_VERSION="$(timeout 30 "$PYTHON" "$HERE/sftp_meta.py" check 2>&1)" || die "python client could not connect: $SERVER_VERSION"
timeout 60 "$PYTHON" "$HERE/sftp_meta.py" mkdir "$RDIR" || die "cannot create remote dir $RDIR (is BENCH_DIR=$BENCH_DIR writable?)"
REMOTE_MADE=1
log "server: $SERVER_VERSION; client: $(ssh -V 2>&1); remote run dir $RDIR"

# ---- session setup ---------------------------------------------------------------------------
if want conn; then
  nconn=$((BENCH_RUNS < 7 ? 7 : BENCH_RUNS))
  log "conn: sftp session setup + pwd + exit, $nconn runs"
  : > "$LTMP/c.conn"
  for i in $(seq "$nconn"); do
    c0=$(srv_cpu); t0=$(now); sftp_batch "$LTMP/b.pwd" >/dev/null; t1=$(now)
    echo "$t1 - $t0" | bc -l
    if [[ -n "$c0" ]]; then sleep 0.3; c1=$(srv_cpu); echo "$c1 - $c0" | bc -l >> "$LTMP/c.conn"; fi
  done | stats > "$LTMP/r"
  SETUP_S=$(awk '{print $1}' "$LTMP/r")
  if [[ -s "$LTMP/c.conn" ]]; then
    SETUP_CPU=$(stats < "$LTMP/c.conn" | awk '{print $1}')
    record "server CPU per session setup" cpu-ms "$(stats < "$LTMP/c.conn" | awk '{printf "%.1f %.1f %.1f\n", $1*1000, $2*1000, $3*1000}')"
  fi
  record "session setup (connect+auth+pwd)" ms "$(awk '{printf "%.1f %.1f %.1f\n", $1*1000, $2*1000, $3*1000}' "$LTMP/r")" 
else
  log "conn not selected: timings below include session setup"
fi

# ---- big file --------------------------------------------------------------------------------
if want big || want bigdeep; then
  BYTES=$((BENCH_SIZE_MB * 1048576))
  if [[ -n "${BENCH_CACHE:-}" ]]; then
    mkdir -p "$BENCH_CACHE"; BIG="$BENCH_CACHE/big-${BENCH_SIZE_MB}.bin"
  else
    BIG="$LTMP/big.bin"
  fi
  if [[ ! -f "$BIG" || "$(stat -c %s "$BIG")" != "$BYTES" ]]; then
    log "creating ${BENCH_SIZE_MB} MiB random file"
    head -c "$BYTES" /dev/urandom > "$BIG.tmp" && mv "$BIG.tmp" "$BIG"
  fi
  printf 'put "%s" "%s/big.bin"\n' "$BIG" "$RDIR" > "$LTMP/b.put"
  printf 'get "%s/big.bin" "%s/dl.bin"\n' "$RDIR" "$LTMP" > "$LTMP/b.get"
  variants=(); want big && variants+=(default); want bigdeep && variants+=(deep)
  : > "$LTMP/t.default.up"; : > "$LTMP/t.default.down"; : > "$LTMP/t.deep.up"; : > "$LTMP/t.deep.down"
  : > "$LTMP/c.default.up"; : > "$LTMP/c.default.down"; : > "$LTMP/c.deep.up"; : > "$LTMP/c.deep.down"
  for i in $(seq "$BENCH_RUNS"); do
    for v in "${variants[@]}"; do
      extra=(); [[ "$v" == deep ]] && read -r -a extra <<<"$BENCH_DEEP_ARGS"
      log "big $v run $i/$BENCH_RUNS"
      c0=$(srv_cpu); t0=$(now); sftp_batch "$LTMP/b.put" "${extra[@]}" >/dev/null; t1=$(now)
      net "$t0" "$t1" >> "$LTMP/t.$v.up"
      sleep 0.5; c1=$(srv_cpu); cpu_per_gib "$c0" "$c1" "$BYTES" >> "$LTMP/c.$v.up"
      t0=$(now); sftp_batch "$LTMP/b.get" "${extra[@]}" >/dev/null; t1=$(now)
      net "$t0" "$t1" >> "$LTMP/t.$v.down"
      sleep 0.5; c2=$(srv_cpu); cpu_per_gib "$c1" "$c2" "$BYTES" >> "$LTMP/c.$v.down"
      sz=$(stat -c %s "$LTMP/dl.bin"); [[ "$sz" == "$BYTES" ]] || die "downloaded size $sz != $BYTES"
      # Not timed: the download is this run's upload read back, so both are verified.
      cmp -s "$BIG" "$LTMP/dl.bin" || die "run $i ($v): downloaded file differs from the uploaded one"
      rm -f "$LTMP/dl.bin"
    done
  done
  for v in "${variants[@]}"; do
    label="default (-R 64, -B per server limits)"; [[ "$v" == deep ]] && label="$BENCH_DEEP_ARGS"
    record "1GiB upload, $label" MB/s "$(rate "$BYTES" 1e6 < "$LTMP/t.$v.up")"
    record "1GiB download, $label" MB/s "$(rate "$BYTES" 1e6 < "$LTMP/t.$v.down")"
  done
  for v in "${variants[@]}"; do
    label="default (-R 64, -B per server limits)"; [[ "$v" == deep ]] && label="$BENCH_DEEP_ARGS"
    [[ -s "$LTMP/c.$v.up" ]] && record "server CPU per GiB upload, $label" "cpu-s/GiB" "$(stats < "$LTMP/c.$v.up")"
    [[ -s "$LTMP/c.$v.down" ]] && record "server CPU per GiB download, $label" "cpu-s/GiB" "$(stats < "$LTMP/c.$v.down")"
  done
  [[ "$BENCH_SIZE_MB" != 1024 ]] && log "note: big file was ${BENCH_SIZE_MB} MiB, not 1 GiB"
fi

# ---- many small files ------------------------------------------------------------------------
if want small; then
  log "small: $BENCH_SMALL_N x ${BENCH_SMALL_KB} KiB"
  if [[ -n "${BENCH_CACHE:-}" ]]; then
    mkdir -p "$BENCH_CACHE"; SMALL="$BENCH_CACHE/small-${BENCH_SMALL_N}x${BENCH_SMALL_KB}"
  else
    SMALL="$LTMP/small"
  fi
  if [[ ! -d "$SMALL" || "$(find "$SMALL" -type f | wc -l)" != "$BENCH_SMALL_N" ]]; then
    rm -rf "$SMALL"; mkdir -p "$SMALL"
    head -c $((BENCH_SMALL_N * BENCH_SMALL_KB * 1024)) /dev/urandom |
      (cd "$SMALL" && split -b $((BENCH_SMALL_KB * 1024)) -a 5 -d - f)
  fi
  : > "$LTMP/t.small.up"; : > "$LTMP/t.small.down"
  for i in $(seq "$BENCH_RUNS"); do
    printf 'put -r "%s" "%s/small.%d"\n' "$SMALL" "$RDIR" "$i" > "$LTMP/b.sput"
    printf 'get -r "%s/small.%d" "%s/sdl"\n' "$RDIR" "$i" "$LTMP" > "$LTMP/b.sget"
    log "small run $i/$BENCH_RUNS"
    t0=$(now); sftp_batch "$LTMP/b.sput" >/dev/null; t1=$(now); net "$t0" "$t1" >> "$LTMP/t.small.up"
    t0=$(now); sftp_batch "$LTMP/b.sget" >/dev/null; t1=$(now); net "$t0" "$t1" >> "$LTMP/t.small.down"
    n=$(find "$LTMP/sdl" -type f | wc -l); [[ "$n" == "$BENCH_SMALL_N" ]] || die "small download got $n files, want $BENCH_SMALL_N"
    diff -rq "$SMALL" "$LTMP/sdl" >/dev/null || die "small files: downloaded content differs from the uploaded files"
    rm -rf "$LTMP/sdl"
  done
  record "${BENCH_SMALL_N}x${BENCH_SMALL_KB}KiB put -r" files/s "$(rate "$BENCH_SMALL_N" 1 < "$LTMP/t.small.up")"
  record "${BENCH_SMALL_N}x${BENCH_SMALL_KB}KiB get -r" files/s "$(rate "$BENCH_SMALL_N" 1 < "$LTMP/t.small.down")"
fi

# ---- large directory listing -----------------------------------------------------------------
if want ls; then
  log "ls: creating $BENCH_LS_N entries (python client, pipelined, not timed)"
  timeout 600 "$PYTHON" "$HERE/sftp_meta.py" mkfiles "$RDIR/list" "$BENCH_LS_N"
  for _ in $(seq "$BENCH_LS_REPEAT"); do printf 'ls -l "%s/list"\n' "$RDIR"; done > "$LTMP/b.ls"
  for i in $(seq "$BENCH_RUNS"); do
    t0=$(now); sftp_batch "$LTMP/b.ls" > "$LTMP/ls.out"; t1=$(now)
    n=$(grep -cE '[ /]e[0-9]{5}$' "$LTMP/ls.out" || true)
    want_n=$((BENCH_LS_N * BENCH_LS_REPEAT))
    [[ "$n" -ge "$want_n" ]] || die "ls -l listed $n entries, want $want_n ($BENCH_LS_REPEAT x $BENCH_LS_N)"
    net "$t0" "$t1" | awk -v r="$BENCH_LS_REPEAT" '{printf "%.6f\n", $1 / r}'
  done | stats | awk '{printf "%.3f %.3f %.3f\n", $1, $2, $3}' > "$LTMP/r"
  record "ls -l of $BENCH_LS_N entries" s "$(cat "$LTMP/r")"
fi

# ---- metadata latency ------------------------------------------------------------------------
if want stat; then
  log "stat: $BENCH_STAT_N sequential stat, $BENCH_RUNS connections (asyncssh client)"
  timeout 600 "$PYTHON" "$HERE/sftp_meta.py" stat "$RDIR" "$BENCH_STAT_N" "$BENCH_RUNS" > "$LTMP/stat.out"
  record "stat latency (median of run medians)" us "$(awk '{print $1}' "$LTMP/stat.out" | stats)"
  record "stat latency p90 (per run)" us "$(awk '{print $3}' "$LTMP/stat.out" | stats)"
fi

# ---- ceilings: raw SSH channel and crypto ----------------------------------------------------
if want raw && [[ "$BENCH_RAW" != no ]]; then
  if timeout 20 ssh -p "$BENCH_PORT" "${SSH_OPTS[@]}" "$BENCH_HOST" true </dev/null >/dev/null 2>&1; then
    RAWBYTES=$((BENCH_SIZE_MB * 1048576))
    RAWSRC="${BIG:-$LTMP/big.bin}"
    [[ -f "$RAWSRC" ]] || { RAWSRC="$LTMP/raw.bin"; head -c "$RAWBYTES" /dev/urandom > "$RAWSRC"; }
    : > "$LTMP/t.raw.up"; : > "$LTMP/t.raw.down"
    for i in $(seq "$BENCH_RUNS"); do
      log "raw channel run $i/$BENCH_RUNS"
      t0=$(now); ssh -p "$BENCH_PORT" "${SSH_OPTS[@]}" "$BENCH_HOST" 'cat > /dev/null' < "$RAWSRC"; t1=$(now)
      net "$t0" "$t1" >> "$LTMP/t.raw.up"
      t0=$(now); ssh -p "$BENCH_PORT" "${SSH_OPTS[@]}" "$BENCH_HOST" "head -c $RAWBYTES /dev/zero" </dev/null > /dev/null; t1=$(now)
      net "$t0" "$t1" >> "$LTMP/t.raw.down"
    done
    record "raw ssh 'cat > /dev/null' < 1GiB (up)" MB/s "$(rate "$RAWBYTES" 1e6 < "$LTMP/t.raw.up")"
    record "raw ssh 'head -c 1GiB /dev/zero' (down)" MB/s "$(rate "$RAWBYTES" 1e6 < "$LTMP/t.raw.down")"
  elif [[ "$BENCH_RAW" == yes ]]; then
    die "BENCH_RAW=yes but the target gives no shell"
  else
    log "raw: target gives no shell; skipped (measure the ceiling against OpenSSH sshd)"
  fi
fi

if want crypto; then
  case "$BENCH_CIPHER" in
    aes128-gcm@openssh.com) evp=aes-128-gcm ;;
    aes256-gcm@openssh.com) evp=aes-256-gcm ;;
    chacha20-poly1305@openssh.com) evp=chacha20-poly1305 ;;
    aes128-ctr) evp=aes-128-ctr ;; aes256-ctr) evp=aes-256-ctr ;;
    *) evp="" ;;
  esac
  if [[ -n "$evp" ]] && command -v openssl >/dev/null; then
    log "crypto: openssl speed -evp $evp (1 core, 16 KiB blocks)"
    for i in $(seq "$BENCH_RUNS"); do
      openssl speed -seconds 2 -bytes 16384 -evp "$evp" 2>/dev/null | awk -v a="$evp" 'tolower($1)==a {v=$NF} END{sub(/k$/,"",v); printf "%.1f\n", v*1000/1e6}'
    done | stats > "$LTMP/r"
    record "openssl speed -evp $evp 16KiB, 1 core" MB/s "$(cat "$LTMP/r")"
  fi
fi

# ---- report ----------------------------------------------------------------------------------
echo
echo "sftp-bench: $BENCH_NAME  server=$SERVER_VERSION  cipher=$BENCH_CIPHER  runs=$BENCH_RUNS"
printf '%-40s %12s %12s %12s  %s\n' metric median min max unit
for r in "${ROWS[@]}"; do
  IFS='|' read -r m med mn mx u _ <<<"$r"
  printf '%-40s %12s %12s %12s  %s\n' "$m" "$med" "$mn" "$mx" "$u"
done
if [[ -n "$BENCH_RESULTS" ]]; then
  {
    for r in "${ROWS[@]}"; do
      IFS='|' read -r m med mn mx u _ <<<"$r"
      printf '| %s | %s | %s | %s | **%s** | %s | %s | %s |\n' "$(date -u +%F)" "$BENCH_NAME" "$BENCH_CIPHER" "$m" "$med" "$mn" "$mx" "$u"
    done
  } >> "$BENCH_RESULTS"
  log "appended ${#ROWS[@]} rows to $BENCH_RESULTS"
fi
