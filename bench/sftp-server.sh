#!/usr/bin/env bash
# bench/sftp-server.sh: engine-only throughput of `sftpgate sftp-server` against OpenSSH's
# `sftp-server`, both driven by the OpenSSH client over pipes (`sftp -D`): no SSH, no crypto,
# no network, so the figures compare the two SFTP engines and their stdin/stdout paths.
#
# Both servers serve the same tmpfs directory: sftpgate as `sftp-server --root DIR`, OpenSSH's
# started in DIR (relative paths resolve there for both). Every figure runs A/B in pairs,
# the order alternating between runs; each run is one `sftp -b` session.
#
# Figures: 1 GiB upload and download with the client's default pipelining and with
# BENCH_DEEP_ARGS (every transfer hash-checked), 2,000 x 4 KiB files up and down
# (`put -r` / `get -r`, content checked), `ls -l` of a 10,000-entry directory (line count
# checked). Reported: median, min, max per server, the ratio sftpgate/OpenSSH of the medians
# and the median of the per-pair ratios (for times the ratio is inverted: > 1 means sftpgate
# is faster), and the servers' CPU time (user+sys of the server process, from `times` in a
# wrapper shell), the client's CPU time, and a ceiling: the best ratio any server could
# reach with this client (see `report`). Session setup (median of bare `pwd` sessions, per
# server) is subtracted from every timed session.
#
# Usage: bench/sftp-server.sh            (from anywhere; builds the release binary first)
# Env:   BENCH_RUNS       pairs per figure (5)
#        BENCH_SIZE_MB    big-file size in MiB (1024); e.g. 512 on a loaded machine
#        BENCH_SMALL_N    small files (2000), BENCH_SMALL_KB size each (4)
#        BENCH_LS_N       entries in the listed directory (10000)
#        BENCH_DEEP_ARGS  client options of the deep-pipelining variant ("-R 256 -B 261120";
#                         OpenSSH 9.2 rejects -B 262144 on upload: request + header > 256 KiB)
#        BENCH_TESTS      comma list from big,bigdeep,small,ls (all)
#        BENCH_SFTPGATE   sftpgate binary (target/release/sftpgate)
#        BENCH_OPENSSH    OpenSSH's sftp-server (/usr/lib/openssh/sftp-server)
#        BENCH_BUILD      1: `cargo build --release -p sftpgate` first (1)
#        BENCH_BASE       scratch directory parent (/dev/shm)
#        BENCH_OUT        also write the markdown report to this file
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "sftp-server bench: error: $*" >&2; exit 1; }
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

: "${BENCH_RUNS:=5}"
: "${BENCH_SIZE_MB:=1024}"
: "${BENCH_SMALL_N:=2000}"
: "${BENCH_SMALL_KB:=4}"
: "${BENCH_LS_N:=10000}"
: "${BENCH_DEEP_ARGS:=-R 256 -B 261120}"
: "${BENCH_TESTS:=big,bigdeep,small,ls}"
: "${BENCH_SFTPGATE:=$REPO/target/release/sftpgate}"
: "${BENCH_OPENSSH:=/usr/lib/openssh/sftp-server}"
: "${BENCH_BUILD:=1}"
: "${BENCH_BASE:=/dev/shm}"
: "${BENCH_OUT:=}"
want() { [[ ",$BENCH_TESTS," == *",$1,"* ]]; }

command -v sftp >/dev/null || die "OpenSSH sftp client not found (package openssh-client)"
[[ -x "$BENCH_OPENSSH" ]] || die "$BENCH_OPENSSH not found (package openssh-sftp-server)"
command -v sha256sum >/dev/null || die "sha256sum not found"
[[ -x /usr/bin/time ]] || die "/usr/bin/time not found (package time)"
((BASH_VERSINFO[0] >= 5)) || die "bash 5 needed (EPOCHREALTIME)"
if [[ "$BENCH_BUILD" == 1 ]]; then
  log "cargo build --release -p sftpgate"
  (cd "$REPO" && cargo build --release -p sftpgate) >&2
