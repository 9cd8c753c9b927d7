//! Sealing and opening one 32 KiB channel packet (the size SFTP transfers move), ours on
//! OpenSSL against aws-lc's (russh's upstream choice). `cargo bench -p sftpgate-chacha`.

use aws_lc_rs::aead::chacha20_poly1305_openssh as aws_lc;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sftpgate_chacha::{OpeningKey, SealingKey, KEY_LEN, TAG_LEN};

/// A 32 KiB SFTP payload in one SSH packet: length, padding length, message header, data, padding.
const PACKET: usize = 4 + 1 + 9 + 32_768 + 6;

fn seal(c: &mut Criterion) {
    let key = [0x5a; KEY_LEN];
    let mut group = c.benchmark_group("chacha20-poly1305@openssh.com");
    group.throughput(Throughput::Bytes(PACKET as u64));
    let mut buf = vec![0x11u8; PACKET];
    let mut tag = [0u8; TAG_LEN];

    let mut ours = SealingKey::new(&key);
    let mut seq = 0u32;
    group.bench_function("seal_32k/openssl", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            ours.seal_in_place(seq, &mut buf, &mut tag);
        })
    });
    let theirs = aws_lc::SealingKey::new(&key);
    group.bench_function("seal_32k/aws-lc", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            theirs.seal_in_place(seq, &mut buf, &mut tag);
        })
    });

    // A small packet (an SFTP STATUS reply in one SSH packet): the per-packet set-up.
    let mut small = vec![0x33u8; 64];
    group.throughput(Throughput::Bytes(small.len() as u64));
    group.bench_function("seal_64b/openssl", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            ours.seal_in_place(seq, &mut small, &mut tag);
        })
    });
    group.bench_function("seal_64b/aws-lc", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            theirs.seal_in_place(seq, &mut small, &mut tag);
        })
    });
    group.throughput(Throughput::Bytes(PACKET as u64));

    // Opening: seal once, then open a fresh copy each time (the copy is in both).
    let mut sealer = SealingKey::new(&key);
    let mut sealed = vec![0x22u8; PACKET];
    sealer.seal_in_place(7, &mut sealed, &mut tag);
    let mut opener = OpeningKey::new(&key);
    group.bench_function("open_32k/openssl", |b| {
        b.iter(|| {
            buf.copy_from_slice(&sealed);
            opener.open_in_place(7, &mut buf, &tag).expect("opens");
        })
    });
    let their_opener = aws_lc::OpeningKey::new(&key);
    group.bench_function("open_32k/aws-lc", |b| {
        b.iter(|| {
            buf.copy_from_slice(&sealed);
            their_opener
                .open_in_place(7, &mut buf, &tag)
                .expect("opens");
        })
    });
    group.finish();
}

criterion_group!(benches, seal);
criterion_main!(benches);
