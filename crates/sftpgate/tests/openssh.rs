//! The `sftpgate` binary against OpenSSH's `sftp -b`: every everyday command, checked both in
//! the client's output and on disk in the user's root directory.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use common::{assert_same_file, pseudo_random, quote, Fixture, USER};

#[test]
fn everyday_commands_take_effect_on_disk() {
    let Some(fx) = Fixture::new() else { return };
    let server = fx.start(USER);
    let local = fx.local();
    std::fs::write(local.join("hello.txt"), "hello\n").unwrap();
    std::fs::write(local.join("second.txt"), "second\n").unwrap();

    let out = fx.sftp(
        &server,
        USER,
        "pwd\n\
         put hello.txt\n\
         put hello.txt keep.txt\n\
         put second.txt clash.txt\n\
         ls -1\n\
         ls -l\n\
         get hello.txt got.txt\n\
         rename hello.txt moved.txt\n\
         -rename -l clash.txt keep.txt\n\
         rename clash.txt keep.txt\n\
         mkdir dir\n\
         put hello.txt dir/inner.txt\n\
         mkdir empty\n\
         rmdir empty\n\
         -rmdir dir\n\
         ln -s moved.txt sym\n\
         ln moved.txt hard\n\
         get sym via-symlink.txt\n\
         chmod 640 moved.txt\n\
         put hello.txt doomed.txt\n\
         rm doomed.txt\n\
         -get doomed.txt\n\
         df\n\
         df -h\n\
         ls -l\n",
    );
    assert!(out.status.success(), "the batch failed\n{}", out.show());
    let root = fx.user_root(USER);

    assert!(
        out.stdout.contains("Remote working directory: /\n"),
        "{}",
        out.show()
    );
    // `ls -1` right after the three puts: exactly those names, sorted.
    let listed = section(&out.stdout, "ls -1");
    assert_eq!(
        listed,
        ["clash.txt", "hello.txt", "keep.txt"],
        "{}",
        out.show()
    );
    let long = section(&out.stdout, "ls -l");
    let hello = long
        .iter()
        .find(|l| l.ends_with(" hello.txt"))
        .expect("hello.txt in ls -l");
    assert!(hello.starts_with("-rw-"), "{hello}");
    assert_eq!(
        hello.split_whitespace().nth(4),
        Some("6"),
        "size column: {hello}"
    );

    // get
    assert_eq!(
        std::fs::read_to_string(local.join("got.txt")).unwrap(),
        "hello\n"
    );
    // rename to a new name
    assert!(!root.join("hello.txt").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("moved.txt")).unwrap(),
        "hello\n"
    );
    // SSH_FXP_RENAME (`rename -l`) onto an existing name fails as with OpenSSH's
    // sftp-server: a plain FAILURE, both files untouched until…
    assert!(
        out.stderr
            .contains("\"/clash.txt\" to \"/keep.txt\": Failure"),
        "legacy rename onto an existing file must fail with Failure\n{}",
        out.show()
    );
    // …the client's default, posix-rename@openssh.com, replaces the target (as it does
    // against OpenSSH).
    assert!(!root.join("clash.txt").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("keep.txt")).unwrap(),
        "second\n"
    );
    // mkdir, rmdir; rmdir of a non-empty directory fails and leaves it
    assert!(root.join("empty").symlink_metadata().is_err());
    assert_eq!(
        std::fs::read_to_string(root.join("dir/inner.txt")).unwrap(),
        "hello\n"
    );
    assert!(
        out.stderr.contains("\"/dir\""),
        "rmdir of a non-empty directory must fail\n{}",
        out.show()
    );
    // symlink: the target is stored as given; get follows it
    assert_eq!(
        std::fs::read_link(root.join("sym")).unwrap(),
        Path::new("moved.txt")
    );
    assert_eq!(
        std::fs::read_to_string(local.join("via-symlink.txt")).unwrap(),
        "hello\n"
    );
    // hardlink: one inode, two names
    let (moved, hard) = (
        std::fs::metadata(root.join("moved.txt")).unwrap(),
        std::fs::symlink_metadata(root.join("hard")).unwrap(),
    );
    assert_eq!(
        (moved.ino(), moved.nlink()),
        (hard.ino(), 2),
        "ln must make a hard link"
    );
    // chmod
    assert_eq!(moved.permissions().mode() & 0o7777, 0o640);
    // rm, and get of the removed file fails
    assert!(!root.join("doomed.txt").exists());
    assert!(!local.join("doomed.txt").exists());
    assert!(out.stderr.contains("doomed.txt"), "{}", out.show());

    // df: OpenSSH prints the statvfs@openssh.com reply as a table of numbers
    let df = section(&out.stdout, "df");
    assert_eq!(df.len(), 2, "df output:\n{}", out.show());
    assert!(
        df[0].contains("Size") && df[0].contains("Avail"),
        "{}",
        df[0]
    );
    let fields: Vec<&str> = df[1].split_whitespace().collect();
    assert_eq!(fields.len(), 5, "{}", df[1]);
    let size: u64 = fields[0].parse().expect("df size in KiB");
    assert!(size > 0, "{}", df[1]);
    assert!(fields[4].ends_with('%'), "{}", df[1]);
    let df_h = section(&out.stdout, "df -h");
    assert_eq!(df_h.len(), 2, "df -h output:\n{}", out.show());

    // The final `ls -l` matches the disk, with the right file types.
    let long = section_last(&out.stdout, "ls -l");
    let kind = |name: &str| {
        long.iter()
            .find(|l| l.ends_with(&format!(" {name}")) || l.contains(&format!(" {name} -> ")))
            .unwrap_or_else(|| panic!("{name} missing from ls -l:\n{}", long.join("\n")))
            .chars()
            .next()
    };
    assert_eq!(kind("moved.txt"), Some('-'));
    assert_eq!(kind("dir"), Some('d'));
    assert_eq!(kind("sym"), Some('l'));
    let moved_line = long.iter().find(|l| l.ends_with(" moved.txt")).unwrap();
    assert!(moved_line.starts_with("-rw-r-----"), "{moved_line}");
    let mut on_disk: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, ["dir", "hard", "keep.txt", "moved.txt", "sym"]);
    assert_eq!(long.len(), on_disk.len(), "{}", long.join("\n"));
}