fi
[[ -x "$BENCH_SFTPGATE" ]] || die "$BENCH_SFTPGATE not found (cargo build --release -p sftpgate)"
[[ -d "$BENCH_BASE" && -w "$BENCH_BASE" ]] || BENCH_BASE="${TMPDIR:-/tmp}"

W="$(mktemp -d "$BENCH_BASE/sftp-server-bench.XXXXXX")"
trap 'rm -rf "$W"' EXIT
trap 'exit 130' INT TERM
SRV="$W/srv"     # what both servers serve
LOC="$W/local"   # the client's side
mkdir -p "$SRV" "$LOC"

# One wrapper per server: serve SRV, then record the server's CPU time (`times`, second
# line: user and sys of the shell's children) in $W/cpu. sftp waits for the wrapper, so the
# file is complete when sftp returns.
cat > "$W/sftpgate.sh" <<EOF
#!/bin/sh
cd '$SRV' || exit 1
'$BENCH_SFTPGATE' sftp-server --root '$SRV'
rc=\$?
times > '$W/cpu'
exit \$rc
EOF
cat > "$W/openssh.sh" <<EOF
#!/bin/sh
cd '$SRV' || exit 1
'$BENCH_OPENSSH'
rc=\$?
times > '$W/cpu'
exit \$rc
EOF
chmod +x "$W/sftpgate.sh" "$W/openssh.sh"
SERVERS=(sftpgate openssh)

# session SERVER BATCH [client args...]: one timed `sftp -b` session; sets SECS (setup not
# subtracted yet) and CPU (the server's user+sys seconds). Fails on any sftp error.
session() {
  local server="$1" batch="$2"; shift 2
  rm -f "$W/cpu"
  local t0=$EPOCHREALTIME
  # /usr/bin/time: CPU of sftp and of what it waited for (the wrapper and the server).
  /usr/bin/time -f '%U %S' -o "$W/total" sftp -q -b "$batch" "$@" -D "$W/$server.sh" > "$W/out" 2> "$W/err" ||
    die "$server: sftp failed on $(head -c 300 "$batch"): $(cat "$W/err")"
  local t1=$EPOCHREALTIME
  SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }')
  # `times`, second line: user and sys of the wrapper's children (the server).
  read -r CPU SYS < <(awk 'NR == 2 { n = 0; for (i = 1; i <= 2; i++) { split($i, p, "m"); sub("s", "", p[2]); v[i] = p[1] * 60 + p[2] } printf "%.3f %.3f\n", v[1] + v[2], v[2] }' "$W/cpu")
  CLIENT=$(awk -v s="$CPU" '{ c = $1 + $2 - s; printf "%.3f", (c < 0) ? 0 : c }' "$W/total")
}

# stats: numbers on stdin -> "median min max"
stats() {
  sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) { print "nan nan nan"; exit }
    m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.6g %.6g %.6g\n", m, a[1], a[NR] }'
}

# Every timed session appends "FIGURE SERVER RUN SECONDS CPU SYS CLIENT" to $W/results
# (server user+sys, server sys, client user+sys; seconds).
: > "$W/results"
declare -A SETUP
measure() { # measure FIGURE SERVER RUN BATCH [client args...]
  local figure="$1" server="$2" run="$3" batch="$4"; shift 4
  session "$server" "$batch" "$@"
  local secs
  secs=$(awk -v s="$SECS" -v z="${SETUP[$server]}" 'BEGIN { d = s - z; printf "%.6f", (d < 0.0001) ? 0.0001 : d }')
  echo "$figure $server $run $secs $CPU $SYS $CLIENT" >> "$W/results"
  log "  $figure $server run $run: ${secs} s, server CPU ${CPU} s (sys ${SYS}), client CPU ${CLIENT} s"
}
# order RUN: the servers in this run's order (A B, then B A, ...)
order() { if (($1 % 2)); then echo "${SERVERS[0]} ${SERVERS[1]}"; else echo "${SERVERS[1]} ${SERVERS[0]}"; fi; }

