//! Pipelined requests on one session: every request answered exactly once, overlapping
//! requests on a handle in order, independent ones concurrently within `max_in_flight`.
//!
//! The timing assertions are correctness checks of concurrency with wide margins (32 reads
//! of 50 ms each must overlap, or must not), not benchmarks.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use sftpgate_proto::{OpenFlags, Request, Response, StatusCode};
use sftpgate_server::Limits;

const CHUNK: usize = 8 * 1024;

fn chunk(i: usize) -> Vec<u8> {
    (0..CHUNK).map(|j| ((i * 31 + j) % 253) as u8).collect()
}

/// Sends `requests` back to back from another task (so replies are read meanwhile) and
/// collects one reply per request, keyed by id; panics on a duplicate or unknown id.
async fn pipeline(
    sftp: &mut SftpChannel,
    requests: Vec<Request>,
) -> (HashMap<u32, Response>, Vec<u32>) {
    let expected: Vec<u32> = requests.iter().map(|r| r.id().expect("an id")).collect();
    let writer = sftp.writer();
    let sender = tokio::spawn(async move {
        let mut out = bytes::BytesMut::new();
        for request in &requests {
            request.encode(&mut out);
        }
        writer
            .data_bytes(out.freeze())
            .await
            .expect("send the pipeline");
    });
    let mut replies = HashMap::new();
    let mut order = Vec::new();
    while replies.len() < expected.len() {
        let reply = sftp.recv().await.expect("channel closed mid-pipeline");
        let id = reply.id().expect("a reply id");
        assert!(
            expected.contains(&id),
            "reply to an id never sent: {reply:?}"
        );
        order.push(id);
        assert!(
            replies.insert(id, reply).is_none(),
            "id {id} answered twice"
        );
    }
    bounded("the sender", sender).await.expect("sender task");
    // Nothing else is queued: the next reply is for the next request.
    let id = sftp.id();
    let reply = sftp
        .request(Request::Stat {
            id,
            path: Bytes::from_static(b"/"),
        })
        .await;
    assert!(matches!(reply, Response::Attrs { .. }), "{reply:?}");
    (replies, order)
}

/// 64 WRITEs then 64 READs of the same ranges, all sent before any reply is read: every id
/// is answered exactly once and each READ sees its WRITE's data.
#[tokio::test(flavor = "multi_thread")]
async fn pipelined_writes_then_reads() {
    let mut server = TestServer::start(Options::default()).await;
    let (_client, mut sftp) = server.sftp_client().await;
    let flags = OpenFlags::READ | OpenFlags::WRITE | OpenFlags::CREAT | OpenFlags::TRUNC;
    let handle = sftp.open("/pipelined", flags).await.unwrap();

    let mut requests = Vec::new();
    for i in 0..64 {
        requests.push(Request::Write {
            id: 1000 + i as u32,
            handle: handle.clone(),
            offset: (i * CHUNK) as u64,
            data: Bytes::from(chunk(i)).into(),
        });
    }
    for i in 0..64 {
        requests.push(Request::Read {
            id: 2000 + i as u32,
            handle: handle.clone(),
            offset: (i * CHUNK) as u64,
            len: CHUNK as u32,
        });
    }
    let (replies, _order) = pipeline(&mut sftp, requests).await;
    assert_eq!(replies.len(), 128);
    for i in 0..64 {
        match &replies[&(1000 + i as u32)] {
            Response::Status { code, .. } => assert_eq!(*code, StatusCode::Ok, "WRITE {i}"),
            other => panic!("WRITE {i}: {other:?}"),
        }
        match &replies[&(2000 + i as u32)] {
            Response::Data { data, .. } => assert_eq!(&data[..], &chunk(i)[..], "READ {i}"),
            other => panic!("READ {i}: {other:?}"),
        }
    }
    sftp.close(&handle).await.unwrap();
    let on_disk = std::fs::read(server.root.join("pipelined")).unwrap();
    assert_eq!(on_disk.len(), 64 * CHUNK);
    for i in 0..64 {
        assert_eq!(&on_disk[i * CHUNK..(i + 1) * CHUNK], &chunk(i)[..]);
    }
    sftp.eof().await;
    server.log.wait_exits(1).await;
    server.stop().await;
}

