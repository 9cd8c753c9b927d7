#!/usr/bin/env bash
# bench/turns.sh: where a small-file round trip goes, server against client, for sftpgate and
# the reference servers, same OpenSSH client and cipher, same run.
#
# The harness's small-file figure (bench/e2e.sh, 2,000 x 4 KiB `put -r` and `get -r`) is a
# chain of round trips: the client sends a request, the server answers, the client sends the
# next one. This script runs the same two sessions under `tcpdump` on loopback and splits
# each session's time by who holds the turn (bench/turns.py): server turns (request sent ->
# reply sent: the server's wake-up, work and send) and client turns (reply sent -> next
# request sent: OpenSSH's ssh and sftp processes). It also reads the server's CPU time per
# server turn (bench/lib.sh's server_cpu: from the server's cgroup, else /proc/PID/stat of
# the listening process with its reaped children; the CPU of a bare session subtracted).
# Together they say how much faster a server could make the small-file figure at all: with
# a client turn of C and a server turn of S, a server with turns of S' gets (C + S) /
# (C + S') of the other's rate.
#
# Needs tcpdump (apt-get install tcpdump) and the right to capture on lo (root or
# CAP_NET_RAW). Every download is compared with the uploaded tree (diff -r).
#
# Usage: bench/turns.sh                         (from anywhere)
# Env:   BENCH_RUNS      rounds (3); each round runs every target once per cipher, the order
#                        rotating between rounds
#        CIPHERS         ("aes128-gcm@openssh.com chacha20-poly1305@openssh.com")
#        TARGETS         ("sftpgate openssh-external"); any of bench/e2e.sh's targets
#        BENCH_SMALL_N   files (2000), BENCH_SMALL_KB size of each (4)
#        BENCH_DOC       markdown file to write the section into (docs/performance.md;
#                        empty: do not write)
#        BENCH_BUILD, BENCH_STATE, BENCH_KEEP_STATE, BENCH_CGROUP, SFTPGATE_REF as in bench/e2e.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${BENCH_RUNS:=3}"
: "${CIPHERS:=aes128-gcm@openssh.com chacha20-poly1305@openssh.com}"
: "${TARGETS:=sftpgate openssh-external}"
: "${BENCH_SMALL_N:=2000}"
: "${BENCH_SMALL_KB:=4}"
: "${BENCH_DOC=$REPO/docs/performance.md}"
COMMAND="BENCH_RUNS=$BENCH_RUNS bench/turns.sh"