log "sftpgate: $BENCH_SFTPGATE ($("$BENCH_SFTPGATE" --version))"
log "OpenSSH:  $BENCH_OPENSSH; client $(ssh -V 2>&1)"
log "scratch:  $W; runs $BENCH_RUNS; tests $BENCH_TESTS"

# ---- session setup ---------------------------------------------------------------------------
printf 'pwd\n' > "$W/b.pwd"
for server in "${SERVERS[@]}"; do SETUP[$server]=0; done
for i in $(seq 9); do
  for server in $(order "$i"); do
    session "$server" "$W/b.pwd"
    echo "$SECS" >> "$W/setup.$server"
  done
done
for server in "${SERVERS[@]}"; do
  SETUP[$server]=$(stats < "$W/setup.$server" | awk '{ print $1 }')
  log "session setup $server: median ${SETUP[$server]} s (subtracted below)"
done
# Both directories must be empty (`ls -1` in a fresh session).
printf 'ls -1\n' > "$W/b.ls1"
for server in "${SERVERS[@]}"; do
  session "$server" "$W/b.ls1"
  [[ "$(grep -vc '^sftp>' "$W/out")" == 0 ]] || die "$server: the served directory is not empty: $(cat "$W/out")"
done

# ---- 1 GiB up and down -----------------------------------------------------------------------
BYTES=$((BENCH_SIZE_MB * 1048576))
if want big || want bigdeep; then
  log "creating a ${BENCH_SIZE_MB} MiB random file"
  head -c "$BYTES" /dev/urandom > "$LOC/big.bin"
  HASH=$(sha256sum < "$LOC/big.bin" | cut -d' ' -f1)
  printf 'put "%s" big.bin\n' "$LOC/big.bin" > "$W/b.put"
  printf 'get big.bin "%s"\n' "$LOC/dl.bin" > "$W/b.get"
  variants=()
  want big && variants+=(default)
  want bigdeep && variants+=(deep)
  check() { # check FILE WHAT
    [[ "$(sha256sum < "$1" | cut -d' ' -f1)" == "$HASH" ]] || die "$2: content differs (sha256)"
  }
  for i in $(seq "$BENCH_RUNS"); do
    for v in "${variants[@]}"; do
      extra=()
      [[ "$v" == deep ]] && read -r -a extra <<< "$BENCH_DEEP_ARGS"
      for server in $(order "$i"); do
        rm -f "$SRV/big.bin"
        measure "big-up-$v" "$server" "$i" "$W/b.put" "${extra[@]}"
        check "$SRV/big.bin" "$server upload ($v)"
        rm -f "$LOC/dl.bin"
        measure "big-down-$v" "$server" "$i" "$W/b.get" "${extra[@]}"
        check "$LOC/dl.bin" "$server download ($v)"
        rm -f "$LOC/dl.bin"
      done
    done
  done
  rm -f "$SRV/big.bin" "$LOC/big.bin"
fi

