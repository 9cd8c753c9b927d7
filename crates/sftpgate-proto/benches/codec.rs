//! Codec throughput on the bulk-transfer path: framing and decoding WRITE requests, and
//! encoding DATA replies, at OpenSSH's default (32 KiB) and largest (256 KiB) payload sizes.
//!
//! `cargo bench -p sftpgate-proto --bench codec`. Throughput is in payload-carrying wire
//! bytes, so the numbers compare directly with link and disk speeds.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use sftpgate_proto::{encode_data_header, Decoder, Request, Response, DEFAULT_MAX_PACKET};

const SIZES: [(usize, &str); 2] = [(32 * 1024, "32KiB"), (256 * 1024, "256KiB")];

/// Wire bytes per decode iteration: enough packets to leave the caches behind.
const STREAM_BYTES: usize = 8 * 1024 * 1024;

/// What a server appends to its buffer between decode loops: one SSH channel data message,
/// at most 32 KiB from OpenSSH (its default channel packet size).
const READ_CHUNK: usize = 32 * 1024;

fn decode_write(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_write");
    for (size, label) in SIZES {
        let wire = write_stream(size);
        group.throughput(Throughput::Bytes(wire.len() as u64));

        // The buffer already holds every packet: framing and parsing alone. The copy into a
        // fresh buffer happens in the untimed setup.
        group.bench_with_input(BenchmarkId::new("buffered", label), &wire, |b, wire| {
            let mut decoder = Decoder::new();
            b.iter_batched_ref(
                || BytesMut::from(&wire[..]),
                |buf| {
                    let mut n = 0;
                    while let Some(request) = decoder.decode_request(buf).expect("valid") {
                        black_box(&request);
                        n += 1;
                    }
                    assert_eq!(n, wire.len() / (size + WRITE_OVERHEAD));
                },
                BatchSize::PerIteration,
            )
        });

        // As a server runs it: bytes arrive in 32 KiB pieces appended to one reused buffer
        // sized for the largest packet, and whole packets are decoded after each piece.
        // Includes the copy into the buffer (which receiving does anyway) and the buffer's
        // reuse of its space: when the room behind a partial frame runs out, `BytesMut`
        // moves the partial frame to the front, a second copy of those bytes.
        group.bench_with_input(BenchmarkId::new("streamed", label), &wire, |b, wire| {
            let mut decoder = Decoder::new();
            let mut buf = BytesMut::with_capacity(DEFAULT_MAX_PACKET as usize + READ_CHUNK);
            b.iter(|| {
                for chunk in wire.chunks(READ_CHUNK) {
                    buf.extend_from_slice(chunk);
                    while let Some(request) = decoder.decode_request(&mut buf).expect("valid") {
                        black_box(&request);
                    }
                }
                assert!(buf.is_empty());
            })
        });

        // Baseline for `streamed`: the same 32 KiB copies into a buffer of the same size,
        // no decoding. `streamed` / `copy_only` is what the codec costs on top of receiving.
        group.bench_with_input(BenchmarkId::new("copy_only", label), &wire, |b, wire| {
            let mut buf = vec![0u8; DEFAULT_MAX_PACKET as usize + READ_CHUNK];
            b.iter(|| {
                let mut at = 0;
                for chunk in wire.chunks(READ_CHUNK) {
                    if at + chunk.len() > buf.len() {
                        at = 0;
                    }
                    buf[at..at + chunk.len()].copy_from_slice(chunk);
                    at += chunk.len();
                    black_box(&buf);
                }
            })
        });
    }
    group.finish();
}

fn encode_data(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_data");
    for (size, label) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let mut out = BytesMut::with_capacity(size + 64);
        // Where the payload lands: right after the 13-byte DATA header.
        let dst = out.as_ptr() as usize + DATA_HEADER_LEN;

        // The payload sits half a page away from its destination, modulo 4 KiB. Where it
        // sits matters: see `aliased` below.
        let data = payload(size, dst, 2048);
        group.bench_function(BenchmarkId::new("response_encode", label), |b| {
            b.iter(|| {
                out.clear();
                Response::Data {
                    id: 7,
                    data: data.clone(),
                }
                .encode(&mut out);
                black_box(&out);
            })
        });
        group.bench_function(BenchmarkId::new("header_extend", label), |b| {
            b.iter(|| {
                out.clear();
                encode_data_header(&mut out, 7, data.len());
                out.extend_from_slice(&data);
                black_box(&out);
            })
        });

        // The same copy with source and destination at nearly the same offset within a
        // 4 KiB page ("4K aliasing"). On this machine's AMD EPYC, glibc's memcpy then runs
        // several times slower. It happens naturally: large allocations are page-aligned
        // mmaps, so copying a page-aligned file buffer behind a 13-byte header lands here.
        // Reading file data straight into `out` after `encode_data_header` avoids the copy.
        let data = payload(size, dst, 16);
        group.bench_function(BenchmarkId::new("header_extend_aliased", label), |b| {
            b.iter(|| {
                out.clear();
                encode_data_header(&mut out, 7, data.len());
                out.extend_from_slice(&data);
                black_box(&out);
            })
        });
    }
    group.finish();
}

/// SSH_FXP_DATA header: length, type, id, data length.
const DATA_HEADER_LEN: usize = 4 + 1 + 4 + 4;

/// `size` payload bytes placed so that `dst - payload` is `distance` modulo 4 KiB.
fn payload(size: usize, dst: usize, distance: usize) -> Bytes {
    let backing = Bytes::from(vec![0xA5; size + 8192]);
    let base = backing.as_ptr() as usize;
    let start = (dst.wrapping_sub(distance).wrapping_sub(base)) % 4096;
    let data = backing.slice(start..start + size);
    assert_eq!(dst.wrapping_sub(data.as_ptr() as usize) % 4096, distance);
    data
}

/// WRITE overhead on the wire: length, type, id, handle (4-byte string), offset, data length.
const WRITE_OVERHEAD: usize = 4 + 1 + 4 + (4 + 4) + 8 + 4;

/// Consecutive WRITE packets of `size` bytes each, about [`STREAM_BYTES`] in all.
fn write_stream(size: usize) -> Bytes {
    let data = Bytes::from(vec![0x5A; size]);
    let mut out = BytesMut::new();
    let mut offset = 0;
    while out.len() + size + WRITE_OVERHEAD <= STREAM_BYTES {
        Request::Write {
            id: (offset / size as u64) as u32,
            handle: Bytes::from_static(&[0, 0, 0, 1]),
            offset,
            data: data.clone().into(),
        }
        .encode(&mut out);
        offset += size as u64;
    }
    out.freeze()
}

criterion_group!(benches, decode_write, encode_data);
criterion_main!(benches);
