//! `sftpgate sftp-server`, the engine on stdin/stdout, from outside: OpenSSH's `sftp -D`
//! runs every batch command the 9.2 client offers against it (checked in the client's
//! output and on disk), its OpenSSH-style options (`-R`, `-P`, `-p`, `-Q`, `-u`, `-d`, `-l`,
//! `-e`) and its ends (stdin EOF, SIGTERM, SIGHUP) are checked on the process itself, and a
//! private `sshd` with `Subsystem sftp <sftpgate> sftp-server` serves a session end to end.

mod common;
mod sftp_server_common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::{assert_same_file, pseudo_random, quote, snapshot};
use sftp_server_common::{
    count, path_str, process_ended, section, server_command, sftp_command, sftp_server, sh_quote,
    user_name, Fx, Piped, Sshd, EXIT_DONE, EXIT_TIMEOUT,
};

/// Names a shell, a glob or sftp's own quoting could get wrong.
const ODD_NAMES: &[&str] = &[
    "with space.txt",
    "quo\"te.txt",
    "it's.txt",
    "star*.txt",
    "what?.txt",
    "[br].txt",
    "back\\slash.txt",
    "  leading and trailing  .txt",
];

#[test]
fn odd_names_globs_mget_and_mput() {
    let Some(fx) = Fx::new() else { return };
    let (local, root) = (fx.local(), fx.root());
    for (i, name) in ODD_NAMES.iter().enumerate() {
        std::fs::write(local.join(name), format!("{i}: {name}\n")).unwrap();
    }
    std::fs::write(local.join("plain.dat"), "not a .txt\n").unwrap();
    // A remote name the quoted glob characters must not match.
    std::fs::write(root.join("starry.txt"), "starry\n").unwrap();

    let mut batch = String::new();
    for name in ODD_NAMES {
        batch.push_str(&format!("put {}\n", quote(name)));
    }
    batch.push_str("put \"star*.txt\" \"copy of star*.txt\"\n");
    batch.push_str("lmkdir one-by-one\nlcd one-by-one\n");
    for name in ODD_NAMES {
        batch.push_str(&format!("get {}\n", quote(name)));
    }
    batch.push_str(
        "lcd ..\n\
         lmkdir globbed\n\
         lcd globbed\n\
         get *.txt\n\
         lcd ..\n\
         mkdir up\n\
         cd up\n\
         mput *.txt\n\
         put *.dat\n\
         ls -1\n\
         lmkdir mget\n\
         lcd mget\n\
         mget w*\n\
         get [[]br]*\n\
         lcd ..\n\
         cd /\n\
         -get nothing-matches-*\n",
    );
    let out = fx.sftp(&[], &batch);
    assert!(out.status.success(), "the batch failed\n{}", out.show());

    for name in ODD_NAMES {
        assert_same_file(&local.join(name), &root.join(name));
        assert_same_file(&local.join(name), &local.join("one-by-one").join(name));
        assert_same_file(&local.join(name), &local.join("globbed").join(name));
        assert_same_file(&local.join(name), &root.join("up").join(name));
    }
    assert_same_file(&local.join("star*.txt"), &root.join("copy of star*.txt"));
    // `get "star*.txt"` fetched the literal name only, `get *.txt` everything.
    assert!(!local.join("one-by-one/starry.txt").exists());
    assert_same_file(&root.join("starry.txt"), &local.join("globbed/starry.txt"));
    assert_same_file(&local.join("plain.dat"), &root.join("up/plain.dat"));
    assert!(
        !root.join("up/starry.txt").exists(),
        "mput is local globbing"
    );
    assert_eq!(
        names(&local.join("mget")),
        ["[br].txt", "what?.txt", "with space.txt"]
    );
    let mut listed: Vec<&str> = section(&out.stdout, "ls -1");
    listed.sort_unstable();
    let mut expected: Vec<&str> = ODD_NAMES.iter().copied().chain(["plain.dat"]).collect();
    expected.sort_unstable();
    assert_eq!(listed, expected, "{}", out.show());
    assert!(
        out.stderr.contains("nothing-matches-*\" not found")
            || out.stderr.contains("nothing-matches-* not found"),
        "{}",
        out.show()
    );
}

