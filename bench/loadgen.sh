#!/usr/bin/env bash
# bench/loadgen.sh: sftpgate against OpenSSH's sftp-server with bench/loadgen
# (sftpgate-loadgen), a client that is not the limit: deep pipelining on one session, and 8
# sessions in parallel (aggregate throughput and fairness). Every download is checked against
# the deterministic content the upload wrote. Writes a section into docs/performance.md.
#
# Runs are A/B interleaved: for each run, scenario and cipher every target once, the order
# rotating between runs. Server CPU per GiB counts the server's whole process tree (OpenSSH's
# per-connection sshd and sftp-server processes included): from its cgroup where bench/lib.sh
# could make one, else from /proc.
#
# Usage: bench/loadgen.sh
# Env:   BENCH_RUNS      runs per figure (3)
#        LOADGEN_MB      MiB moved per scenario and direction, split over its sessions (1024)
#        CIPHERS         ("aes128-gcm@openssh.com chacha20-poly1305@openssh.com")
#        TARGETS         ("sftpgate openssh-external sftpgate-nodelay sftpgate-inline"; see
#                        start_target in bench/lib.sh)
#        SCENARIOS       ("deep par8"): deep = 1 session x 256 requests in flight x 255 KiB
#                        (OpenSSH's largest; `sftp -R 256 -B 261120`), par8 = 8 sessions x 64
#                        in flight x 32 KiB (the OpenSSH client's default request size)
#        BENCH_BASE      (openssh-external)   BENCH_DOC (docs/performance.md; empty: none)
#        BENCH_BUILD, BENCH_STATE, BENCH_KEEP_STATE, BENCH_CGROUP as in bench/e2e.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${BENCH_RUNS:=3}"
: "${LOADGEN_MB:=1024}"
: "${CIPHERS:=aes128-gcm@openssh.com chacha20-poly1305@openssh.com}"
: "${TARGETS:=sftpgate openssh-external sftpgate-nodelay sftpgate-inline}"
: "${SCENARIOS:=deep par8}"
: "${BENCH_BASE:=openssh-external}"
: "${BENCH_DOC=$REPO/docs/performance.md}"

scenario_args() {
  case "$1" in
    deep) echo "-n 1 -m 256 --request-size 261120 --size $((LOADGEN_MB))M" ;;
    par8) echo "-n 8 -m 64 --request-size 32K --size $((LOADGEN_MB / 8))M" ;;
    *) die "unknown scenario $1" ;;
  esac
}

bench_prepare
read -r -a targets <<< "$TARGETS"
start_targets "${targets[@]}"
LOAD_BEFORE="$(uptime | sed 's/^.*load/load/')"
STARTED_AT="$(date -u '+%F %H:%M UTC')"
RESULTS="$BENCH_STATE/loadgen-results.txt"
: > "$RESULTS"
FAILURES=()
n=${#targets[@]}
for ((r = 0; r < BENCH_RUNS; r++)); do
  for scen in $SCENARIOS; do
    for c in $CIPHERS; do
      for ((k = 0; k < n; k++)); do
        t="${targets[$(((k + r) % n))]}"
        case "$t" in
          openssh-*) user="$(id -un)"; dir="$BENCH_STATE/data-$t" ;;
          *) user=bench; dir=/ ;;
        esac
        read -r -a sargs <<< "$(scenario_args "$scen")"
        cg=(); [[ -z "${CGROUPS[$t]:-}" ]] || cg=(--server-cgroup "${CGROUPS[$t]}")
        log "run $((r + 1))/$BENCH_RUNS $scen $c $t"
        if out="$(timeout 900 "$BIN/sftpgate-loadgen" --port "${PORTS[$t]}" --user "$user" \
                    --key "$BENCH_STATE/client_ed25519" --dir "$dir" --cipher "$c" "${sargs[@]}" \
                    --server-pid "$(cat "$BENCH_STATE/$t.pid")" "${cg[@]}" --label "$t")"; then
          grep '^RESULT' <<< "$out" | sed "s/^/$scen /" >> "$RESULTS"
          grep -v '^RESULT' <<< "$out" >&2
        else
          FAILURES+=("run $((r + 1)) $scen $c $t")
          log "FAILED: run $((r + 1)) $scen $c $t"
        fi
      done
    done
  done
done
LOAD_AFTER="$(uptime | sed 's/^.*load/load/')"
SUMMARY="$(python3 "$REPO/bench/loadgen_summary.py" "$RESULTS" --base "$BENCH_BASE")"
echo "$SUMMARY"
((${#FAILURES[@]} == 0)) || log "failed runs: ${FAILURES[*]}"

if [[ -n "$BENCH_DOC" ]]; then
  {
    echo "## Load generator: deep pipelining and 8 parallel sessions (bench/loadgen.sh)"
    echo
    echo "Run $STARTED_AT with \`BENCH_RUNS=$BENCH_RUNS LOADGEN_MB=$LOADGEN_MB bench/loadgen.sh\`: client bench/loadgen (\`sftpgate-loadgen\`, russh + sftpgate-proto; $(scenario_args deep | sed 's/--size.*//') for deep, $(scenario_args par8 | sed 's/--size.*//') for par8); each run uploads, then downloads and checks every byte; targets A/B interleaved, order rotating per run. Aggregate = all bytes / wall time of the phase; a session is unfair below half the mean session rate; CPU per GiB of the server: its whole process tree, from the source each server line names."
    echo
    machine_info
    echo "- load (uptime) before: $LOAD_BEFORE; after: $LOAD_AFTER"
    echo "- servers:"
    for t in "${targets[@]}"; do echo "  - $t: $(describe_target "$t"); CPU from $(cpu_source "$t")"; done
    ((${#FAILURES[@]} == 0)) || echo "- failed runs (left out): ${FAILURES[*]}"
    echo "$SUMMARY"
  } | write_section "$BENCH_DOC" "bench/loadgen.sh"
  log "wrote the loadgen section of $BENCH_DOC"
fi
