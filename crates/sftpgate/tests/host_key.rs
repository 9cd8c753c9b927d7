//! Host key hygiene, end to end: `sftpgate serve` writes the key it generates with mode
//! 0600, and refuses to start with a key group or others can read, saying why and how to
//! fix it.

mod common;

use std::os::unix::fs::PermissionsExt as _;

use common::{Fixture, Server};

#[test]
fn generated_key_is_0600_and_a_readable_key_is_refused() {
    let Some(fx) = Fixture::new() else { return };
    let key = fx.data_dir().join("host_ed25519_key");
    let mut server = fx.start_server(None);
    let mode = std::fs::metadata(&key)
        .expect("the generated host key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "generated host key mode {mode:o}");
    server
        .terminate(std::time::Duration::from_secs(10))
        .expect("server exits on SIGTERM");

    for loose in [0o640, 0o604, 0o644] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(loose)).unwrap();
        let refused = match Server::start(fx.serve(None)) {
            Ok(_) => panic!("the server started with a host key of mode {loose:o}"),
            Err(out) => out,
        };
        assert!(!refused.status.success(), "{}", refused.show());
        let text = refused.show();
        assert!(text.contains("readable by others"), "{text}");
        assert!(
            text.contains(&format!("chmod 600 {}", key.display())),
            "{text}"
        );
    }

    // Fixed as the message says, it starts again with the same key.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = std::fs::read(&key).unwrap();
    let mut server = fx.start_server(None);
    assert_eq!(
        std::fs::read(&key).unwrap(),
        before,
        "the key was not replaced"
    );
    server
        .terminate(std::time::Duration::from_secs(10))
        .expect("server exits on SIGTERM");
}