#[test]
fn recursive_trees_both_ways() {
    let Some(fx) = Fx::new() else { return };
    let (local, root) = (fx.local(), fx.root());
    let tree = local.join("tree");
    for dir in ["a/b/c", "a/empty", "d e/f", "g"] {
        std::fs::create_dir_all(tree.join(dir)).unwrap();
    }
    let files = [
        ("top.txt", 10),
        ("a/one.bin", 70_000),
        ("a/b/two.bin", 1),
        ("a/b/c/three.bin", 300_000),
        ("a/b/c/zero", 0),
        ("d e/f/odd name*.txt", 123),
        ("g/h.txt", 4096),
    ];
    for (i, (name, len)) in files.iter().enumerate() {
        std::fs::write(tree.join(name), pseudo_random(*len, i as u64 + 1)).unwrap();
    }

    let out = fx.sftp(
        &[],
        "put -r tree\n\
         mkdir second\n\
         put -r tree second\n\
         get -r tree back\n\
         get -r second/tree back2\n",
    );
    assert!(out.status.success(), "the batch failed\n{}", out.show());
    assert_same_tree(&tree, &root.join("tree"));
    assert_same_tree(&tree, &root.join("second/tree"));
    assert_same_tree(&tree, &local.join("back"));
    assert_same_tree(&tree, &local.join("back2"));
}

#[test]
fn remote_file_operations_take_effect_on_disk() {
    let Some(fx) = Fx::new() else { return };
    let (local, root) = (fx.local(), fx.root());
    let data = pseudo_random(200_000, 7);
    std::fs::write(local.join("data.bin"), &data).unwrap();
    std::fs::write(local.join("small.txt"), "small\n").unwrap();
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();

    let out = fx.sftp(
        &[],
        &format!(
            "put data.bin\n\
             put small.txt\n\
             put small.txt other.txt\n\
             rename small.txt renamed.txt\n\
             -rename -l other.txt renamed.txt\n\
             rename other.txt renamed.txt\n\
             ln data.bin hard.bin\n\
             ln -s data.bin soft.bin\n\
             symlink renamed.txt soft2.txt\n\
             cp data.bin copy.bin\n\
             copy renamed.txt copy.txt\n\
             mkdir dir\n\
             mkdir dir/sub\n\
             -mkdir dir\n\
             cp data.bin dir/sub/deep.bin\n\
             mkdir gone\n\
             rmdir gone\n\
             -rmdir dir\n\
             chmod 640 data.bin\n\
             chmod 750 dir\n\
             chgrp {gid} copy.bin\n\
             chown {uid} copy.bin\n\
             chown -h {uid} soft.bin\n\
             chgrp -h {gid} soft.bin\n\
             put small.txt doomed.txt\n\
             rm doomed.txt\n\
             -rm doomed.txt\n\
             get soft.bin via-symlink.bin\n\
             get copy.bin copied-back.bin\n"
        ),
    );
    assert!(out.status.success(), "the batch failed\n{}", out.show());

    // rename: POSIX rename replaced the target; the legacy one refused to.
    assert!(!root.join("small.txt").exists() && !root.join("other.txt").exists());
    assert_eq!(std::fs::read(root.join("renamed.txt")).unwrap(), b"small\n");
    let said = |line: &str| out.stderr.lines().any(|l| l == line);
    assert!(
        said("remote rename \"/other.txt\" to \"/renamed.txt\": Failure"),
        "{}",
        out.show()
    );
    // ln: the same inode; ln -s and symlink: links to the relative names given.
    let meta = std::fs::metadata(root.join("data.bin")).unwrap();
    let hard = std::fs::metadata(root.join("hard.bin")).unwrap();
    assert_eq!((meta.ino(), meta.nlink()), (hard.ino(), 2));
    assert_eq!(
        std::fs::read_link(root.join("soft.bin")).unwrap(),
        Path::new("data.bin")
    );
    assert_eq!(
        std::fs::read_link(root.join("soft2.txt")).unwrap(),
        Path::new("renamed.txt")
    );
    // cp (copy-data): separate files with the same bytes.
    for copy in ["copy.bin", "dir/sub/deep.bin"] {
        let m = std::fs::metadata(root.join(copy)).unwrap();
        assert_ne!(m.ino(), meta.ino(), "{copy} is a copy, not a link");
        assert!(std::fs::read(root.join(copy)).unwrap() == data, "{copy}");
    }
    assert_eq!(std::fs::read(root.join("copy.txt")).unwrap(), b"small\n");
    assert_same_file(&local.join("data.bin"), &local.join("via-symlink.bin"));
    assert_same_file(&local.join("data.bin"), &local.join("copied-back.bin"));
    // mkdir / rmdir.
    assert!(root.join("dir/sub").is_dir());
    assert!(!root.join("gone").exists());
    assert!(said("remote mkdir \"/dir\": Failure"), "{}", out.show());
    assert!(said("remote rmdir \"/dir\": Failure"), "{}", out.show());
    // chmod / chgrp / chown.
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!(
        std::fs::metadata(root.join("dir")).unwrap().mode() & 0o7777,
        0o750
    );
    let copy = std::fs::metadata(root.join("copy.bin")).unwrap();
    assert_eq!((copy.uid(), copy.gid()), (uid, gid));
    // rm.
    assert!(!root.join("doomed.txt").exists());
    assert!(
        said("remote delete /doomed.txt: No such file or directory"),
        "{}",
        out.show()
    );
}

