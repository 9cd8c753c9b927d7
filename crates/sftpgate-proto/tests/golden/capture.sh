#!/bin/sh
# Re-captures the golden vectors from a real OpenSSH sftp <-> sftp-server exchange.
# Usage: tests/golden/capture.sh   (from crates/sftpgate-proto; overwrites tests/golden/*.bin)
# Needs /usr/bin/sftp, /usr/lib/openssh/sftp-server and python3. The work directory is fixed
# (/tmp/sftpgate-golden) so the paths inside the packets are the same on every run; file
# times, sizes and statvfs numbers are whatever the capturing machine had.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cap=/tmp/sftpgate-golden
rm -rf "$cap"
mkdir -p "$cap/work"
cd "$cap/work"
printf 'hello, sftpgate\n' > local.txt
cat > "$cap/batch" <<'BATCH'
ls
put local.txt upload.txt
get upload.txt download.txt
rename upload.txt renamed.txt
mkdir newdir
rmdir newdir
ln -s renamed.txt link.txt
ls -l
df
rm link.txt
rm renamed.txt
BATCH
CAPTURE_DIR="$cap" sftp -D "$here/capture-wrapper.sh" -b "$cap/batch"
python3 - "$cap" "$here" <<'PY'
import struct, sys
cap, out = sys.argv[1], sys.argv[2]

def packets(name):
    data = open(f"{cap}/{name}", "rb").read()
    i, pkts = 0, []
    while i < len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        pkts.append(data[i:i + 4 + n])
        i += 4 + n
    assert i == len(data), "stream does not end on a packet boundary"
    return pkts

c2s, s2c = packets("client-to-server.bin"), packets("server-to-client.bin")
ptype = lambda p: p[4]
pid = lambda p: struct.unpack(">I", p[5:9])[0]
def ext_name(p):
    (n,) = struct.unpack(">I", p[9:13])
    return p[13:13 + n]
def first(pkts, pred):
    return next(p for p in pkts if pred(p))
def reply(p):
    return first(s2c, lambda r: ptype(r) != 2 and pid(r) == pid(p))

statvfs = first(c2s, lambda p: ptype(p) == 200 and ext_name(p) == b"statvfs@openssh.com")
limits = first(c2s, lambda p: ptype(p) == 200 and ext_name(p) == b"limits@openssh.com")
users = first(c2s, lambda p: ptype(p) == 200 and ext_name(p) == b"users-groups-by-id@openssh.com")
realpath = first(c2s, lambda p: ptype(p) == 16)
readdir = first(c2s, lambda p: ptype(p) == 12)
open_write = first(c2s, lambda p: ptype(p) == 3 and struct.unpack(">I", p[-12:-8])[0] & 2)
selection = {
    "c2s-init.bin": first(c2s, lambda p: ptype(p) == 1),
    "s2c-version.bin": first(s2c, lambda p: ptype(p) == 2),
    "c2s-limits.bin": limits,
    "s2c-limits-reply.bin": reply(limits),
    "c2s-realpath.bin": realpath,
    "s2c-realpath-name.bin": reply(realpath),
    "s2c-readdir-name.bin": reply(readdir),
    "c2s-users-groups-by-id.bin": users,
    "s2c-users-groups-reply.bin": reply(users),
    "c2s-open-write.bin": open_write,
    "s2c-handle.bin": reply(open_write),
    "c2s-write.bin": first(c2s, lambda p: ptype(p) == 6),
    "s2c-status-ok.bin": first(s2c, lambda p: ptype(p) == 101 and p[9:13] == b"\0\0\0\0"),
    "s2c-data.bin": first(s2c, lambda p: ptype(p) == 103),
    "s2c-status-eof.bin": first(s2c, lambda p: ptype(p) == 101 and p[9:13] == b"\0\0\0\1"),
    "s2c-attrs.bin": first(s2c, lambda p: ptype(p) == 105),
    "c2s-posix-rename.bin": first(c2s, lambda p: ptype(p) == 200 and ext_name(p) == b"posix-rename@openssh.com"),
    "c2s-mkdir.bin": first(c2s, lambda p: ptype(p) == 14),
    "c2s-symlink.bin": first(c2s, lambda p: ptype(p) == 20),
    "c2s-statvfs.bin": statvfs,
    "s2c-statvfs-reply.bin": reply(statvfs),
}
selection["c2s-session.bin"] = b"".join(c2s)
selection["s2c-session.bin"] = b"".join(s2c)
for name, pkt in selection.items():
    open(f"{out}/{name}", "wb").write(pkt)
    print(f"{name}: {len(pkt)} bytes")
PY