/// 32 KiB READs, pipelined, to a client that takes at most 32,768 bytes per channel packet
/// (russh's default, as OpenSSH's): each reply is 32,781 bytes, and the server sends the
/// replies in whole packets, the 13 bytes over riding in front of the next reply, instead of
/// two packets per reply (see `sftp/writer.rs`).
#[tokio::test(flavor = "multi_thread")]
async fn pipelined_32k_reads_arrive_in_whole_packets() {
    const LEN: usize = 32 * 1024;
    const N: usize = 32;
    let mut server = TestServer::start(Options::default()).await;
    let content: Vec<u8> = (0..N * LEN).map(|j| (j % 251) as u8).collect();
    std::fs::write(server.root.join("big"), &content).unwrap();
    let (_client, mut sftp) = server.sftp_client().await;
    let handle = sftp.open("/big", OpenFlags::READ).await.unwrap();
    let requests = (0..N)
        .map(|i| Request::Read {
            id: 3000 + i as u32,
            handle: handle.clone(),
            offset: (i * LEN) as u64,
            len: LEN as u32,
        })
        .collect();
    let before = sftp.data_messages.len();
    let (replies, _order) = pipeline(&mut sftp, requests).await;
    for i in 0..N {
        match &replies[&(3000 + i as u32)] {
            Response::Data { data, .. } => {
                assert_eq!(&data[..], &content[i * LEN..(i + 1) * LEN], "READ {i}")
            }
            other => panic!("READ {i}: {other:?}"),
        }
    }
    let sizes = &sftp.data_messages[before..];
    assert!(sizes.iter().all(|&s| s <= 32_768), "{sizes:?}");
    // Sent as they are, the replies would be 2 x N messages (and the pipeline's closing STAT
    // one more). Packed: N whole packets and a short one at the end, plus a few more where
    // a tail could not wait for the next reply (at most 1 ms; a loaded machine may take
    // longer between two replies).
    assert!(
        sizes.len() <= N + N / 2,
        "{} channel messages for {N} replies: {sizes:?}",
        sizes.len()
    );
    sftp.close(&handle).await.unwrap();
    sftp.eof().await;
    server.log.wait_exits(1).await;
    server.stop().await;
}

/// Large READs of a file in memory are read into one buffer per SSH packet, which SSH
/// seals where it lies (see `Dispatcher::read`): the client gets the same
/// replies, in whole packets; a read failing partway gives a short read, then the error.
#[tokio::test(flavor = "multi_thread")]
async fn pipelined_large_reads_of_files_in_memory_arrive_in_whole_packets() {
    const LEN: usize = 255 * 1024;
    const N: usize = 12;
    const SIZE: usize = N * LEN - 5_000;
    const FAILS_FROM: u64 = 100_000;
    let mut server = TestServer::start(Options {
        fs: FsBehavior {
            reads_from_memory: true,
            ..FsBehavior::default()
        },
        ..Options::default()
    })
    .await;
    let content: Vec<u8> = (0..SIZE).map(|j| (j % 251) as u8).collect();
    std::fs::write(server.root.join("big"), &content).unwrap();
    let (_client, mut sftp) = server.sftp_client().await;
    let handle = sftp.open("/big", OpenFlags::READ).await.unwrap();
    // At offsets 7 past each 255 KiB: every reply's data placed differently, the last
    // one short at the end of the file.
    let requests = (0..N)
        .map(|i| Request::Read {
            id: 5000 + i as u32,
            handle: handle.clone(),
            offset: (i * LEN + 7) as u64,
            len: LEN as u32,
        })
        .collect();
    let before = sftp.data_messages.len();
    let (replies, _order) = pipeline(&mut sftp, requests).await;
    for i in 0..N {
        let (from, to) = (i * LEN + 7, ((i + 1) * LEN + 7).min(SIZE));
        match &replies[&(5000 + i as u32)] {
            Response::Data { data, .. } => {
                assert!(data[..] == content[from..to], "READ {i}: wrong data")
            }
            other => panic!("READ {i}: {other:?}"),
        }
    }
    let sizes = &sftp.data_messages[before..];
    assert!(sizes.iter().all(|&s| s <= 32_768), "{sizes:?}");
    // Each reply is 261,133 bytes: seven whole packets and one of 31,757 (the last
    // shorter), and the pipeline's closing STAT one more; a packet that met a window
    // opened only in part goes out in two (russh), not more.
    let whole = sizes.iter().filter(|&&s| s == 32_768).count();
    assert!(whole >= 7 * N - N / 2, "{whole} whole packets: {sizes:?}");
    assert!(
        sizes.len() <= 8 * N + 1 + N / 2,
        "{} messages: {sizes:?}",
        sizes.len()
    );
    sftp.close(&handle).await.unwrap();
    sftp.eof().await;
    server.log.wait_exits(1).await;
    server.stop().await;

    // Reads at 100,000 and past fail. The packet reads before it succeed: 0, 32,755,
    // 65,523 and 98,291 (to 131,059), so the READ comes back short; the client asks
    // again from there and gets the error.
    let mut server = TestServer::start(Options {
        fs: FsBehavior {
            reads_from_memory: true,
            read_fails_from: Some(FAILS_FROM),
            ..FsBehavior::default()
        },
        ..Options::default()
    })
    .await;
    std::fs::write(server.root.join("big"), &content).unwrap();
    let (_client, mut sftp) = server.sftp_client().await;
    let handle = sftp.open("/big", OpenFlags::READ).await.unwrap();
    let short = 32_755 + 3 * 32_768;
    let data = sftp.read(&handle, 0, LEN as u32).await.expect("first READ");
    assert!(data[..] == content[..short], "short read of {}", data.len());
    let (code, message) = sftp
        .read(&handle, short as u64, LEN as u32)
        .await
        .expect_err("second READ");
    assert_eq!(code, StatusCode::Failure);
    assert!(message.contains("simulated read failure"), "{message}");
    sftp.close(&handle).await.unwrap();
    sftp.eof().await;
    server.log.wait_exits(1).await;
    server.stop().await;
}

