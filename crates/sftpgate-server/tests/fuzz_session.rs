//! Replays the seed corpus of the `session` fuzz target (`fuzz/corpus/session/`) through the
//! same invariant check the fuzzer runs (`support/session_fuzz.rs`), so every seed runs the
//! whole request path on every `cargo test`, fuzzer or not; plus every prefix of the
//! generated sessions (a stream cut anywhere) and a fixed set of byte flips, bounded.

#[path = "support/session_fuzz.rs"]
mod session_fuzz;

use std::path::{Path, PathBuf};

use session_fuzz::check_session;

fn seeds() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/session");
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
    entries
}

fn check_named(what: &str, data: &[u8]) {
    let result = std::panic::catch_unwind(|| check_session(data));
    assert!(result.is_ok(), "invariant broken by {what}");
}

#[test]
fn session_corpus_holds_the_invariants() {
    for path in seeds() {
        let data = std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        check_named(&path.display().to_string(), &data);
    }
}

#[test]
fn cut_and_flipped_sessions_hold_the_invariants() {
    for path in seeds().into_iter().filter(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("gen-"))
    }) {
        let data = std::fs::read(&path).unwrap();
        let name = path.display();
        // Cut at every 7th byte: a stream that ends anywhere, mid-packet included.
        for cut in (0..data.len()).step_by(7) {
            check_named(&format!("{name} cut at {cut}"), &data[..cut]);
        }
        // Flip bytes at fixed strides: lengths, types, ids, handles and offsets go wrong.
        for (i, at) in (0..data.len()).step_by(13).enumerate() {
            let mut flipped = data.clone();
            flipped[at] ^= [0xff, 0x80, 0x01, 0x7f][i % 4];
            check_named(&format!("{name} flipped at {at}"), &flipped);
        }
    }
}