# ---- many small files ------------------------------------------------------------------------
if want small; then
  log "creating $BENCH_SMALL_N x $BENCH_SMALL_KB KiB files"
  mkdir -p "$LOC/small"
  head -c $((BENCH_SMALL_N * BENCH_SMALL_KB * 1024)) /dev/urandom |
    (cd "$LOC/small" && split -b $((BENCH_SMALL_KB * 1024)) -a 5 -d - f)
  tree_hash() { (cd "$1" && find . -type f | sort | xargs cat | sha256sum | cut -d' ' -f1); }
  count() { find "$1" -type f | wc -l; }
  SMALL_HASH=$(tree_hash "$LOC/small")
  printf 'put -r "%s" small\n' "$LOC/small" > "$W/b.sput"
  printf 'get -r small "%s"\n' "$LOC/sdl" > "$W/b.sget"
  for i in $(seq "$BENCH_RUNS"); do
    for server in $(order "$i"); do
      rm -rf "$SRV/small" "$LOC/sdl"
      measure small-up "$server" "$i" "$W/b.sput"
      [[ $(count "$SRV/small") == "$BENCH_SMALL_N" && $(tree_hash "$SRV/small") == "$SMALL_HASH" ]] ||
        die "$server: put -r left different files"
      measure small-down "$server" "$i" "$W/b.sget"
      [[ $(count "$LOC/sdl") == "$BENCH_SMALL_N" && $(tree_hash "$LOC/sdl") == "$SMALL_HASH" ]] ||
        die "$server: get -r fetched different files"
    done
  done
  rm -rf "$SRV/small" "$LOC/sdl" "$LOC/small"
fi

# ---- big listing -----------------------------------------------------------------------------
if want ls; then
  log "creating a directory of $BENCH_LS_N empty files"
  mkdir -p "$SRV/listing"
  (cd "$SRV/listing" && seq -f 'entry-%06g' 1 "$BENCH_LS_N" | xargs touch)
  printf 'ls -l listing\n' > "$W/b.ls"
  for i in $(seq "$BENCH_RUNS"); do
    for server in $(order "$i"); do
      measure ls "$server" "$i" "$W/b.ls"
      n=$(grep -c ' listing/entry-' "$W/out" || true)
      [[ "$n" == "$BENCH_LS_N" ]] || die "$server: ls -l listed $n entries, not $BENCH_LS_N"
    done
  done
  rm -rf "$SRV/listing"
fi

