//! Feeds arbitrary bytes through `Decoder`, as requests and as responses, whole and in
//! chunkings derived from the input, and checks the decoder's invariants (see
//! `sftpgate_proto::fuzzing`): re-encoding round-trips, errors consume exactly one frame,
//! `TooLarge` exactly when the length field exceeds the limit, chunking never matters.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sftpgate_proto::fuzzing::check_decode(data));