/// A READ that overlaps an earlier, slow WRITE waits for it and sees its data; a READ on
/// another handle does not wait. (A READ of another range of the same handle runs without
/// waiting too, but replies after the WRITE: replies on one handle keep request order, see
/// `sftp/sequencer.rs`.)
#[tokio::test(flavor = "multi_thread")]
async fn overlapping_read_waits_for_the_earlier_write() {
    let write_delay = Duration::from_millis(300);
    let mut server = TestServer::start(Options {
        fs: FsBehavior {
            write_delay: Some(write_delay),
            ..FsBehavior::default()
        },
        ..Options::default()
    })
    .await;
    let (_client, mut sftp) = server.sftp_client().await;
    let flags = OpenFlags::READ | OpenFlags::WRITE | OpenFlags::CREAT | OpenFlags::TRUNC;
    let handle = sftp.open("/ordered", flags).await.unwrap();
    // The file has 10 bytes at 100..110 before the pipelined requests.
    sftp.write(&handle, 100, b"0123456789").await.unwrap();
    let second = sftp.open("/ordered", OpenFlags::READ).await.unwrap();

    let requests = vec![
        Request::Write {
            id: 1,
            handle: handle.clone(),
            offset: 0,
            data: Bytes::from_static(b"fresh data").into(),
        },
        Request::Read {
            id: 2,
            handle: handle.clone(),
            offset: 0,
            len: 10,
        },
        Request::Read {
            id: 3,
            handle: second.clone(),
            offset: 100,
            len: 10,
        },
    ];
    let (replies, order) = pipeline(&mut sftp, requests).await;
    match &replies[&2] {
        Response::Data { data, .. } => assert_eq!(&data[..], b"fresh data"),
        other => panic!("READ after WRITE: {other:?}"),
    }
    match &replies[&3] {
        Response::Data { data, .. } => assert_eq!(&data[..], b"0123456789"),
        other => panic!("independent READ: {other:?}"),
    }
    let position = |id| order.iter().position(|x| *x == id).unwrap();
    assert!(
        position(1) < position(2),
        "the READ was answered before its WRITE: {order:?}"
    );
    assert!(
        position(3) < position(1),
        "the independent READ waited for the WRITE: {order:?}"
    );
    sftp.eof().await;
    server.log.wait_exits(1).await;
    server.stop().await;
}

