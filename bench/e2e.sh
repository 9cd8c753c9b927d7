#!/usr/bin/env bash
# bench/e2e.sh: sftpgate end to end against OpenSSH (internal-sftp and sftp-server), AsyncSSH
# and rclone (`rclone serve sftp`, when installed), same OpenSSH client, same cipher, same run;
# writes the tables into docs/performance.md.
#
# Builds release, starts `sftpgate serve` (user "bench" with the harness's key, root on
# /dev/shm; users via `sftpgate user add` when the binary has it, else [[users]] in
# sftpgate.toml) and the reference servers on free ports in 2201-2209, then runs
# bench/harness/sftp-bench.sh (a copy of tools/bench, see its header) against each, for each
# cipher. With BENCH_INTERLEAVE=1 (default) each of the BENCH_RUNS samples of every figure is
# its own round over all targets, the target order rotating from round to round, so that
# load changes on a shared machine hit every server alike; the rounds are pooled (median of
# the samples, min, max). Everything is stopped and removed at the end.
#
# Usage: bench/e2e.sh                           (from anywhere)
# Env:   BENCH_RUNS        samples per figure (3)
#        BENCH_SIZE_MB     big-file size in MiB (1024); e.g. 512 on a loaded machine
#        BENCH_INTERLEAVE  1: one round per sample, rotating target order (1); 0: one round
#        CIPHERS           ("aes128-gcm@openssh.com chacha20-poly1305@openssh.com")
#        TARGETS           ("sftpgate sftpgate-nodelay openssh-internal openssh-external asyncssh
#                          rclone"); sftpgate-nodelay and sftpgate-inline are bench/loadgen's test
#                          server (sftpgate's Server on LocalFs) with server settings changed,
#                          see start_target in bench/lib.sh
#        BENCH_TESTS       harness tests (conn,big,bigdeep,small,ls,stat,raw,crypto); raw runs
#                          against openssh-external only, crypto once per round and cipher
#        BENCH_BASE        target the ratios are against (openssh-external)
#        BENCH_DOC         markdown file to write the section into (docs/performance.md;
#                          empty: do not write)
#        BENCH_BUILD       1: cargo build --release first (1)
#        BENCH_STATE       state dir (/dev/shm/sftpgate-e2e-<uid>); removed at the end unless
#                          BENCH_KEEP_STATE=1
#        BENCH_CGROUP      1: each server in a CPU cgroup of its own where the machine allows,
#                          its CPU read from there, exactly; 0: from /proc (1; bench/lib.sh)
#        also the harness's BENCH_SMALL_N, BENCH_SMALL_KB, BENCH_LS_N, BENCH_LS_REPEAT, BENCH_STAT_N,
#        BENCH_DEEP_ARGS, BENCH_KEX
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${BENCH_RUNS:=3}"
: "${BENCH_SIZE_MB:=1024}"
: "${BENCH_INTERLEAVE:=1}"
: "${CIPHERS:=aes128-gcm@openssh.com chacha20-poly1305@openssh.com}"
: "${TARGETS:=sftpgate sftpgate-nodelay openssh-internal openssh-external asyncssh rclone}"
: "${BENCH_TESTS:=conn,big,bigdeep,small,ls,stat,raw,crypto}"
: "${BENCH_BASE:=openssh-external}"
: "${BENCH_DOC=$REPO/docs/performance.md}"
export BENCH_SIZE_MB
for v in BENCH_SMALL_N BENCH_SMALL_KB BENCH_LS_N BENCH_LS_REPEAT BENCH_STAT_N BENCH_DEEP_ARGS BENCH_KEX; do
  if [[ -n "${!v:-}" ]]; then export "${v?}"; fi
done
COMMAND="BENCH_RUNS=$BENCH_RUNS BENCH_SIZE_MB=$BENCH_SIZE_MB${BENCH_INTERLEAVE:+ BENCH_INTERLEAVE=$BENCH_INTERLEAVE} bench/e2e.sh"

command -v sftp >/dev/null || die "OpenSSH sftp client not found"
python3 -c 'import asyncssh' 2>/dev/null || die "python module asyncssh missing (pip install asyncssh): the harness needs it"
targets=()
for t in $TARGETS; do
  if [[ "$t" == rclone ]] && ! command -v rclone >/dev/null; then
    log "rclone not installed (apt-get install rclone): left out"; continue
  fi
  targets+=("$t")