#[test]
fn listing_statvfs_and_navigation() {
    let Some(fx) = Fx::new() else { return };
    let (local, root) = (fx.local(), fx.root());
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("big.bin"), pseudo_random(50_000, 3)).unwrap();
    std::fs::write(root.join("small.txt"), "x").unwrap();
    std::fs::write(root.join(".hidden"), "h").unwrap();
    std::fs::write(root.join("sub/inner.txt"), "inner\n").unwrap();
    std::fs::write(local.join("local-only.txt"), "l").unwrap();
    std::os::unix::fs::symlink("sub/deeper", root.join("dlink")).unwrap();

    let out = fx.sftp(
        &[],
        "version\n\
         pwd\n\
         lpwd\n\
         lls\n\
         ls -1\n\
         ls -1a\n\
         ls -1S\n\
         ls -1r\n\
         ls -l\n\
         ls -ln\n\
         ls -lh\n\
         ls -lt\n\
         ls -l sub\n\
         ls -1 sub/*.txt\n\
         df\n\
         df -h\n\
         df -i\n\
         df sub\n\
         cd sub\n\
         pwd\n\
         cd deeper\n\
         pwd\n\
         cd ../../sub/./deeper/..\n\
         pwd\n\
         get inner.txt\n\
         cd /\n\
         cd ..\n\
         pwd\n\
         cd ../../..\n\
         pwd\n\
         -cd no-such-dir\n\
         -cd small.txt\n\
         pwd\n\
         cd dlink\n\
         pwd\n\
         cd /dlink/..\n\
         pwd\n\
         -get ../../../etc/passwd escaped\n\
         lmkdir ldir\n\
         lcd ldir\n\
         lpwd\n\
         lumask 077\n\
         progress\n\
         get small.txt\n\
         help\n\
         quit\n",
    );
    assert!(out.status.success(), "the batch failed\n{}", out.show());
    let stdout = &out.stdout;
    assert!(stdout.contains("SFTP protocol version 3"), "{}", out.show());
    assert_eq!(section(stdout, "pwd"), ["Remote working directory: /"]);
    assert_eq!(
        section(stdout, "ls -1"),
        ["big.bin", "dlink", "small.txt", "sub"]
    );
    assert_eq!(
        section(stdout, "ls -1a"),
        [".", "..", ".hidden", "big.bin", "dlink", "small.txt", "sub"]
    );
    assert_eq!(section(stdout, "ls -1S")[0], "big.bin");
    assert_eq!(
        section(stdout, "ls -1r"),
        ["sub", "small.txt", "dlink", "big.bin"]
    );
    let long = section(stdout, "ls -l");
    assert_eq!(long.len(), 4, "{long:?}");
    assert!(
        long[0].starts_with("-rw") && long[0].contains("50000") && long[0].ends_with("big.bin"),
        "{long:?}"
    );
    assert!(
        long[1].starts_with('l') && long[1].contains("dlink"),
        "{long:?}"
    );
    assert!(
        long[3].starts_with('d') && long[3].ends_with("sub"),
        "{long:?}"
    );
    let uid = rustix::process::getuid().as_raw().to_string();
    assert!(
        section(stdout, "ls -ln")[0]
            .split_whitespace()
            .any(|w| w == uid),
        "{}",
        out.show()
    );
    assert_eq!(section(stdout, "ls -l sub").len(), 2);
    assert_eq!(section(stdout, "ls -1 sub/*.txt"), ["sub/inner.txt"]);
    // statvfs@openssh.com: a header and one line of figures.
    for (cmd, header) in [
        ("df", "Size"),
        ("df -h", "Size"),
        ("df -i", "Inodes"),
        ("df sub", "Size"),
    ] {
        let lines = section(stdout, cmd);
        assert_eq!(lines.len(), 2, "{cmd}: {lines:?}");
        assert!(lines[0].contains(header), "{cmd}: {lines:?}");
        assert!(lines[1].split_whitespace().count() >= 4, "{cmd}: {lines:?}");
    }
    let pwds: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("Remote working directory: "))
        .collect();
    // REALPATH resolves a symlink (`cd dlink` lands in its target), but `..` is lexical
    // (ARCHITECTURE.md: `VPath` resolves it, stopping at the root), so `/dlink/..` is `/`
    // where OpenSSH's sftp-server, resolving `dlink` first, says `/sub`.
    assert_eq!(
        pwds,
        [
            "/",
            "/sub",
            "/sub/deeper",
            "/sub",
            "/",
            "/",
            "/",
            "/sub/deeper",
            "/"
        ]
    );
    assert_same_file(&root.join("sub/inner.txt"), &local.join("inner.txt"));
    assert!(
        out.stderr
            .contains("stat remote: No such file or directory"),
        "{}",
        out.show()
    );
    assert!(out.stderr.contains("is not a directory"), "{}", out.show());
    assert!(!local.join("escaped").exists(), "{}", out.show());
    assert_eq!(section(stdout, "lls"), ["local-only.txt"]);
    let lpwd = format!("Local working directory: {}", path_str(&local.join("ldir")));
    assert!(stdout.contains(&lpwd), "{}", out.show());
    assert_eq!(std::fs::read(local.join("ldir/small.txt")).unwrap(), b"x");
    assert!(stdout.contains("Available commands"), "{}", out.show());
}

