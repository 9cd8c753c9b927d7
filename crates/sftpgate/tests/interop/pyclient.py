#!/usr/bin/env python3
"""One SFTP round trip with paramiko or asyncssh, for tests/interop.rs.

Usage: pyclient.py paramiko|asyncssh HOST PORT USER KEY

Runs in the local working directory (data.bin, small.txt, other.txt, partial.bin there), uses
paths relative to the server's start directory, and prints one `step: observation` line per
step: what the library returned, or the class of the error it raised (never the server's
message text, which is the server's own wording). The test compares these lines between
sftpgate and OpenSSH's sftp-server; it checks the files on both sides itself.
"""

import errno
import os
import stat
import sys

STAMP = 1_000_000_000
PARTIAL = 1024 * 1024 + 17


def kind(mode):
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


def describe(attrs):
    """Type, permission bits and size (directories' sizes are the filesystem's business).

    Takes paramiko's SFTPAttributes (st_mode, st_size) or asyncssh's SFTPAttrs
    (permissions, size)."""
    mode = getattr(attrs, "st_mode", None)
    if mode is None:
        mode = attrs.permissions
    size = getattr(attrs, "st_size", None)
    if size is None:
        size = attrs.size
    k = kind(mode)
    size = "" if k == "dir" else f" {size}"
    return f"{k} {stat.S_IMODE(mode):o}{size}"


def say(step, what):
    print(f"{step}: {what}", flush=True)


# --------------------------------------------------------------------------------------
# paramiko


def paramiko_error(e):
    import paramiko  # noqa: F401

    if isinstance(e, EOFError):
        return "EOFError"
    if isinstance(e, IOError) and e.errno is not None:
        return f"IOError({errno.errorcode.get(e.errno, e.errno)})"
    # paramiko raises IOError(message) for FAILURE and the other codes: the message is the
    # server's wording, so only the class is compared.
    return type(e).__name__