#[test]
fn names_with_spaces_quotes_and_non_ascii() {
    let Some(fx) = Fixture::new() else { return };
    let server = fx.start(USER);
    let names = [
        "with space.txt",
        "it's \"quoted\".txt",
        "naïve 日本語 ✓.txt",
    ];
    let mut batch = String::new();
    for (i, name) in names.iter().enumerate() {
        std::fs::write(fx.local().join(name), format!("content {i}\n")).unwrap();
        batch += &format!("put {}\n", quote(name));
    }
    batch += "mkdir \"dir with space ü\"\n";
    for name in names {
        let renamed = format!("dir with space ü/renamed {name}");
        batch += &format!("rename {} {}\n", quote(name), quote(&renamed));
        batch += &format!(
            "get {} {}\n",
            quote(&renamed),
            quote(format!("back {name}"))
        );
    }
    batch += "ls -1 \"dir with space ü\"\n";
    let out = fx.sftp(&server, USER, &batch);
    assert!(out.status.success(), "the batch failed\n{}", out.show());

    let dir = fx.user_root(USER).join("dir with space ü");
    for (i, name) in names.iter().enumerate() {
        let expected = format!("content {i}\n");
        assert!(
            !fx.user_root(USER).join(name).exists(),
            "{name} was not renamed"
        );
        let on_disk = dir.join(format!("renamed {name}"));
        assert_eq!(
            std::fs::read_to_string(&on_disk)
                .unwrap_or_else(|e| panic!("{}: {e}", on_disk.display())),
            expected
        );
        let back = fx.local().join(format!("back {name}"));
        assert_eq!(std::fs::read_to_string(&back).unwrap(), expected);
        assert!(
            out.stdout
                .lines()
                .any(|l| l == format!("dir with space ü/renamed {name}")),
            "ls must list {name:?} byte for byte\n{}",
            out.show()
        );
    }
}

#[test]
fn hundred_mebibyte_round_trip() {
    let Some(fx) = Fixture::new() else { return };
    let server = fx.start(USER);
    let local = fx.local();
    let data = pseudo_random(100 << 20, 0x5f7a_2c9d_e1b3_4a68);
    std::fs::write(local.join("big.bin"), &data).unwrap();
    drop(data);

    let out = fx.sftp(&server, USER, "put big.bin\nget big.bin back.bin\n");
    assert!(out.status.success(), "the transfer failed\n{}", out.show());
    assert_same_file(&local.join("big.bin"), &fx.user_root(USER).join("big.bin"));
    assert_same_file(&local.join("big.bin"), &local.join("back.bin"));
}