#[test]
fn request_sizes_and_pipelining_keep_content() {
    let Some(fx) = Fx::new() else { return };
    let (local, root) = (fx.local(), fx.root());
    // Not a multiple of any request size.
    std::fs::write(
        local.join("src.bin"),
        pseudo_random(3 * 1024 * 1024 + 12_345, 11),
    )
    .unwrap();
    for (i, opts) in [
        &[][..],
        &["-R", "256", "-B", "261120"][..],
        &["-B", "1024"][..],
        &["-R", "1", "-B", "65536"][..],
    ]
    .into_iter()
    .enumerate()
    {
        let out = fx.sftp_client_opts(
            opts,
            &format!("put src.bin up{i}.bin\nget up{i}.bin down{i}.bin\n"),
        );
        assert!(
            out.status.success(),
            "{opts:?}: the batch failed\n{}",
            out.show()
        );
        assert_same_file(&local.join("src.bin"), &root.join(format!("up{i}.bin")));
        assert_same_file(&local.join("src.bin"), &local.join(format!("down{i}.bin")));
    }
}

#[test]
fn resume_preserve_and_fsync() {
    let Some(fx) = Fx::new() else { return };
    let (local, root) = (fx.local(), fx.root());
    let data = pseudo_random(1_000_000, 5);
    std::fs::write(local.join("up.bin"), &data).unwrap();
    std::fs::write(root.join("up.bin"), &data[..300_000]).unwrap();
    std::fs::write(local.join("up2.bin"), &data).unwrap();
    std::fs::write(root.join("up2.bin"), &data[..1]).unwrap();
    std::fs::write(root.join("down.bin"), &data).unwrap();
    std::fs::write(local.join("down.bin"), &data[..400_000]).unwrap();
    std::fs::write(root.join("down2.bin"), &data).unwrap();
    std::fs::write(local.join("down2.bin"), &data[..999_999]).unwrap();
    // An old mtime and an unusual mode for -p to carry over.
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::write(local.join("keep.txt"), "keep\n").unwrap();
    set_mtime(&local.join("keep.txt"), old);
    std::fs::set_permissions(
        local.join("keep.txt"),
        std::fs::Permissions::from_mode(0o604),
    )
    .unwrap();
    std::fs::write(root.join("remote-keep.txt"), "remote\n").unwrap();
    set_mtime(&root.join("remote-keep.txt"), old);

    let out = fx.sftp(
        &[],
        "reput up.bin\n\
         put -a up2.bin\n\
         reget down.bin\n\
         get -a down2.bin\n\
         put -p keep.txt\n\
         get -p remote-keep.txt\n\
         put -f up.bin synced.bin\n\
         get -f synced.bin synced-back.bin\n\
         put -pf keep.txt keep2.txt\n",
    );
    assert!(out.status.success(), "the batch failed\n{}", out.show());
    for name in ["up.bin", "up2.bin"] {
        assert!(std::fs::read(root.join(name)).unwrap() == data, "{name}");
    }
    for name in ["down.bin", "down2.bin", "synced-back.bin"] {
        assert!(std::fs::read(local.join(name)).unwrap() == data, "{name}");
    }
    assert!(std::fs::read(root.join("synced.bin")).unwrap() == data);
    for name in ["keep.txt", "keep2.txt"] {
        let meta = std::fs::metadata(root.join(name)).unwrap();
        assert_eq!(meta.modified().unwrap(), old, "{name}: put -p keeps mtime");
        assert_eq!(meta.mode() & 0o777, 0o604, "{name}: put -p keeps the mode");
    }
    let got = std::fs::metadata(local.join("remote-keep.txt")).unwrap();
    assert_eq!(got.modified().unwrap(), old, "get -p keeps mtime");
}

