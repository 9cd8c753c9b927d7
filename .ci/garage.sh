#!/usr/bin/env bash
# A single-node Garage (S3 server) on loopback for the object storage tests and benchmarks.
#
#   eval "$(.ci/garage.sh start)"   # start it if it is not running; print the test variables
#   eval "$(.ci/garage.sh env)"     # only print them (it must be running)
#   .ci/garage.sh stop              # stop the one this script started
#
# Garage is a separate program (AGPL), installed with cargo (see .ci/run), never linked
# into sftpgate. Its state, configuration, log and pid live in $GARAGE_STATE_DIR
# (default /tmp/sftpgate-garage). Both sockets bind 127.0.0.1 on free ports chosen at the
# first start and kept in the state directory. The key and bucket come from Garage's
# `--single-node --default-bucket` mode (GARAGE_DEFAULT_* variables); the tests read
# SFTPGATE_TEST_S3_{ENDPOINT,REGION,BUCKET,ACCESS_KEY,SECRET_KEY}.
set -euo pipefail

state="${GARAGE_STATE_DIR:-/tmp/sftpgate-garage}"
garage="${GARAGE_BIN:-$(command -v garage || echo "$HOME/.cargo/bin/garage")}"
bucket=sftpgate-test
# Fixed test credentials (loopback only, throwaway data): Garage wants "GK" + 24 hex
# digits and a 64-hex-digit secret.
access_key=GK5f7a9e2c4b6d8f0a1c3e5b7d
secret_key=6e1f0b7c3a9d5e2f8a4c6b0d1e3f5a7c9b2d4f6e8a0c1b3d5f7e9a2c4b6d8f0a

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 20000))
        answers "$port" || { echo "$port"; return; }
    done
    echo "no free port found" >&2
    return 1
}

print_env() {
    # shellcheck source=/dev/null
    source "$state/ports"
    cat <<EOF
export SFTPGATE_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port
export SFTPGATE_TEST_S3_REGION=garage
export SFTPGATE_TEST_S3_BUCKET=$bucket
export SFTPGATE_TEST_S3_ACCESS_KEY=$access_key
export SFTPGATE_TEST_S3_SECRET_KEY=$secret_key
EOF
}

running() {
    [[ -f "$state/pid" ]] && kill -0 "$(cat "$state/pid")" 2>/dev/null
}

start() {
    mkdir -p "$state"
    if running; then
        print_env
        return
    fi
    if [[ ! -x "$garage" ]]; then
        echo "garage is not installed (cargo install garage@2.5.0 --locked --no-default-features --features bundled-libs,sqlite)" >&2
        return 1
    fi
    if [[ ! -f "$state/ports" ]]; then
        local rpc s3
        rpc=$(free_port)
        s3=$(free_port)
        while [[ "$s3" == "$rpc" ]]; do s3=$(free_port); done
        printf 'rpc_port=%s\ns3_port=%s\n' "$rpc" "$s3" >"$state/ports"
        head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$state/rpc_secret"
    fi
    # shellcheck source=/dev/null
    source "$state/ports"
    cat >"$state/garage.toml" <<EOF
metadata_dir = "$state/meta"
data_dir = "$state/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"
EOF
    chmod 600 "$state/garage.toml"
    GARAGE_RPC_SECRET="$(cat "$state/rpc_secret")" \
    GARAGE_DEFAULT_ACCESS_KEY="$access_key" \
    GARAGE_DEFAULT_SECRET_KEY="$secret_key" \
    GARAGE_DEFAULT_BUCKET="$bucket" \
        setsid "$garage" -c "$state/garage.toml" server --single-node --default-bucket \
        >>"$state/garage.log" 2>&1 </dev/null &
    echo $! >"$state/pid"
    # Ready when the S3 port answers and the default bucket exists.
    for _ in $(seq 1 60); do
        if answers "$s3_port" && GARAGE_RPC_SECRET="$(cat "$state/rpc_secret")" \
            "$garage" -c "$state/garage.toml" bucket info "$bucket" >/dev/null 2>&1; then
            print_env
            return
        fi
        running || break
        sleep 1
    done
    echo "garage did not become ready; last lines of $state/garage.log:" >&2
    tail -20 "$state/garage.log" >&2
    return 1
}

stop() {
    if running; then
        kill "$(cat "$state/pid")"
        rm -f "$state/pid"
    fi
}

case "${1:-}" in
    start) start ;;
    env) running && print_env || { echo "garage is not running (start it first)" >&2; exit 1; } ;;
    stop) stop ;;
    *) echo "usage: $0 start|env|stop" >&2; exit 2 ;;
esac
