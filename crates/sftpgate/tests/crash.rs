//! Crash safety of uploads, end to end with OpenSSH's `sftp put` against `sftpgate serve`
//! (docs/crash-safety.md states the guarantees these tests check):
//!
//! - client killed mid-upload: the file is exactly a prefix of the new content (every write
//!   the server received is completed before the session ends; OpenSSH opened it with
//!   TRUNC, so the old content was gone from the start);
//! - server SIGKILLed mid-upload: every byte is the new content or a hole (zeros) where a
//!   later write finished before an earlier one; never old content; the restarted server
//!   serves the file and takes a new upload;
//! - `fsync@openssh.com` (`put -f`) reaches fsync(2) on the uploaded file's descriptor.

mod common;
mod sftp_server_common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{require, wait_timeout, Fixture, Server, SSH_OPTIONS, USER};
use sftp_server_common::{path_str, server_command, Fx};

/// The upload's size, and the larger old file it replaces (so an old tail would show).
const NEW_SIZE: usize = 48 << 20;
const OLD_SIZE: usize = 64 << 20;
/// Bytes on the server's disk before the crash is caused.
const CRASH_AT: u64 = 8 << 20;
/// The old content: one byte value the new content never has.
const OLD_BYTE: u8 = 0xAA;
const WAIT: Duration = Duration::from_secs(60);

/// The new content: never 0 (a hole) and never [`OLD_BYTE`].
fn new_content() -> Vec<u8> {
    (0..NEW_SIZE)
        .map(|i| match ((i * 31 + i / 65_536) % 251) as u8 + 1 {
            OLD_BYTE => 0x55,
            b => b,
        })
        .collect()
}