#[test]
fn read_only_refuses_every_change() {
    let Some(fx) = Fx::new() else { return };
    let (local, root) = (fx.local(), fx.root());
    std::fs::create_dir(root.join("dir")).unwrap();
    std::fs::write(root.join("file.txt"), "original\n").unwrap();
    std::fs::write(local.join("new.txt"), "new\n").unwrap();
    let before = snapshot(&root, &[]);

    let refused = [
        ("-put new.txt", "new.txt"),
        ("-put new.txt file.txt", "file.txt"),
        ("-reput new.txt file.txt", "file.txt"),
        ("-mkdir made", "made"),
        ("-rmdir dir", "dir"),
        ("-rm file.txt", "file.txt"),
        ("-rename file.txt moved.txt", "file.txt"),
        ("-rename -l file.txt moved.txt", "file.txt"),
        ("-chmod 600 file.txt", "file.txt"),
        ("-chown 0 file.txt", "file.txt"),
        ("-ln file.txt hard.txt", "hard.txt"),
        ("-ln -s file.txt soft.txt", "soft.txt"),
        ("-cp file.txt copy.txt", "copy.txt"),
        ("-put -r dir", "dir"),
    ];
    let mut batch = String::new();
    for (cmd, _) in refused {
        batch.push_str(cmd);
        batch.push('\n');
    }
    batch.push_str("get file.txt got.txt\nls -l\ndf\nget -r dir gotdir\n");
    std::fs::create_dir(local.join("dir")).unwrap();
    std::fs::write(local.join("dir/x"), "x").unwrap();
    let out = fx.sftp(&["-R"], &batch);
    assert!(out.status.success(), "the batch failed\n{}", out.show());

    assert_eq!(snapshot(&root, &[]), before, "{}", out.show());
    let denied = count(&out.stderr, "Permission denied");
    assert!(
        denied >= refused.len(),
        "every refused command says Permission denied ({denied} of {})\n{}",
        refused.len(),
        out.show()
    );
    for (cmd, name) in refused {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.contains(name) && l.contains("Permission denied")),
            "{cmd}: no Permission denied for {name}\n{}",
            out.show()
        );
    }
    assert_eq!(std::fs::read(local.join("got.txt")).unwrap(), b"original\n");
    assert!(local.join("gotdir").is_dir());
    assert_eq!(section(&out.stdout, "ls -l").len(), 2);
}

#[test]
fn deny_and_allow_lists() {
    let Some(fx) = Fx::new() else { return };
    let (local, root) = (fx.local(), fx.root());
    std::fs::write(root.join("keep.txt"), "keep\n").unwrap();
    std::fs::write(local.join("up.txt"), "up\n").unwrap();

    // -P write,remove: those two refused, everything else served.
    let out = fx.sftp(
        &["-P", "write,remove"],
        "-put up.txt\n\
         -rm keep.txt\n\
         get keep.txt got.txt\n\
         mkdir made\n\
         rename keep.txt kept.txt\n\
         ls\n",
    );
    assert!(out.status.success(), "-P: the batch failed\n{}", out.show());
    assert!(
        out.stderr.contains("up.txt\": Permission denied"),
        "{}",
        out.show()
    );
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains("keep.txt") && l.contains("Permission denied")),
        "{}",
        out.show()
    );
    // OPEN is allowed, so (as with OpenSSH) the upload left an empty file.
    assert_eq!(std::fs::metadata(root.join("up.txt")).unwrap().len(), 0);
    assert_eq!(std::fs::read(local.join("got.txt")).unwrap(), b"keep\n");
    assert!(root.join("made").is_dir());
    assert!(root.join("kept.txt").exists() && !root.join("keep.txt").exists());

    // -p: only reading (and what the client needs to start) is served.
    let before = snapshot(&root, &[]);
    let out = fx.sftp(
        &[
            "-p",
            "open,close,read,stat,lstat,fstat,realpath,opendir,readdir",
        ],
        "get kept.txt got2.txt\n\
         ls\n\
         -mkdir other\n\
         -rename kept.txt again.txt\n\
         -rm kept.txt\n\
         -ln -s kept.txt link\n\
         -chmod 600 kept.txt\n",
    );
    assert!(out.status.success(), "-p: the batch failed\n{}", out.show());
    assert_eq!(std::fs::read(local.join("got2.txt")).unwrap(), b"keep\n");
    assert_eq!(snapshot(&root, &[]), before, "{}", out.show());
    for name in ["other", "kept.txt", "link"] {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.contains(name) && l.contains("Permission denied")),
            "no Permission denied for {name}\n{}",
            out.show()
        );
    }
}

