#!/bin/sh
# A bounded run of every fuzz target, one after the other: FUZZ_SECONDS (default 60) of
# libFuzzer each, starting from the seeds in corpus/<target>/ (left untouched: new inputs go
# to target/corpus-<target>/). Targets: `decode` (the codec) and `session` (the whole request
# path: bytes → StreamSession → dispatcher → in-memory filesystem → replies). FUZZ_TARGETS
# picks a subset. Exits 0 with a reason when fuzzing cannot run here; exits non-zero when a
# fuzzer finds a failing input (it lands in artifacts/<target>/). Under CI=true "cannot run"
# is a failure too, so that a fuzz target that stops building does not go unnoticed.
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer=address, sanitizer coverage). A
# nightly toolchain is used when rustup has one; otherwise stable with RUSTC_BOOTSTRAP=1,
# which unlocks those flags (the sanitizer runtimes ship with stable's rust-std too).
set -eu
cd "$(dirname "$0")"

skip() {
    echo "fuzz: skipped: $*"
    if [ "${CI:-}" = "true" ]; then
        echo "fuzz: CI=true: fuzzing must run" >&2
        exit 1
    fi
    exit 0
}
seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-decode session}

if ! cargo fuzz --version >/dev/null 2>&1; then
    skip "cargo-fuzz is not installed (cargo install cargo-fuzz)"
fi

if cargo +nightly --version >/dev/null 2>&1; then
    set -- cargo +nightly fuzz
    how="nightly toolchain"
else
    export RUSTC_BOOTSTRAP=1
    set -- cargo fuzz
    how="stable toolchain with RUSTC_BOOTSTRAP=1"
fi

for target in $targets; do
    if ! "$@" build "$target"; then
        skip "building the fuzz target $target failed with the $how (see above)"
    fi
done

for target in $targets; do
    mkdir -p "target/corpus-$target"
    echo "fuzz: running $target for ${seconds}s ($how)"
    # -rss_limit_mb: a session holds at most ~1 MiB of files and bounded budgets; far more
    # than that is a leak worth a failure.
    "$@" run "$target" "target/corpus-$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=1024
done