def run_paramiko(host, port, user, key):
    import paramiko

    say("version", f"paramiko {paramiko.__version__}")
    transport = paramiko.Transport((host, int(port)))
    transport.connect(username=user, pkey=paramiko.Ed25519Key.from_private_key_file(key))
    sftp = paramiko.SFTPClient.from_transport(transport)

    def step(name, fn):
        try:
            say(name, fn())
        except Exception as e:  # noqa: BLE001 - the class is the observation
            say(name, "error " + paramiko_error(e))

    home = sftp.normalize(".")
    step("normalize .", lambda: home)
    step("put data.bin", lambda: sftp.put("data.bin", "data.bin").st_size)
    step("put small.txt", lambda: sftp.put("small.txt", "small.txt").st_size)
    step("put other.txt", lambda: sftp.put("other.txt", "other.txt").st_size)
    step("stat data.bin", lambda: describe(sftp.stat("data.bin")))
    step("get data.bin", lambda: sftp.get("data.bin", "got.bin") or "ok")
    step("listdir", lambda: " ".join(sorted(sftp.listdir("."))))
    step(
        "listdir_attr",
        lambda: "; ".join(
            f"{a.filename} {describe(a)}"
            for a in sorted(sftp.listdir_attr("."), key=lambda a: a.filename)
        ),
    )
    step("mkdir dir", lambda: sftp.mkdir("dir") or "ok")
    step("mkdir dir again", lambda: sftp.mkdir("dir") or "ok")
    step("rename to new name", lambda: sftp.rename("data.bin", "dir/moved.bin") or "ok")
    step("rename over existing", lambda: sftp.rename("other.txt", "small.txt") or "ok")
    step("posix_rename over existing", lambda: sftp.posix_rename("other.txt", "small.txt") or "ok")
    step("read small.txt", lambda: sftp.open("small.txt").read().decode())
    step("rename missing", lambda: sftp.rename("nothere", "x") or "ok")
    step("mkdir empty", lambda: sftp.mkdir("empty") or "ok")
    step("rmdir empty", lambda: sftp.rmdir("empty") or "ok")
    step("rmdir non-empty", lambda: sftp.rmdir("dir") or "ok")
    step("rmdir missing", lambda: sftp.rmdir("empty") or "ok")
    step("symlink", lambda: sftp.symlink("small.txt", "sym") or "ok")
    step("readlink", lambda: sftp.readlink("sym"))
    step("lstat sym", lambda: kind(sftp.lstat("sym").st_mode))
    step("stat sym", lambda: describe(sftp.stat("sym")))
    step("chmod 600", lambda: sftp.chmod("small.txt", 0o600) or "ok")
    step("stat after chmod", lambda: describe(sftp.stat("small.txt")))
    step("utime", lambda: sftp.utime("small.txt", (STAMP, STAMP)) or "ok")
    step("mtime", lambda: sftp.stat("small.txt").st_mtime)
    step("truncate", lambda: sftp.truncate("small.txt", 3) or "ok")
    step("size after truncate", lambda: sftp.stat("small.txt").st_size)

    # Resume an interrupted upload: resumed.bin holds the first PARTIAL bytes.
    def resume_upload():
        have = sftp.stat("resumed.bin").st_size
        with open("data.bin", "rb") as src, sftp.open("resumed.bin", "r+") as dst:
            src.seek(have)
            dst.seek(have)
            dst.set_pipelined(True)
            while chunk := src.read(32768):
                dst.write(chunk)
        return f"from {have} to {sftp.stat('resumed.bin').st_size}"

    step("resume upload", resume_upload)

    # Resume an interrupted download: partial.bin holds the first PARTIAL bytes.
    def resume_download():
        have = os.path.getsize("partial.bin")
        with sftp.open("dir/moved.bin", "r") as src, open("partial.bin", "ab") as dst:
            src.seek(have)
            src.prefetch()
            dst.write(src.read())
        return f"from {have} to {os.path.getsize('partial.bin')}"

    step("resume download", resume_download)

    step("put doomed.txt", lambda: sftp.put("small.txt", "doomed.txt").st_size)
    step("remove", lambda: sftp.remove("doomed.txt") or "ok")
    step("remove again", lambda: sftp.remove("doomed.txt") or "ok")
    step("stat missing", lambda: describe(sftp.stat("doomed.txt")))
    step("open missing", lambda: sftp.open("doomed.txt").read())
    step("open in missing dir for writing", lambda: sftp.open("nodir/x", "w").close() or "ok")
    step("listdir missing", lambda: sftp.listdir("nodir"))
    step("listdir dir", lambda: " ".join(sorted(sftp.listdir("dir"))))
    sftp.close()
    transport.close()


# --------------------------------------------------------------------------------------
# asyncssh


def asyncssh_error(e):
    import asyncssh

    if isinstance(e, asyncssh.SFTPError):
        return f"SFTPError(code {e.code})"
    return type(e).__name__