/// sshd_config lines written for OpenSSH's sftp-server name extensions without
/// `@openssh.com` (`-P hardlink`); a drop-in must accept them.
#[test]
fn openssh_spellings_of_request_names_are_accepted() {
    let Some(fx) = Fx::new() else { return };
    std::fs::write(fx.root().join("file.txt"), "f\n").unwrap();
    let out = fx.sftp(
        &["-P", "hardlink,posix-rename,copy-data"],
        "-ln file.txt hard.txt\n\
         -rename file.txt moved.txt\n\
         -cp file.txt copy.txt\n\
         ln -s file.txt soft.txt\n",
    );
    assert!(out.status.success(), "the batch failed\n{}", out.show());
    assert_eq!(count(&out.stderr, "Permission denied"), 3, "{}", out.show());
    assert!(!fx.root().join("hard.txt").exists());
    assert!(!fx.root().join("moved.txt").exists());
    assert!(fx.root().join("soft.txt").is_symlink());
}

#[test]
fn query_and_invalid_options() {
    // Needs no client.
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        common::run(
            sftp_server().args(args).current_dir(dir.path()),
            Duration::from_secs(20),
        )
    };

    let out = run(&["-Q", "requests"]);
    assert!(out.status.success(), "{}", out.show());
    let listed: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(listed, sftpgate_proto::REQUEST_NAMES, "{}", out.show());
    for name in ["open", "write", "remove", "copy-data"] {
        assert!(listed.contains(&name), "{name}");
    }

    let out = run(&["-X"]);
    assert!(!out.status.success(), "{}", out.show());
    assert!(out.stderr.contains("Usage:"), "{}", out.show());
    assert!(out.stderr.contains("-X"), "{}", out.show());

    for (args, says) in [
        (&["-u", "999"][..], "invalid umask"),
        (&["-u", "abc"][..], "invalid umask"),
        (&["-u", "08"][..], "invalid umask"),
        (&["-P", "write,bogus"][..], "unknown request \"bogus\""),
        (&["-p", "open,nope"][..], "unknown request \"nope\""),
        (&["-l", "LOUD"][..], "invalid log level"),
        (&["-Q", "everything"][..], "unsupported query"),
        (&["-d", "/tmp/%x"][..], "invalid escape"),
        (&["-u"][..], "a value is required"),
    ] {
        let out = run(args);
        assert!(!out.status.success(), "{args:?}\n{}", out.show());
        assert!(out.stderr.contains(says), "{args:?}\n{}", out.show());
        assert!(
            !out.stderr.contains("Stack backtrace"),
            "{args:?}\n{}",
            out.show()
        );
        assert!(
            out.stdout.is_empty(),
            "{args:?}: nothing on the SFTP stream\n{}",
            out.show()
        );
    }
    // Case does not matter for the level (OpenSSH accepts `-l debug3`).
    let out = run(&["-l", "debug3", "-Q", "requests"]);
    assert!(out.status.success(), "{}", out.show());
}

