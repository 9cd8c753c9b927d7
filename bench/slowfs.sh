#!/usr/bin/env bash
# bench/slowfs.sh: slow storage. sftpgate's Server on a LocalFs that adds a fixed latency
# (1 ms, tokio::time::sleep) to every file read and write (bench/loadgen's
# sftpgate-slowfs-server), with its concurrency at the default (Limits::max_in_flight) and
# forced to 1 (one request at a time, as OpenSSH, AsyncSSH and russh-sftp serve). A 256 MiB
# upload and download with the OpenSSH sftp client at its default pipelining (64 requests in
# flight; OpenSSH 9's client sizes them from the server's limits@openssh.com reply, 255 KiB
# here) and with -B 32768 (the request size of older clients and of servers without that
# extension), every download compared with the source. Target (issue 7): default >= 5x
# forced-1. The no-latency target is the same server without the added latency (LocalFs as
# `sftpgate serve` runs it): what each client variant moves on this machine with no latency
# at all, so the table shows how much of that the default reaches with the latency.
#
# Targets are interleaved, the order rotating per run. Writes a section into
# docs/performance.md. (The -nodelay variants set TCP_NODELAY on the listening socket; since
# sftpgate's Server sets it on every accepted socket itself, they measure the same server
# and are no longer run by default.)
#
# Usage: bench/slowfs.sh
# Env:   BENCH_RUNS (3)  SLOWFS_MB (256)  SLOWFS_DELAY_US (1000)
#        BENCH_CIPHER (aes128-gcm@openssh.com)
#        SLOWFS_TARGETS ("slow-default slow-1 no-latency"; also slow-default-nodelay,
#                       slow-1-nodelay, and slow-default-nospin: idle_spin off)
#        BENCH_DOC (docs/performance.md; empty: none), BENCH_BUILD, BENCH_STATE, BENCH_KEEP_STATE
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${BENCH_RUNS:=3}"
: "${SLOWFS_MB:=256}"
: "${SLOWFS_DELAY_US:=1000}"
: "${BENCH_CIPHER:=aes128-gcm@openssh.com}"
: "${SLOWFS_TARGETS:=slow-default slow-1 no-latency}"
: "${BENCH_DOC=$REPO/docs/performance.md}"
((BASH_VERSINFO[0] >= 5)) || die "bash 5 needed (EPOCHREALTIME)"

bench_prepare
read -r -a targets <<< "$SLOWFS_TARGETS"
for t in "${targets[@]}"; do
  pick_port "PORTS[$t]"
  STARTED+=("$t")
  args=(--delay-us "$SLOWFS_DELAY_US")
  [[ "$t" == no-latency ]] && args=(--delay-us 0)
  [[ "$t" == slow-1* ]] && args+=(--max-in-flight 1)
  [[ "$t" == *-nodelay ]] && args+=(--nodelay)
  [[ "$t" == *-nospin ]] && args+=(--idle-spin-us 0)
  start_testserver "$t" "${PORTS[$t]}" "${args[@]}"
done

W="$BENCH_STATE/slowfs-work"
mkdir -p "$W"
SRC="$W/src.bin"
head -c $((SLOWFS_MB * 1048576)) /dev/urandom > "$SRC"
printf 'pwd\n' > "$W/b.pwd"
printf 'put "%s" /slow.bin\n' "$SRC" > "$W/b.put"
printf 'get /slow.bin "%s/dl.bin"\n' "$W" > "$W/b.get"
VARIANTS=("default" "-B 32768")
SSH_OPTS=(-F /dev/null -i "$BENCH_STATE/client_ed25519" -c "$BENCH_CIPHER" -o IdentitiesOnly=yes
          -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
          -o LogLevel=ERROR -o Compression=no -o ControlMaster=no -o ControlPath=none
          -o ConnectTimeout=15 -o User=bench)
# timed TARGET BATCH [SFTP ARGS...]: seconds of one `sftp -b` session
timed() {
  local t0=$EPOCHREALTIME t="$1" b="$2"; shift 2
  timeout 900 sftp -q -b "$b" -P "${PORTS[$t]}" "${SSH_OPTS[@]}" "$@" 127.0.0.1 >/dev/null ||
    die "sftp -b $b $* against $t failed"
  echo "$EPOCHREALTIME - $t0" | bc -l
}
stats() { sort -g | awk '{a[NR]=$1} END{m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.6g %.6g %.6g\n", m, a[1], a[NR]}'; }

LOAD_BEFORE="$(uptime | sed 's/^.*load/load/')"
STARTED_AT="$(date -u '+%F %H:%M UTC')"
declare -A SETUP
for t in "${targets[@]}"; do
  SETUP[$t]="$(for _ in 1 2 3 4 5; do timed "$t" "$W/b.pwd"; done | stats | awk '{print $1}')"