/// Each cipher the server offers, forced with `sftp -c` (the client then offers only that
/// one, so a successful login proves it was negotiated), with a file of many SSH packets up
/// and down: chacha20-poly1305 is sealed by crates/sftpgate-chacha on OpenSSL, AES-GCM by
/// the library the CPU picks (`aes_gcm = "auto"`), the others by aws-lc, and OpenSSH's
/// client must open every packet the server seals and the other way round.
#[test]
fn every_offered_cipher_round_trips_with_openssh() {
    let Some(fx) = Fixture::new() else { return };
    let server = fx.start(USER);
    let local = fx.local();
    let data = pseudo_random(3 << 20, 0x0c1f_4e2d_9a7b_3358);
    std::fs::write(local.join("cipher.bin"), &data).unwrap();
    drop(data);

    // Every cipher; with the CTR ciphers, every MAC (their tags differ in size and in what
    // they cover); and compression, under which replies are copied instead.
    let mut cases: Vec<(String, Vec<String>)> = [
        "chacha20-poly1305@openssh.com",
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "aes256-ctr",
        "aes192-ctr",
        "aes128-ctr",
    ]
    .iter()
    .map(|c| (c.to_string(), vec!["-c".to_string(), c.to_string()]))
    .collect();
    for mac in [
        "hmac-sha2-512-etm@openssh.com",
        "hmac-sha2-256-etm@openssh.com",
        "hmac-sha2-512",
        "hmac-sha2-256",
    ] {
        cases.push((
            format!("aes128-ctr+{mac}"),
            ["-c", "aes128-ctr", "-o", &format!("MACs={mac}")]
                .map(String::from)
                .to_vec(),
        ));
    }
    cases.push(("compressed".to_string(), vec!["-C".to_string()]));
    for (cipher, args) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cipher_round_trip(&fx, &server, cipher, &args);
    }
}

/// AES-GCM through each library on every machine (`aes_gcm = "aws-lc"` and `"ring"`, the
/// vendored russh's change 4), not only the one this CPU picks: both AES-GCM ciphers against
/// OpenSSH's, after the server has said which library it runs.
#[test]
fn aes_gcm_round_trips_with_openssh_on_either_library() {
    let Some(fx) = Fixture::new() else { return };
    fx.add_user(USER);
    let local = fx.local();
    let data = pseudo_random(3 << 20, 0x5a3e_91c7_0d2f_6b84);
    std::fs::write(local.join("cipher.bin"), &data).unwrap();
    drop(data);
    for library in ["aws-lc", "ring"] {
        let mut cmd = fx.serve(None);
        cmd.env("SFTPGATE_AES_GCM", library);
        let server = common::Server::start(cmd)
            .unwrap_or_else(|out| panic!("the server did not start\n{}", out.show()));
        let said = format!("AES-GCM through {library} (aes_gcm setting)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !server.stderr().contains(&said) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            server.stderr().contains(&said),
            "the server did not log {said:?}\n{}",
            server.stderr()
        );
        for cipher in ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"] {
            cipher_round_trip(
                &fx,
                &server,
                &format!("{cipher} on {library}"),
                &["-c", cipher],
            );
        }
    }
}

/// `cipher.bin` of [`Fixture::local`] up and down with `args` (`sftp` options naming the
/// cipher), each copy compared byte for byte. Downloaded twice: with `-B 32768` (32 KiB
/// READs, each reply one packet sealed in its own buffer, vendor/README.md) and with the
/// client's default (255 KiB READs, whose replies russh copies into eight packets: the
/// other path, under every cipher and MAC too).
fn cipher_round_trip(fx: &Fixture, server: &common::Server, label: &str, args: &[&str]) {
    let local = fx.local();
    let name = label.replace(' ', "-");
    let mut small_reads = args.to_vec();
    small_reads.extend(["-B", "32768"]);
    let runs = [
        (
            "put cipher.bin\n",
            format!("back-{name}.bin"),
            small_reads,
            "32 KiB READs",
        ),
        (
            "",
            format!("back-default-{name}.bin"),
            args.to_vec(),
            "255 KiB READs",
        ),
    ];
    for (put, back, options, reads) in runs {
        let out = fx.sftp_with(
            &local,
            server,
            USER,
            &format!("{put}get cipher.bin {back}\n"),
            common::SFTP_TIMEOUT,
            &options,
        );
        assert!(
            out.status.success(),
            "{label}, {reads}: the transfer failed\n{}",
            out.show()
        );
        assert_same_file(
            &local.join("cipher.bin"),
            &fx.user_root(USER).join("cipher.bin"),
        );
        assert_same_file(&local.join("cipher.bin"), &local.join(&back));
    }
}

/// The lines `sftp -b` printed for the first command `cmd` (between its echoed
/// `sftp> cmd` and the next prompt).
fn section(stdout: &str, cmd: &str) -> Vec<String> {
    sections(stdout, cmd)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no `{cmd}` in\n{stdout}"))
}

/// Like [`section`], for the last time `cmd` ran.
fn section_last(stdout: &str, cmd: &str) -> Vec<String> {
    sections(stdout, cmd)
        .pop()
        .unwrap_or_else(|| panic!("no `{cmd}` in\n{stdout}"))
}

fn sections(stdout: &str, cmd: &str) -> Vec<Vec<String>> {
    let prompt = format!("sftp> {cmd}");
    let mut found = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in stdout.lines() {
        if line.starts_with("sftp> ") {
            found.extend(current.take());
            if line == prompt {
                current = Some(Vec::new());
            }
        } else if let Some(lines) = current.as_mut() {
            lines.push(line.to_owned());
        }
    }
    found.extend(current);
    found
}