#[test]
fn umask_applies_to_created_files_and_directories() {
    let Some(fx) = Fx::new() else { return };
    let (local, root) = (fx.local(), fx.root());
    std::fs::write(local.join("f.txt"), "f\n").unwrap();
    std::fs::set_permissions(local.join("f.txt"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = fx.sftp(&["-u", "077"], "put f.txt\nmkdir d\nput f.txt d/g.txt\n");
    assert!(out.status.success(), "the batch failed\n{}", out.show());
    let mode = |p: &str| std::fs::metadata(root.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("f.txt"), 0o600);
    assert_eq!(mode("d/g.txt"), 0o600);
    assert_eq!(mode("d"), 0o700);

    let out = fx.sftp(&["-u", "027"], "put f.txt h.txt\nmkdir e\n");
    assert!(out.status.success(), "the batch failed\n{}", out.show());
    assert_eq!(mode("h.txt"), 0o640);
    assert_eq!(mode("e"), 0o750);
}

#[test]
fn without_root_paths_start_in_the_working_directory_and_d_expands() {
    let Some(fx) = Fx::new() else { return };
    let local = fx.local();
    std::fs::write(local.join("f.txt"), "f\n").unwrap();
    let start = fx.path().join("start");
    let home = fx.path().join("home");
    let user = "someone";
    for dir in [
        &start,
        &home.join("in"),
        &fx.path().join(format!("srv/{user}%")),
    ] {
        std::fs::create_dir_all(dir).unwrap();
    }
    // The client's (and so the server's) working directory is `start`; `f.txt` is given by
    // its absolute local path.
    let batch = format!("pwd\nput {} up.txt\nls -1\n", quote(local.join("f.txt")));
    let cases = [
        (vec![], start.clone()),
        (vec!["-d".to_owned(), "%d/in".to_owned()], home.join("in")),
        (
            vec!["-d".to_owned(), format!("{}/srv/%u%%", path_str(fx.path()))],
            fx.path().join(format!("srv/{user}%")),
        ),
    ];
    for (args, expected) in cases {
        let out = fx.sftp_with(&start, &[], &server_command(&args), &batch, |cmd| {
            cmd.env("HOME", &home).env("USER", user);
        });
        assert!(
            out.status.success(),
            "{args:?}: the batch failed\n{}",
            out.show()
        );
        let canonical = expected.canonicalize().unwrap();
        assert_eq!(
            section(&out.stdout, "pwd"),
            [format!(
                "Remote working directory: {}",
                path_str(&canonical)
            )],
            "{args:?}"
        );
        assert_eq!(
            std::fs::read(expected.join("up.txt")).unwrap(),
            b"f\n",
            "{args:?}"
        );
        std::fs::remove_file(expected.join("up.txt")).unwrap();
    }
}

#[test]
fn stdin_eof_ends_the_session_with_one_exit_and_status_0() {
    let dir = tempfile::tempdir().unwrap();
    let root = path_str(dir.path());
    let mut server = Piped::start(dir.path(), &["--root", &root, "-e", "-l", "DEBUG"]);
    server.handshake();
    server.close_stdin();
    let status = server.wait(EXIT_TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status after stdin EOF: {status:?}\n{}",
        server.stderr()
    );
    assert!(server.stdout_closes(Duration::from_secs(1)));
    let log = server.stderr();
    assert_eq!(count(&log, EXIT_DONE), 1, "{log}");
    assert!(log.contains("reason=client_eof"), "{log}");
}

/// sshd sends SIGTERM or SIGHUP when the client goes away; the process must end even though
/// its stdin stays open (a blocking stdin read must not keep it alive).
#[test]
fn sigterm_and_sighup_end_the_process_promptly() {
    for signal in [rustix::process::Signal::TERM, rustix::process::Signal::HUP] {
        let dir = tempfile::tempdir().unwrap();
        let root = path_str(dir.path());
        let mut server = Piped::start(dir.path(), &["--root", &root, "-e", "-l", "DEBUG"]);
        server.handshake();
        let sent = Instant::now();
        common::signal(&server.child, signal);
        let status = server.wait(EXIT_TIMEOUT);
        let log = server.stderr();
        assert!(
            status.is_some(),
            "{signal:?}: still running {EXIT_TIMEOUT:?} after the signal, stdin open\n{log}"
        );
        assert!(
            status.is_some_and(|s| s.success()),
            "{signal:?}: {status:?}\n{log}"
        );
        assert!(
            sent.elapsed() < Duration::from_secs(3),
            "{signal:?}: {:?}",
            sent.elapsed()
        );
        assert!(server.stdout_closes(Duration::from_secs(1)), "{signal:?}");
        assert_eq!(count(&log, EXIT_DONE), 1, "{signal:?}\n{log}");
        assert!(log.contains("reason=shutdown"), "{signal:?}\n{log}");
    }
}

/// SIGTERM to the server under a live `sftp -D`: the client sees the connection close.
#[test]
fn sigterm_mid_session_closes_the_clients_connection() {
    let Some(fx) = Fx::new() else { return };
    std::fs::write(fx.root().join("f.txt"), "f\n").unwrap();
    let pid_file = fx.path().join("server.pid");
    // `exec` keeps the pid: the wrapper only records it.
    let script = format!(
        "echo $$ > {} && exec {} sftp-server --root {} -e -l DEBUG",
        sh_quote(&path_str(&pid_file)),
        sh_quote(sftp_server_common::BIN),
        sh_quote(&path_str(&fx.root())),
    );
    let direct = format!("sh -c {}", quote(&script));
    let mut child = sftp_command(&fx.local(), &direct)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting sftp");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let stdout = sftp_server_common::collect(child.stdout.take().expect("stdout is piped"));
    let stderr = sftp_server_common::collect(child.stderr.take().expect("stderr is piped"));
    let client = KillOnDrop(child);
    let show = || {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            stdout.text(),
            stderr.text()
        )
    };
    use std::io::Write as _;
    stdin.write_all(b"ls -1\n").unwrap();
    stdin.flush().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || stdout.contains("f.txt")),
        "no listing\n{}",
        show()
    );
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let raw = pid.as_raw_nonzero().get() as u32;
    assert!(
        wait_until(EXIT_TIMEOUT, || process_ended(raw)),
        "sftpgate sftp-server still running after SIGTERM\n{}",
        show()
    );
    // The next command finds the connection closed and the client exits.
    let _ = stdin.write_all(b"ls -1\n");
    let _ = stdin.flush();
    let mut client = client;
    let status = common::wait_timeout(&mut client.0, EXIT_TIMEOUT);
    assert!(
        status.is_some(),
        "sftp did not notice the close\n{}",
        show()
    );
    // sftp's stderr carries the server's log (`-D` runs it with stderr inherited).
    let err = stderr.complete(Duration::from_secs(5));
    assert!(err.contains("Connection closed"), "{}", show());
    assert_eq!(count(&err, EXIT_DONE), 1, "{}", show());
}