/// `sftp -b` putting `local/data.bin` to `/data.bin`, spawned in its own process group.
fn spawn_put(fx: &Fixture, server: &Server) -> Child {
    let batch = fx.write("put-batch", "put data.bin data.bin\n");
    let mut cmd = Command::new("sftp");
    cmd.current_dir(fx.local())
        .env_remove("SSH_AUTH_SOCK")
        .args(SSH_OPTIONS)
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i"])
        .arg(&fx.key)
        .arg("-P")
        .arg(server.port.to_string())
        .arg("-b")
        .arg(batch)
        .arg(format!("{USER}@127.0.0.1"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn().expect("spawning sftp")
}

/// Waits (bounded) until the upload truncated `path` (shorter than the old content) and
/// then wrote at least `size` bytes.
fn wait_for_size(path: &Path, size: u64) {
    let deadline = Instant::now() + WAIT;
    let uploading = |len: u64| len >= size && len < OLD_SIZE as u64;
    while !uploading(std::fs::metadata(path).map_or(0, |m| m.len())) {
        assert!(
            Instant::now() < deadline,
            "the upload never reached {size} bytes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn kill_group(child: &Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a pid");
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}

/// A fixture with a user whose `/data.bin` holds the old content, and the new content in
/// the client's `data.bin`.
fn prepare() -> Option<(Fixture, Server, Vec<u8>)> {
    let fx = Fixture::new()?;
    let server = fx.start(USER);
    let root = fx.user_root(USER);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("data.bin"), vec![OLD_BYTE; OLD_SIZE]).unwrap();
    let new = new_content();
    std::fs::write(fx.local().join("data.bin"), &new).unwrap();
    Some((fx, server, new))
}

#[test]
fn client_killed_mid_upload_leaves_a_prefix_of_the_new_content() {
    let Some((fx, server, new)) = prepare() else {
        return;
    };
    let target = fx.user_root(USER).join("data.bin");
    let mut client = spawn_put(&fx, &server);
    wait_for_size(&target, CRASH_AT);
    kill_group(&client);
    let _ = wait_timeout(&mut client, WAIT);
    // The session ends (the connection is gone) once every write it received is done.
    let deadline = Instant::now() + WAIT;
    while !server.stderr().contains("session exit done") {
        assert!(
            Instant::now() < deadline,
            "no session end\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = std::fs::read(&target).unwrap();
    assert!(
        got.len() as u64 >= CRASH_AT && got.len() <= NEW_SIZE,
        "{} bytes",
        got.len()
    );
    assert!(!got.contains(&OLD_BYTE), "old content survived");
    let mismatch = got.iter().zip(&new).position(|(a, b)| a != b);
    assert_eq!(
        mismatch,
        None,
        "not a prefix of the new content (of {} bytes)",
        got.len()
    );
    eprintln!(
        "client killed: {} of {NEW_SIZE} bytes, an exact prefix",
        got.len()
    );
}

#[test]
fn server_killed_mid_upload_leaves_new_bytes_or_holes_and_restarts() {
    let Some((fx, mut server, new)) = prepare() else {
        return;
    };
    let target = fx.user_root(USER).join("data.bin");
    let mut client = spawn_put(&fx, &server);
    wait_for_size(&target, CRASH_AT);
    server.kill();
    let status = wait_timeout(&mut client, WAIT).expect("sftp exits when the server dies");
    assert!(!status.success(), "the upload cannot have finished");

    let got = std::fs::read(&target).unwrap();
    assert!(
        got.len() as u64 >= CRASH_AT && got.len() <= NEW_SIZE,
        "{} bytes",
        got.len()
    );
    let mut holes = 0usize;
    for (i, (&byte, &want)) in got.iter().zip(&new).enumerate() {
        match byte {
            0 => holes += 1,
            b if b == want => {}
            OLD_BYTE => panic!("old content at byte {i}"),
            b => panic!("byte {i} is {b:#x}: neither new content, nor a hole, nor old"),
        }
    }
    let prefix = got.iter().zip(&new).take_while(|(a, b)| a == b).count();
    eprintln!(
        "server killed: {} of {NEW_SIZE} bytes on disk, the first {prefix} exact, {holes} \
         hole bytes after them",
        got.len()
    );

    // Restarted on the same data, it serves the file again and a new upload completes.
    drop(server);
    let server = fx.start_server(None);
    let out = fx.sftp(
        &server,
        USER,
        "get data.bin partial.bin\nput data.bin data.bin\n",
    );
    assert!(out.status.success(), "{}", out.show());
    assert_eq!(std::fs::read(fx.local().join("partial.bin")).unwrap(), got);
    assert!(
        std::fs::read(&target).unwrap() == new,
        "the second upload is whole"
    );
}

/// `put -f` sends `fsync@openssh.com` after the last write; the server must reach fsync(2)
/// on the file it wrote (not only reply OK). Seen with strace on `sftpgate sftp-server`
/// (the same dispatcher and backend as `serve`), behind `sftp -D`.
#[test]
fn fsync_extension_calls_fsync_on_the_file() {
    if !require(&["strace"]) {
        return;
    }
    let Some(fx) = Fx::new() else { return };
    std::fs::write(fx.local().join("up.bin"), vec![1u8; 100_000]).unwrap();
    let trace = fx.path().join("strace.txt");
    let server = server_command(&["--root".to_owned(), path_str(&fx.root())]);
    let direct = format!(
        "strace -f -qq -e trace=openat,openat2,fsync,fdatasync -o {} {server}",
        common::quote(&trace)
    );
    for (batch, expect_sync) in [
        ("put up.bin plain.bin\n", false),
        ("put -f up.bin synced.bin\n", true),
    ] {
        let out = fx.sftp_with(&fx.local(), &[], &direct, batch, |_| {});
        assert!(out.status.success(), "{}", out.show());
        let text = std::fs::read_to_string(&trace).unwrap();
        let name = if expect_sync {
            "synced.bin"
        } else {
            "plain.bin"
        };
        // The descriptor the server opened the uploaded file as: `openat2(…, "name", …) = fd`.
        let fd = text
            .lines()
            .filter(|l| l.contains(&format!("\"{name}\"")) && l.contains("O_WRONLY"))
            .filter_map(|l| l.rsplit("= ").next()?.trim().parse::<i32>().ok())
            .find(|fd| *fd >= 0)
            .unwrap_or_else(|| panic!("no open of {name} in the trace:\n{text}"));
        let synced = text
            .lines()
            .any(|l| l.contains(&format!("fsync({fd})")) && l.trim_end().ends_with("= 0"));
        assert_eq!(
            synced, expect_sync,
            "fsync({fd}) of {name} in the trace:\n{text}"
        );
    }
}
