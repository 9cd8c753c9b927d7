#!/bin/sh
# A bounded run of the `decode` fuzz target: FUZZ_SECONDS (default 60) of libFuzzer, starting
# from the seeds in corpus/decode/ (left untouched: new inputs go to target/corpus-decode/).
# Exits 0 with a reason when fuzzing cannot run here; exits non-zero when the fuzzer finds a
# failing input (it lands in artifacts/decode/).
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer=address, sanitizer coverage). A
# nightly toolchain is used when rustup has one; otherwise stable with RUSTC_BOOTSTRAP=1,
# which unlocks those flags (the sanitizer runtimes ship with stable's rust-std too).
set -eu
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-60}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: skipped: cargo-fuzz is not installed (cargo install cargo-fuzz)"
    exit 0
fi

if cargo +nightly --version >/dev/null 2>&1; then
    set -- cargo +nightly fuzz
    how="nightly toolchain"
else
    export RUSTC_BOOTSTRAP=1
    set -- cargo fuzz
    how="stable toolchain with RUSTC_BOOTSTRAP=1"
fi

if ! "$@" build decode; then
    echo "fuzz: skipped: building the fuzz target failed with the $how (see above)"
    exit 0
fi

mkdir -p target/corpus-decode
echo "fuzz: running decode for ${seconds}s ($how)"
exec "$@" run decode target/corpus-decode corpus/decode -- -max_total_time="$seconds"