#[test]
fn real_sshd_runs_it_as_the_sftp_subsystem() {
    let Some(sshd) = Sshd::find() else { return };
    let Some(fx) = Fx::new() else { return };
    if !common::require(&["ssh", "ssh-keygen"]) {
        return;
    }
    let (local, root) = (fx.local(), fx.root());
    // sshd discards a subsystem's stderr: the user's shell (which runs the command) sends
    // the log to a file instead.
    let log = fx.path().join("subsystem.log");
    let subsystem = format!(
        "{} sftp-server --root {} -e -l INFO 2>>{}",
        sh_quote(sftp_server_common::BIN),
        sh_quote(&path_str(&root)),
        sh_quote(&path_str(&log)),
    );
    let server = Sshd::start(&sshd, fx.path(), &subsystem);
    std::fs::write(local.join("up.bin"), pseudo_random(2 * 1024 * 1024 + 3, 9)).unwrap();
    std::fs::write(local.join("odd name*.txt"), "odd\n").unwrap();
    let out = server.sftp(
        &local,
        &user_name(),
        "pwd\n\
         put up.bin\n\
         put \"odd name*.txt\"\n\
         mkdir dir\n\
         rename up.bin dir/moved.bin\n\
         ls -1 dir\n\
         get dir/moved.bin down.bin\n\
         df\n",
    );
    assert!(
        out.status.success(),
        "the batch failed\n{}\n--- sshd ---\n{}",
        out.show(),
        server.stderr()
    );
    assert_eq!(section(&out.stdout, "pwd"), ["Remote working directory: /"]);
    assert_eq!(section(&out.stdout, "ls -1 dir"), ["dir/moved.bin"]);
    assert_same_file(&local.join("up.bin"), &root.join("dir/moved.bin"));
    assert_same_file(&local.join("up.bin"), &local.join("down.bin"));
    assert_same_file(&local.join("odd name*.txt"), &root.join("odd name*.txt"));
    // The session's exit ran once, when the client closed its end.
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(EXIT_TIMEOUT, || read_log().contains(EXIT_DONE));
    let log = read_log();
    assert_eq!(count(&log, EXIT_DONE), 1, "{log}");
    assert!(log.contains("reason=client_eof"), "{log}");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn set_mtime(path: &Path, time: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(time)
        .unwrap();
}

/// Same entries (files, directories) with the same contents below `a` and `b`.
fn assert_same_tree(a: &Path, b: &Path) {
    let shape = |root: &Path| -> Vec<(std::path::PathBuf, bool)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_owned()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
                let path = entry.unwrap().path();
                let is_dir = path.is_dir();
                out.push((path.strip_prefix(root).unwrap().to_owned(), is_dir));
                if is_dir {
                    stack.push(path);
                }
            }
        }
        out.sort();
        out
    };
    let (sa, sb) = (shape(a), shape(b));
    assert_eq!(
        sa,
        sb,
        "{} and {} differ in shape",
        a.display(),
        b.display()
    );
    for (rel, is_dir) in sa {
        if !is_dir {
            assert_same_file(&a.join(&rel), &b.join(&rel));
        }
    }
}