done
n=${#targets[@]}
for ((r = 0; r < BENCH_RUNS; r++)); do
  for ((k = 0; k < n; k++)); do
    t="${targets[$(((k + r) % n))]}"
    for vi in "${!VARIANTS[@]}"; do
      v="${VARIANTS[$vi]}"; extra=(); [[ "$v" == default ]] || read -r -a extra <<< "$v"
      log "run $((r + 1))/$BENCH_RUNS $t ($v)"
      up="$(timed "$t" "$W/b.put" "${extra[@]}")"
      down="$(timed "$t" "$W/b.get" "${extra[@]}")"
      cmp -s "$SRC" "$W/dl.bin" || die "$t: downloaded file differs from the source"
      rm -f "$W/dl.bin" "$BENCH_STATE/data-$t/slow.bin"
      for d in up down; do
        secs="$(echo "${!d} - ${SETUP[$t]}" | bc -l)"
        echo "$SLOWFS_MB * 1048576 / $secs / 1000000" | bc -l >> "$W/$t.$vi.$d"
      done
      log "  up $(tail -1 "$W/$t.$vi.up" | xargs printf '%.1f') MB/s, down $(tail -1 "$W/$t.$vi.down" | xargs printf '%.1f') MB/s"
    done
  done
done
LOAD_AFTER="$(uptime | sed 's/^.*load/load/')"

vlabel() { [[ "$1" == default ]] && echo "sftp default (-R 64, 255 KiB requests)" || echo "sftp $1 (-R 64)"; }
TABLE="$(
  echo "| server | TCP_NODELAY | max_in_flight | client | upload MB/s | download MB/s |"
  echo "|---|---|---|---|---|---|"
  for vi in "${!VARIANTS[@]}"; do
    for t in "${targets[@]}"; do
      read -r um ul uh < <(stats < "$W/$t.$vi.up")
      read -r dm dl dh < <(stats < "$W/$t.$vi.down")
      printf '| %s | %s | %s | %s | %.1f [%.1f-%.1f] | %.1f [%.1f-%.1f] |\n' "$t" \
        "$([[ "$t" == *-nodelay ]] && echo 'on (+ listener)' || echo on)" "$([[ "$t" == slow-1* ]] && echo 1 || echo 'default (64)')" \
        "$(vlabel "${VARIANTS[$vi]}")" "$um" "$ul" "$uh" "$dm" "$dl" "$dh"
    done
  done
  echo
  echo "| client | TCP_NODELAY | upload: default / forced-1 | download: default / forced-1 | target | upload / download: default / no-latency |"
  echo "|---|---|---|---|---|---|"
  median() { stats < "$1" | cut -d' ' -f1; }
  for vi in "${!VARIANTS[@]}"; do
    for sfx in "" -nodelay; do
      [[ -f "$W/slow-default$sfx.$vi.up" && -f "$W/slow-1$sfx.$vi.up" ]] || continue
      u=$(echo "$(median "$W/slow-default$sfx.$vi.up") / $(median "$W/slow-1$sfx.$vi.up")" | bc -l)
      d=$(echo "$(median "$W/slow-default$sfx.$vi.down") / $(median "$W/slow-1$sfx.$vi.down")" | bc -l)
      # How close the default comes to the same server without the latency (the client's
      # ceiling): a ratio to forced-1 can be no higher than ceiling / forced-1.
      ceiling="not run"
      if [[ -f "$W/no-latency.$vi.up" ]]; then
        ceiling="$(printf '%.2f / %.2f' \
          "$(echo "$(median "$W/slow-default$sfx.$vi.up") / $(median "$W/no-latency.$vi.up")" | bc -l)" \
          "$(echo "$(median "$W/slow-default$sfx.$vi.down") / $(median "$W/no-latency.$vi.down")" | bc -l)")"
      fi
      printf '| %s | %s | %.1fx | %.1fx | >= 5x | %s |\n' "$(vlabel "${VARIANTS[$vi]}")" "$([[ -n "$sfx" ]] && echo 'on (+ listener)' || echo on)" "$u" "$d" "$ceiling"
    done
  done
)"
echo "$TABLE"

if [[ -n "$BENCH_DOC" ]]; then
  {
    echo "## Slow storage: +$((SLOWFS_DELAY_US / 1000)) ms per file read and write (bench/slowfs.sh)"
    echo
    echo "Run $STARTED_AT with \`BENCH_RUNS=$BENCH_RUNS SLOWFS_MB=$SLOWFS_MB bench/slowfs.sh\`: ${SLOWFS_MB} MiB put and get with OpenSSH's sftp at its default pipelining (64 requests in flight of the size the server's limits@openssh.com allow: 255 KiB) and with -B 32768, $BENCH_CIPHER, each download compared with the source; session setup (median of 5 bare sessions) subtracted; median [min-max] of $BENCH_RUNS runs, servers interleaved. Server: bench/loadgen's sftpgate-slowfs-server (sftpgate's Server, LocalFs wrapped so that every File::read and File::write first sleeps ${SLOWFS_DELAY_US} us with tokio::time::sleep, which rounds up to the timer's 1 ms tick); no-latency is the same server without the sleep (then LocalFs exactly as sftpgate serve runs it), what each client variant moves here with no latency at all. Both read a large READ into its SSH packets (File::read_parts: one pread per packet of these files in memory), the slow one after one sleep per READ."
    echo
    machine_info
    echo "- load (uptime) before: $LOAD_BEFORE; after: $LOAD_AFTER"
    echo
    echo "$TABLE"
  } | write_section "$BENCH_DOC" "bench/slowfs.sh"
  log "wrote the slow-storage section of $BENCH_DOC"
fi
