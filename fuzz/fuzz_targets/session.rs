//! The whole SFTP request path: arbitrary bytes as a client's stream into `StreamSession`
//! (framing, decoding, sequencer, dispatcher) on an in-memory filesystem, with the
//! invariants of `crates/sftpgate-server/tests/support/session_fuzz.rs` (the same file the
//! corpus replay test uses): no panic anywhere, the session ends by itself, exit exactly
//! once, replies decode and answer exactly the requests sent.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/sftpgate-server/tests/support/session_fuzz.rs"]
mod session_fuzz;

fuzz_target!(|data: &[u8]| session_fuzz::check_session(data));
