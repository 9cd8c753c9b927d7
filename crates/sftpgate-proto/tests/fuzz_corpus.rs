//! Replays the seed corpus of the `decode` fuzz target (`fuzz/corpus/decode/`) through the
//! same invariant check the fuzzer runs, so that every seed is exercised on every
//! `cargo test`, fuzzer or not.

use std::path::Path;

use sftpgate_proto::fuzzing::check_decode;

#[test]
fn decode_corpus_holds_the_invariants() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/decode");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    assert!(
        entries.len() >= 10,
        "only {} seeds in {}",
        entries.len(),
        dir.display()
    );
    for path in entries {
        let data = std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        // Name the seed if the check panics.
        let result = std::panic::catch_unwind(|| check_decode(&data));
        assert!(
            result.is_ok(),
            "invariant broken by seed {}",
            path.display()
        );
    }
}