def run_asyncssh(host, port, user, key):
    import asyncio

    import asyncssh

    async def main():
        say("version", f"asyncssh {asyncssh.__version__}")
        async with asyncssh.connect(
            host,
            port=int(port),
            username=user,
            client_keys=[key],
            known_hosts=None,
            agent_path=None,
            config=None,
        ) as conn:
            async with conn.start_sftp_client() as sftp:

                async def step(name, coro):
                    try:
                        say(name, await coro)
                    except Exception as e:  # noqa: BLE001 - the class is the observation
                        say(name, "error " + asyncssh_error(e))

                async def ok(coro):
                    await coro
                    return "ok"

                async def attrs(coro):
                    return describe(await coro)

                async def listing(path):
                    names = await sftp.readdir(path)
                    return "; ".join(
                        f"{n.filename} {describe(n.attrs)}"
                        for n in sorted(names, key=lambda n: n.filename)
                        if n.filename not in (".", "..")
                    )

                async def int_of(coro):
                    return int(await coro)

                async def names(coro):
                    return " ".join(sorted(await coro))

                async def read_all(path):
                    async with sftp.open(path, "rb") as f:
                        return (await f.read()).decode()

                await step("realpath .", sftp.realpath("."))
                await step("put", ok(sftp.put(["data.bin", "small.txt", "other.txt"], ".")))
                await step("stat data.bin", attrs(sftp.stat("data.bin")))
                await step("get data.bin", ok(sftp.get("data.bin", "got.bin")))
                await step("listdir", names(sftp.listdir(".")))
                await step("readdir", listing("."))
                await step("mkdir dir", ok(sftp.mkdir("dir")))
                await step("mkdir dir again", ok(sftp.mkdir("dir")))
                await step("makedirs exist_ok", ok(sftp.makedirs("dir/a/b", exist_ok=True)))
                await step("rmdir a/b", ok(sftp.rmdir("dir/a/b")))
                await step("rmdir a", ok(sftp.rmdir("dir/a")))
                await step("rename to new name", ok(sftp.rename("data.bin", "dir/moved.bin")))
                await step("rename over existing", ok(sftp.rename("other.txt", "small.txt")))
                await step(
                    "posix_rename over existing", ok(sftp.posix_rename("other.txt", "small.txt"))
                )
                await step("read small.txt", read_all("small.txt"))
                await step("rename missing", ok(sftp.rename("nothere", "x")))
                await step("mkdir empty", ok(sftp.mkdir("empty")))
                await step("rmdir empty", ok(sftp.rmdir("empty")))
                await step("rmdir non-empty", ok(sftp.rmdir("dir")))
                await step("rmdir missing", ok(sftp.rmdir("empty")))
                await step("symlink", ok(sftp.symlink("small.txt", "sym")))
                await step("readlink", sftp.readlink("sym"))
                await step("islink", sftp.islink("sym"))
                await step("stat sym", attrs(sftp.stat("sym")))
                await step("hardlink", ok(sftp.link("small.txt", "hard")))
                await step("chmod 600", ok(sftp.chmod("small.txt", 0o600)))
                await step("stat after chmod", attrs(sftp.stat("small.txt")))
                await step("utime", ok(sftp.utime("small.txt", (STAMP, STAMP))))
                await step("mtime", int_of(sftp.getmtime("small.txt")))
                await step("truncate", ok(sftp.truncate("small.txt", 3)))
                await step("size after truncate", sftp.getsize("small.txt"))
                await step("exists missing", sftp.exists("doomed.txt"))

                async def resume_upload():
                    have = await sftp.getsize("resumed.bin")
                    with open("data.bin", "rb") as src:
                        src.seek(have)
                        rest = src.read()
                    async with sftp.open("resumed.bin", "r+b") as dst:
                        await dst.write(rest, have)
                    return f"from {have} to {await sftp.getsize('resumed.bin')}"

                await step("resume upload", resume_upload())

                async def resume_download():
                    have = os.path.getsize("partial.bin")
                    async with sftp.open("dir/moved.bin", "rb") as src:
                        rest = await src.read(-1, have)
                    with open("partial.bin", "ab") as dst:
                        dst.write(rest)
                    return f"from {have} to {os.path.getsize('partial.bin')}"

                await step("resume download", resume_download())
                await step("put doomed.txt", ok(sftp.put("small.txt", "doomed.txt")))
                await step("remove", ok(sftp.remove("doomed.txt")))
                await step("remove again", ok(sftp.remove("doomed.txt")))
                await step("stat missing", attrs(sftp.stat("doomed.txt")))
                await step("open missing", read_all("doomed.txt"))
                await step("listdir missing", names(sftp.listdir("nodir")))
                await step("glob", names(sftp.glob("dir/*")))
                await step("statvfs", ok(sftp.statvfs(".")))
                await step("copy", ok(sftp.copy("dir/moved.bin", "copy.bin")))
                await step("listdir dir", names(sftp.listdir("dir")))

    asyncio.run(main())


if __name__ == "__main__":
    lib, host, port, user, key = sys.argv[1:6]
    {"paramiko": run_paramiko, "asyncssh": run_asyncssh}[lib](host, port, user, key)