done

bench_prepare
LOAD_BEFORE="$(uptime | sed 's/^.*load/load/')"
STARTED_AT="$(date -u '+%F %H:%M UTC')"
start_targets "${targets[@]}"

declare -A BUFLEN
for t in "${targets[@]}"; do
  case "$t" in openssh-*|asyncssh|rclone) u="$(id -un)" ;; *) u=bench ;; esac
  BUFLEN[$t]="$(client_buflen "${PORTS[$t]}" "$u")"
done

RESULTS="$BENCH_STATE/e2e-results.md"
: > "$RESULTS"
if [[ "$BENCH_INTERLEAVE" == 1 ]]; then rounds=$BENCH_RUNS; per=1; else rounds=1; per=$BENCH_RUNS; fi
FAILURES=()
n=${#targets[@]}
for ((r = 0; r < rounds; r++)); do
  for c in $CIPHERS; do
    for ((k = 0; k < n; k++)); do
      t="${targets[$(((k + r) % n))]}"
      tests=",$BENCH_TESTS,"
      [[ "$t" == "$BENCH_BASE" ]] || tests="${tests//,crypto,/,}"
      [[ "$t" == openssh-external ]] || tests="${tests//,raw,/,}"
      tests="${tests#,}"; tests="${tests%,}"
      log "round $((r + 1))/$rounds, $c, $t ($tests)"
      if ! ( eval "$(target_env "$t")"
             BENCH_CIPHER="$c" BENCH_RUNS="$per" BENCH_TESTS="$tests" BENCH_RESULTS="$RESULTS" \
             BENCH_CACHE="$BENCH_STATE/cache" "$HARNESS/sftp-bench.sh" ); then
        FAILURES+=("round $((r + 1)) $c $t")
        log "FAILED: round $((r + 1)) $c $t (see above)"
      fi
    done
  done
done
LOAD_AFTER="$(uptime | sed 's/^.*load/load/')"

SUMMARY="$(python3 "$HARNESS/summarize.py" "$RESULTS" --pool --base "$BENCH_BASE")"
CHECK=""
for t in "${targets[@]}"; do
  [[ "$t" == sftpgate* ]] || continue
  CHECK+="$(python3 "$REPO/bench/e2e_targets.py" "$RESULTS" --target "$t" --base "$BENCH_BASE")"$'\n'
done
echo "$SUMMARY"
echo "$CHECK"
((${#FAILURES[@]} == 0)) || log "failed runs: ${FAILURES[*]}"

if [[ -n "$BENCH_DOC" ]]; then
  {
    echo "## End to end: sftpgate, OpenSSH, AsyncSSH, rclone (bench/e2e.sh)"
    echo
    echo "Run $STARTED_AT with \`$COMMAND\`: every figure $BENCH_RUNS times$([[ "$BENCH_INTERLEAVE" == 1 ]] && echo ", one sample per round over all servers, the order rotating between rounds"); big file ${BENCH_SIZE_MB} MiB; each cell is median [min-max] over the samples (n = samples)."
    echo
    machine_info
    echo "- load (uptime) before: $LOAD_BEFORE; after: $LOAD_AFTER"
    echo "- servers:"
    for t in "${targets[@]}"; do echo "  - $t: $(describe_target "$t"); sftp's default request size up/down: ${BUFLEN[$t]}; CPU from $(cpu_source "$t")"; done
    echo "- client: OpenSSH sftp in batch mode (see bench/harness/README.md); stat latency with the AsyncSSH client; session setup subtracted; every download compared byte for byte with the uploaded source (it is that run's upload read back), small files with diff -r"
    ((${#FAILURES[@]} == 0)) || echo "- failed runs (left out): ${FAILURES[*]}"
    echo
    echo "### Issue 7 targets vs $BENCH_BASE"
    echo "$CHECK"
    echo
    echo "### All figures"
    echo "$SUMMARY"
  } | write_section "$BENCH_DOC" "bench/e2e.sh"
  log "wrote the e2e section of $BENCH_DOC"
fi