/// 32 READs at once on storage that takes 50 ms per read.
async fn timed_concurrent_reads(limits: Limits) -> Duration {
    let max_in_flight = limits.max_in_flight;
    let delay = Duration::from_millis(50);
    let mut server = TestServer::start(Options {
        limits,
        fs: FsBehavior {
            read_delay: Some(delay),
            ..FsBehavior::default()
        },
        ..Options::default()
    })
    .await;
    std::fs::write(server.root.join("slow"), vec![7u8; 32 * 4096]).unwrap();
    let (_client, mut sftp) = server.sftp_client().await;
    let handle = sftp.open("/slow", OpenFlags::READ).await.unwrap();
    let requests = (0..32u32)
        .map(|i| Request::Read {
            id: 100 + i,
            handle: handle.clone(),
            offset: u64::from(i) * 4096,
            len: 4096,
        })
        .collect();
    let started = Instant::now();
    let (replies, order) = pipeline(&mut sftp, requests).await;
    let took = started.elapsed();
    // They ran at once, and still replied in request order (one handle: see
    // `sftp/sequencer.rs`).
    assert_eq!(order, (100..132).collect::<Vec<u32>>());
    eprintln!("32 reads of 50 ms with max_in_flight {max_in_flight}: {took:?}");
    for reply in replies.values() {
        match reply {
            Response::Data { data, .. } => assert_eq!(data.len(), 4096),
            other => panic!("{other:?}"),
        }
    }
    sftp.close(&handle).await.unwrap();
    sftp.eof().await;
    server.log.wait_exits(1).await;
    server.stop().await;
    took
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_on_slow_storage_run_concurrently() {
    let took = timed_concurrent_reads(Limits::default()).await;
    assert!(
        took < Duration::from_millis(16 * 50),
        "32 reads of 50 ms took {took:?}: they did not overlap"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_in_flight_one_serializes_reads() {
    let took = timed_concurrent_reads(Limits {
        max_in_flight: 1,
        ..Limits::default()
    })
    .await;
    assert!(
        took >= Duration::from_millis(32 * 50),
        "32 reads of 50 ms took {took:?} with max_in_flight = 1: they overlapped"
    );
}

/// Deep pipelining, as `sftp -R 256 -B 261120` or a load generator does it: 256 READs of
/// 255 KiB on one handle, each in its own channel message, far more reply bytes than the
/// READ budget. Budget comes back only as replies are sent; the reader must keep draining
/// the channel meanwhile, or the SSH connection's loop stops and nothing is sent at all
/// (this deadlocked once, when the reader itself waited for READ budget).
#[tokio::test(flavor = "multi_thread")]
async fn deep_read_pipelining_past_the_read_budget_completes() {
    const LEN: u32 = 261_120;
    const READS: u32 = 256;
    let mut server = TestServer::start(Options::default()).await;
    let content: Vec<u8> = (0..(LEN * READS) as usize)
        .map(|i| (i % 251) as u8)
        .collect();
    std::fs::write(server.root.join("big"), &content).unwrap();
    let (_client, mut sftp) = server.sftp_client().await;
    let handle = sftp.open("/big", OpenFlags::READ).await.unwrap();
    let writer = sftp.writer();
    let requests: Vec<Request> = (0..READS)
        .map(|i| Request::Read {
            id: 1000 + i,
            handle: handle.clone(),
            offset: u64::from(i) * u64::from(LEN),
            len: LEN,
        })
        .collect();
    let sender = tokio::spawn(async move {
        for request in &requests {
            let mut out = bytes::BytesMut::new();
            request.encode(&mut out);
            writer.data_bytes(out.freeze()).await.expect("send a READ");
        }
    });
    let mut got = 0u32;
    bounded("256 pipelined READ replies", async {
        while got < READS {
            match sftp.recv().await.expect("channel closed mid-pipeline") {
                Response::Data { id, data } => {
                    let at = ((id - 1000) * LEN) as usize;
                    assert_eq!(id, 1000 + got, "replies on one handle in request order");
                    assert_eq!(&data[..], &content[at..at + data.len()], "READ {id}");
                    assert_eq!(data.len(), LEN as usize, "READ {id} short");
                }
                other => panic!("{other:?}"),
            }
            got += 1;
        }
    })
    .await;
    bounded("the sender", sender).await.expect("sender task");
    sftp.close(&handle).await.unwrap();
    sftp.eof().await;
    server.log.wait_exits(1).await;
    server.stop().await;
}
