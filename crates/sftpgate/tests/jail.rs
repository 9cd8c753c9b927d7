//! The jail, from outside: through OpenSSH's `sftp`, every way out of the user's root that
//! a client can spell (`..`, absolute host paths, symlinks the client makes, symlinks the
//! host put there, hard links, renames, chmod through links) must fail or stay inside.
//! Afterwards nothing outside the root has changed: a canary file beside the data directory
//! keeps its bytes, mode, mtime and inode, and the rest of the temporary directory is as it
//! was.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{quote, snapshot, Fixture, USER};

const CANARY: &str = "canary-outside.txt";
/// A name that exists only outside the root and appears in no command: if a listing ever
/// shows it, a listing escaped.
const MARKER: &str = "zz-leak-marker";

#[test]
fn nothing_outside_the_root_is_reachable() {
    let Some(fx) = Fixture::new() else { return };
    let outside = fx.path().to_owned();
    let root = fx.user_root(USER);
    std::fs::create_dir_all(&root).unwrap();

    // The canary: known bytes, mode and (old) mtime.
    let secret = format!("secret {:016x}\n", rand_seed());
    let canary = outside.join(CANARY);
    std::fs::write(&canary, &secret).unwrap();
    std::fs::set_permissions(&canary, std::fs::Permissions::from_mode(0o640)).unwrap();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(&canary)
        .unwrap()
        .set_modified(old)
        .unwrap();
    std::fs::create_dir(outside.join(MARKER)).unwrap();
    std::fs::write(outside.join(MARKER).join("inner"), "marker").unwrap();
    std::fs::create_dir(outside.join("empty-outside")).unwrap();
    // Links the host (not the client) left in the root: an absolute one to the canary and
    // a relative one to the temporary directory (root = <tmp>/data/files/alice).
    std::os::unix::fs::symlink(&canary, root.join("hostlink")).unwrap();
    std::os::unix::fs::symlink("../../..", root.join("reldir")).unwrap();
    std::fs::write(fx.local().join("x.txt"), "x\n").unwrap();

    let server = fx.start(USER);
    let skip: [&Path; 2] = [&root, &fx.local()];
    let before = snapshot(&outside, &skip);

    let abs = |p: &Path| p.to_str().unwrap().to_owned();
    let canary_abs = abs(&canary);
    let tmp_abs = abs(&outside);
    let attempts: Vec<String> = vec![
        // Reading out.
        format!("get ../../{CANARY} got1"),
        format!("get /../../{CANARY} got2"),
        format!("get {} got3", quote(&canary_abs)),
        format!(
            "get {} got4",
            quote(format!("../../../../../..{canary_abs}"))
        ),
        format!("ln -s {} l", quote(&canary_abs)),
        "get l got5".into(),
        "ln -s ../../../.. up".into(),
        "ls up".into(),
        "ls -l up/".into(),
        format!("get up/{CANARY} got6"),
        format!("get up/up/../../up/{CANARY} got7"),
        "get hostlink got8".into(),
        format!("get reldir/{CANARY} got9"),
        "ls reldir".into(),
        "ls -l reldir/".into(),
        format!("ln -s {} hostdir", quote(&tmp_abs)),
        "ls hostdir".into(),
        format!("get hostdir/{CANARY} got10"),
        format!(
            "ln -s {} magic",
            quote(format!("/proc/self/root{canary_abs}"))
        ),
        "get magic got11".into(),
        "ln -s /proc/self/cwd cwd".into(),
        "ls cwd".into(),
        // Writing out.
        "put x.txt ../../escaped1".into(),
        "put x.txt /../../../escaped2".into(),
        "put x.txt up/../../escaped3".into(),
        "put x.txt reldir/escaped4".into(),
        "put x.txt hostdir/escaped5".into(),
        format!("put x.txt {}", quote(format!("{tmp_abs}/escaped6"))),
        "put x.txt l".into(),
        "put x.txt hostlink".into(),
        "put x.txt magic".into(),
        "mkdir ../../escaped-dir1".into(),
        "mkdir reldir/escaped-dir2".into(),
        "mkdir hostdir/escaped-dir3".into(),
        "rmdir ../../empty-outside".into(),
        "rmdir hostdir/empty-outside".into(),
        "rmdir reldir/empty-outside".into(),
        // Renames out of the root, and into it.
        "put x.txt inside1".into(),
        "rename inside1 ../../escaped7".into(),
        "put x.txt inside2".into(),
        "rename inside2 hostdir/escaped8".into(),
        "put x.txt inside3".into(),
        "rename inside3 reldir/escaped9".into(),
        "put x.txt inside4".into(),
        "rename -l inside4 hostdir/escaped10".into(),
        format!("rename {} stolen1", quote(&canary_abs)),
        format!("rename ../../{CANARY} stolen2"),
        format!("rename hostdir/{CANARY} stolen3"),
        format!("rename -l reldir/{CANARY} stolen4"),
        // Hard links to the canary.
        format!("ln ../../{CANARY} hard1"),
        format!("ln {} hard2", quote(&canary_abs)),
        format!("ln hostdir/{CANARY} hard3"),
        format!("ln reldir/{CANARY} hard4"),
        "ln hostlink hard5".into(),
        "ln l hard6".into(),
        // Changing the canary through links.
        "chmod 777 l".into(),
        "chmod 777 hostlink".into(),
        "chmod 777 magic".into(),
        format!("chmod 777 reldir/{CANARY}"),
        format!("chmod 777 hostdir/{CANARY}"),
        format!("chmod 777 ../../{CANARY}"),
        format!("chmod 777 {}", quote(&canary_abs)),
        // Removing it.
        format!("rm ../../{CANARY}"),
        format!("rm hostdir/{CANARY}"),
        format!("rm {}", quote(&canary_abs)),
    ];
    // `-`: keep going after a failure; every command runs.
    let batch: String = attempts.iter().map(|a| format!("-{a}\n")).collect();
    let out = fx.sftp(&server, USER, &batch);
    for attempt in &attempts {
        assert!(
            out.stdout.contains(&format!("sftp> -{attempt}\n")),
            "`{attempt}` did not run\n{}",
            out.show()
        );
    }

    // Nothing outside the root changed: the canary byte for byte with its mode, mtime and
    // inode (no hard link), no new or removed entry anywhere else in the temporary
    // directory.
    let content = std::fs::read_to_string(&canary)
        .unwrap_or_else(|e| panic!("the canary is gone: {e}\n{}", out.show()));
    assert_eq!(content, secret, "canary content\n{}", out.show());
    let meta = std::fs::metadata(&canary).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640, "canary mode");
    assert_eq!(meta.modified().unwrap(), old, "canary mtime");
    let after = snapshot(&outside, &skip);
    assert_eq!(
        before,
        after,
        "something outside the root changed\n{}",
        out.show()
    );

    // The canary's bytes reached neither the client nor the root, and no listing showed
    // what lies outside.
    for dir in [&root, &fx.local()] {
        for (file, content) in files_below(dir) {
            assert!(
                !content
                    .windows(secret.len())
                    .any(|w| w == secret.as_bytes()),
                "{} holds the canary's content\n{}",
                file.display(),
                out.show()
            );
        }
    }
    for text in [&out.stdout, &out.stderr] {
        assert!(
            !text.contains(&secret),
            "the canary's content was printed\n{}",
            out.show()
        );
        assert!(
            !text.contains(MARKER),
            "a listing showed a host directory\n{}",
            out.show()
        );
        assert!(
            !text.contains("id_ed25519"),
            "a listing showed a host directory\n{}",
            out.show()
        );
    }
}

#[test]
fn the_root_is_slash_and_shows_only_the_users_files() {
    let Some(fx) = Fixture::new() else { return };
    let root = fx.user_root(USER);
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("mine.txt"), "mine").unwrap();
    std::fs::write(fx.path().join(MARKER), "outside").unwrap();
    let server = fx.start(USER);
    let out = fx.sftp(
        &server,
        USER,
        "pwd\nls -1 /\ncd ..\npwd\ncd /../../..\npwd\ncd sub\ncd ../../..\npwd\nls -1\n",
    );
    assert!(out.status.success(), "{}", out.show());
    let pwds: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("Remote working directory: "))
        .collect();
    assert_eq!(pwds, ["/", "/", "/", "/"], "{}", out.show());
    let listed: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| !l.starts_with("sftp> ") && !l.starts_with("Remote working directory"))
        .collect();
    assert_eq!(
        listed,
        ["/mine.txt", "/sub", "mine.txt", "sub"],
        "{}",
        out.show()
    );
}

/// Every regular file below `dir` (not following symlinks) with its content.
fn files_below(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.extend(files_below(&path));
        } else if meta.is_file() {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

/// A seed that differs between runs, so the canary's content cannot be found by accident.
fn rand_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
}