command -v sftp >/dev/null || die "OpenSSH sftp client not found"
command -v tcpdump >/dev/null || die "tcpdump not found (apt-get install tcpdump)"
read -r -a targets <<< "$TARGETS"
((${#targets[@]} > 0)) || die "TARGETS is empty"

CAPTURE_PID=""
# Run by bench_prepare's EXIT trap before the servers stop.
on_exit() {
  if [[ -n "$CAPTURE_PID" ]]; then kill "$CAPTURE_PID" 2>/dev/null || true; fi
}
bench_prepare
STARTED_AT="$(date -u '+%F %H:%M UTC')"
LOAD_BEFORE="$(uptime | sed 's/^.*load/load/')"
start_targets "${targets[@]}"

WORK="$BENCH_STATE/turns"
SMALL="$WORK/small"
rm -rf "$WORK"; mkdir -p "$SMALL"
for ((i = 0; i < BENCH_SMALL_N; i++)); do
  head -c $((BENCH_SMALL_KB * 1024)) /dev/urandom > "$SMALL/f$i"
done
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"

# The check that capturing works at all, before anything is timed.
tcpdump -i lo -c 1 -w /dev/null 'tcp port 1' 2>"$WORK/tcpdump-check.log" & probe=$!
sleep 1
if ! kill -0 "$probe" 2>/dev/null; then
  wait "$probe" || true
  die "tcpdump cannot capture on lo: $(cat "$WORK/tcpdump-check.log")"
fi
kill "$probe" 2>/dev/null; wait "$probe" 2>/dev/null || true

CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
# steal_ticks: the machine's steal time so far (/proc/stat; a VM's host running something
# else): a session with steal is flagged, and left out of the paired ratios
steal_ticks() { awk '/^cpu / {print $9 + 0}' /proc/stat; }

# session CIPHER BATCH: one sftp session to the target in BENCH_*, quiet; fails loudly
session() {
  sftp -q -b "$2" -P "$BENCH_PORT" -F /dev/null -i "$BENCH_KEY" -c "$1" -o IdentitiesOnly=yes \
    -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
    -o Compression=no -o ControlMaster=no -o ControlPath=none -o User="$BENCH_USER" 127.0.0.1 >/dev/null
}

# measure TARGET CIPHER OP BATCH ROUND: OP's session under tcpdump; appends one JSON line
measure() {
  local t="$1" c="$2" op="$3" batch="$4" r="$5" cap="$WORK/cap.pcap" a b s0 s1 t0 t1 turns
  tcpdump -i lo -nn -s 128 -w "$cap" "tcp port $BENCH_PORT" 2>/dev/null & CAPTURE_PID=$!
  sleep 0.5
  a="$(server_cpu "$t")"; s0="$(steal_ticks)"; t0="$(date +%s.%N)"
  session "$c" "$batch"
  t1="$(date +%s.%N)"; s1="$(steal_ticks)"
  # The session's sshd is reaped by its listener, and tcpdump hands over its last block of
  # packets (its 1 s timeout: without --immediate-mode, which wakes tcpdump per packet and
  # slows a server of several processes more than one of one, it is no observer then).
  sleep 1.5
  b="$(server_cpu "$t")"
  kill "$CAPTURE_PID"; wait "$CAPTURE_PID" 2>/dev/null || true; CAPTURE_PID=""
  tcpdump -tt -nn -r "$cap" 2>/dev/null > "$WORK/cap.txt"
  turns="$(python3 "$REPO/bench/turns.py" "$WORK/cap.txt" "$BENCH_PORT")"
  printf '{"round": %d, "cipher": "%s", "target": "%s", "op": "%s", "files": %d, "steal_s": %s, "wall_s": %s, "cpu_s": %s, "setup_cpu_s": %s, "turns": %s}\n' \
    "$r" "$c" "$t" "$op" "$BENCH_SMALL_N" "$(awk -v a="$s0" -v b="$s1" -v k="$CLK_TCK" 'BEGIN {printf "%.3f", (b - a) / k}')" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.6f", b - a}')" \
    "$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.6f", b - a}')" "$SETUP_CPU" "$turns" >> "$RESULTS"
}

n=${#targets[@]}
for ((r = 0; r < BENCH_RUNS; r++)); do
  for c in $CIPHERS; do
    for ((k = 0; k < n; k++)); do
      t="${targets[$(((k + r) % n))]}"
      eval "$(target_env "$t")"
      rdir="${BENCH_DIR%/}/turns.$r"
      printf 'pwd\n' > "$WORK/b.pwd"
      printf 'put -r "%s" "%s"\n' "$SMALL" "$rdir" > "$WORK/b.put"
      printf 'get -r "%s" "%s/down"\n' "$rdir" "$WORK" > "$WORK/b.get"
      printf 'rm "%s"/*\nrmdir "%s"\n' "$rdir" "$rdir" > "$WORK/b.rm"
      # the CPU of a bare session (connect, key exchange, auth, SFTP init): median of 3
      SETUP_CPU="$(for _ in 1 2 3; do
                     a="$(server_cpu "$t")"; session "$c" "$WORK/b.pwd"; sleep 0.3
                     awk -v a="$a" -v b="$(server_cpu "$t")" 'BEGIN {printf "%.6f\n", b - a}'
                   done | sort -g | sed -n 2p)"
      log "round $((r + 1))/$BENCH_RUNS, $c, $t"
      rm -rf "$WORK/down"
      measure "$t" "$c" put "$WORK/b.put" "$r"
      measure "$t" "$c" get "$WORK/b.get" "$r"
      diff -rq "$SMALL" "$WORK/down" >/dev/null || die "$t: the downloaded tree differs from the uploaded one"
      session "$c" "$WORK/b.rm" || die "$t: could not remove $rdir"
    done
  done
done
LOAD_AFTER="$(uptime | sed 's/^.*load/load/')"

TABLE="$(python3 "$REPO/bench/turns.py" --summarize "$RESULTS")"
echo "$TABLE"
if [[ -n "$BENCH_DOC" ]]; then
  {
    echo "## Small-file round trips: server turn and client turn (bench/turns.sh)"
    echo
    echo "Run $STARTED_AT with \`$COMMAND\`: $BENCH_SMALL_N x $BENCH_SMALL_KB KiB \`put -r\` and \`get -r\` per target and cipher in each of $BENCH_RUNS rounds, the target order rotating; each session captured with tcpdump on lo. A server turn runs from a client segment carrying data to the next server segment (the server's wake-up, work and send), a client turn the other way (OpenSSH's ssh and sftp processes). Means leave out turns of 5 ms or more (the session setup's: key exchange, sshd's fork and exec, the first login's stall; no file's round trip takes that long here), which the harness subtracts as session setup. Cells are medians over the rounds; the ratio pairs each round's two sessions and leaves out pairs where either session lost more than 2 % of its time to steal (the host running another VM), which on these machines stretches the turns of whichever server it hits; server CPU per server turn is the server's CPU time in the session, less a bare session's, over its net turns."
    echo
    machine_info
    echo "- load (uptime) before: $LOAD_BEFORE; after: $LOAD_AFTER"
    for t in "${targets[@]}"; do echo "- $t: $(describe_target "$t"); CPU from $(cpu_source "$t")"; done
    echo
    echo "$TABLE"
  } | write_section "$BENCH_DOC" "bench/turns.sh"
  log "wrote the turns section of $BENCH_DOC"
fi