# ---- report ----------------------------------------------------------------------------------
# value FIGURE SECONDS -> the figure's unit (MB/s, files/s or s)
value() {
  case "$1" in
    big-*) awk -v b="$BYTES" -v s="$2" 'BEGIN { printf "%.1f", b / s / 1e6 }' ;;
    small-*) awk -v n="$BENCH_SMALL_N" -v s="$2" 'BEGIN { printf "%.0f", n / s }' ;;
    *) awk -v s="$2" 'BEGIN { printf "%.3f", s }' ;;
  esac
}
higher_is_better() { [[ "$1" != ls ]]; }
label() {
  local deep="${BENCH_DEEP_ARGS}"
  case "$1" in
    big-up-default) echo "${BENCH_SIZE_MB} MiB upload, client defaults (MB/s)" ;;
    big-down-default) echo "${BENCH_SIZE_MB} MiB download, client defaults (MB/s)" ;;
    big-up-deep) echo "${BENCH_SIZE_MB} MiB upload, \`$deep\` (MB/s)" ;;
    big-down-deep) echo "${BENCH_SIZE_MB} MiB download, \`$deep\` (MB/s)" ;;
    small-up) echo "$BENCH_SMALL_N x $BENCH_SMALL_KB KiB \`put -r\` (files/s)" ;;
    small-down) echo "$BENCH_SMALL_N x $BENCH_SMALL_KB KiB \`get -r\` (files/s)" ;;
    ls) echo "\`ls -l\` of $BENCH_LS_N entries (s, lower is better)" ;;
  esac
}
report() {
  echo "| figure | sftpgate median (min–max) | OpenSSH median (min–max) | ratio of medians | median of pair ratios | server CPU s, sftpgate / OpenSSH (median) | client CPU s (median) | ceiling |"
  echo "|---|---|---|---|---|---|---|---|"
  local figure
  for figure in big-up-default big-down-default big-up-deep big-down-deep small-up small-down ls; do
    grep -q "^$figure " "$W/results" || continue
    local cells=() server
    for server in "${SERVERS[@]}"; do
      local med min max
      read -r med min max < <(awk -v f="$figure" -v s="$server" '$1 == f && $2 == s { print $4 }' "$W/results" | stats)
      # a rate's min comes from the slowest run (max seconds)
      if higher_is_better "$figure"; then
        cells+=("$(value "$figure" "$med") ($(value "$figure" "$max")–$(value "$figure" "$min"))")
      else
        cells+=("$(value "$figure" "$med") ($(value "$figure" "$min")–$(value "$figure" "$max"))")
      fi
      eval "med_$server=$med"
    done
    # seconds ratio OpenSSH/sftpgate is the rate ratio sftpgate/OpenSSH: > 1 = sftpgate faster
    local ratio pairs cpu
    ratio=$(awk -v a="$med_sftpgate" -v b="$med_openssh" 'BEGIN { printf "%.2f", b / a }')
    pairs=$(awk -v f="$figure" '$1 == f { t[$2 " " $3] = $4; r[$3] = 1 }
      END { for (k in r) if (("sftpgate " k) in t && ("openssh " k) in t) print t["openssh " k] / t["sftpgate " k] }' "$W/results" |
      stats | awk '{ printf "%.2f", $1 }')
    cpu=$(for server in "${SERVERS[@]}"; do
      awk -v f="$figure" -v s="$server" '$1 == f && $2 == s { print $5 }' "$W/results" | stats | awk '{ printf "%.2f", $1 }'
      echo
    done | paste -sd/ | sed 's#/# / #')
    # The ceiling: the best ratio any server could reach against OpenSSH's median with this
    # client. The client is single-threaded: whatever the server does, a session takes at
    # least the client's own CPU time (median over both servers' sessions). So a ratio above
    # OpenSSH's time / the client's CPU is out of reach for any server; near it, the server
    # would have to answer in no time at all. (The client's CPU includes session setup, so
    # the session time here does too; CPU times tick in 10 ms, so tiny runs say nothing.)
    local client ceiling
    client=$(awk -v f="$figure" '$1 == f { print $7 }' "$W/results" | stats | awk '{ print $1 }')
    ceiling=$(awk -v t="$med_openssh" -v z="${SETUP[openssh]}" -v c="$client" 'BEGIN { printf "%.2f", (c > 0) ? (t + z) / c : 0 }')
    echo "| $(label "$figure") | ${cells[0]} | ${cells[1]} | **${ratio}×** | ${pairs}× | $cpu | $(awk -v c="$client" 'BEGIN { printf "%.2f", c }') | ≤ ${ceiling}× |"
  done
  echo
  echo "Session setup (subtracted): sftpgate $(awk -v s="${SETUP[sftpgate]}" 'BEGIN { printf "%.1f", s * 1000 }') ms, OpenSSH $(awk -v s="${SETUP[openssh]}" 'BEGIN { printf "%.1f", s * 1000 }') ms (median of 9 bare \`pwd\` sessions each)."
}
machine() {
  echo "- machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(awk '/MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r), load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- client: $(ssh -V 2>&1); OpenSSH server: $BENCH_OPENSSH (package $(dpkg-query -W -f='${Package} ${Version}' openssh-sftp-server 2>/dev/null || echo '?'))"
  echo "- sftpgate: $("$BENCH_SFTPGATE" --version) ($(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$REPO" && git diff --quiet HEAD -- crates 2>/dev/null || echo ' + local changes')), release build"
  echo "- scratch on $(df --output=fstype "$W" | tail -1) ($BENCH_BASE); runs per figure: $BENCH_RUNS (A/B pairs, order alternating); big file ${BENCH_SIZE_MB} MiB"
}
{
  echo "Run $(date -u '+%Y-%m-%d %H:%M UTC'): \`BENCH_RUNS=$BENCH_RUNS BENCH_SIZE_MB=$BENCH_SIZE_MB bench/sftp-server.sh\`"
  echo
  machine
  echo
  report
} | tee "${BENCH_OUT:-/dev/null}"
