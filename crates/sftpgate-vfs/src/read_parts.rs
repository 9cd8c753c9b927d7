//! Reads into several buffers ([`File::read_parts`]): the part type, the two ways a
//! backend without a vectored read of its own fills them, and a filler for a backend whose
//! data comes in pieces.

use bytes::BytesMut;

use crate::error::FsError;
use crate::fs::File;

/// One buffer of a read into parts ([`File::read_parts`]): up to `len` bytes are appended
/// to `buf`, in place (what `buf` holds stays where it is, and the server has reserved
/// `len` bytes of room behind it).
#[derive(Debug, Default)]
pub struct ReadPart {
    /// The buffer appended to.
    pub buf: BytesMut,
    /// The most bytes this part takes.
    pub len: u32,
}

impl ReadPart {
    /// A part taking up to `len` bytes, appended to `buf`.
    pub fn new(buf: BytesMut, len: u32) -> ReadPart {
        ReadPart { buf, len }
    }
}

/// The total the parts take (saturating: no READ comes near `u32::MAX`).
pub fn parts_len(parts: &[ReadPart]) -> u32 {
    parts
        .iter()
        .fold(0, |sum, part| sum.saturating_add(part.len))
}

/// Fills the parts with one [`File::read`] each, in turn: for a file whose reads never wait
/// ([`File::reads_from_memory`]), where each is a copy into its part made at once. The
/// first part's error is the read's; a later part whose read fails or comes back short ends
/// the read there (a short read, which the client continues from), with that part as it was
/// or holding what it got.
pub async fn read_parts_in_turn<F: File + ?Sized>(
    file: &F,
    offset: u64,
    parts: &mut [ReadPart],
) -> Result<usize, FsError> {
    let mut n = 0usize;
    for part in parts.iter_mut() {
        if part.len == 0 {
            continue;
        }
        let got = match file.read(offset + n as u64, part.len, &mut part.buf).await {
            Ok(got) => got,
            Err(e) if n == 0 => return Err(e),
            Err(_) => break,
        };
        n += got;
        if got < part.len as usize {
            break;
        }
    }
    Ok(n)
}

/// Fills the parts from one [`File::read`] of their total into a buffer of its own, copied
/// into the parts: for a backend that reads one buffer at a time and whose reads may wait
/// (one wait per READ, not one per part). The copy is the one the SSH layer would make of
/// a single buffer cut into packets. On error nothing is appended.
pub async fn read_parts_joined<F: File + ?Sized>(
    file: &F,
    offset: u64,
    parts: &mut [ReadPart],
) -> Result<usize, FsError> {
    if let [one] = parts {
        return file.read(offset, one.len, &mut one.buf).await;
    }
    let total = parts_len(parts);
    let mut joined = BytesMut::with_capacity(total as usize);
    file.read(offset, total, &mut joined).await?;
    let mut fill = PartsFill::new(parts);
    fill.extend_from_slice(&joined);
    Ok(fill.appended())
}

/// Appends bytes to parts in turn, each up to its `len`: for a backend whose data comes in
/// pieces of its own (chunks fetched from object storage), copied straight into the parts.
#[derive(Debug)]
pub struct PartsFill<'a> {
    parts: &'a mut [ReadPart],
    /// The part being filled, and how much it has taken.
    at: usize,
    taken: usize,
    appended: usize,
}

impl<'a> PartsFill<'a> {
    /// Fills `parts` from the first on.
    pub fn new(parts: &'a mut [ReadPart]) -> PartsFill<'a> {
        PartsFill {
            parts,
            at: 0,
            taken: 0,
            appended: 0,
        }
    }

    /// Appends what fits of `data` (all of it until every part is full); returns how many
    /// bytes it took.
    pub fn extend_from_slice(&mut self, mut data: &[u8]) -> usize {
        let before = self.appended;
        while let (false, Some(part)) = (data.is_empty(), self.parts.get_mut(self.at)) {
            let take = data.len().min(part.len as usize - self.taken);
            part.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            self.taken += take;
            self.appended += take;
            if self.taken == part.len as usize {
                self.at += 1;
                self.taken = 0;
            }
        }
        self.appended - before
    }

    /// The bytes appended so far, to all parts.
    pub fn appended(&self) -> usize {
        self.appended
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use sftpgate_proto::{FileAttributes, StatusCode};

    use super::*;

    /// A file of `data` whose reads are counted, which fail from `fail_at` on, and which
    /// reads from memory or not.
    struct TestFile {
        data: Vec<u8>,
        fail_at: u64,
        from_memory: bool,
        reads: AtomicUsize,
    }

    impl TestFile {
        fn new(len: usize, from_memory: bool) -> TestFile {
            TestFile {
                data: (0..len).map(|i| (i % 241) as u8).collect(),
                fail_at: u64::MAX,
                from_memory,
                reads: AtomicUsize::new(0),
            }
        }
    }

    #[async_trait::async_trait]
    impl File for TestFile {
        async fn read(&self, offset: u64, len: u32, buf: &mut BytesMut) -> Result<usize, FsError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            if offset >= self.fail_at {
                return Err(FsError::Other("device error".into()));
            }
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            if start >= self.data.len() {
                return Err(FsError::Eof);
            }
            let end = self.data.len().min(start + len as usize);
            buf.extend_from_slice(&self.data[start..end]);
            Ok(end - start)
        }
        fn reads_from_memory(&self) -> bool {
            self.from_memory
        }
        async fn write(&self, _offset: u64, _data: Bytes) -> Result<(), FsError> {
            Err(FsError::Unsupported("write".into()))
        }
        async fn stat(&self) -> Result<FileAttributes, FsError> {
            Ok(FileAttributes::new())
        }
        async fn setstat(&self, _attrs: &FileAttributes) -> Result<(), FsError> {
            Ok(())
        }
        async fn sync(&self) -> Result<(), FsError> {
            Ok(())
        }
        async fn close(&self) -> Result<(), FsError> {
            Ok(())
        }
    }

    fn parts(lens: &[u32]) -> Vec<ReadPart> {
        lens.iter()
            .map(|&len| ReadPart::new(BytesMut::from(&b"x"[..]), len))
            .collect()
    }

    /// What the parts got, after the byte each held; and that every part before the last
    /// with bytes is full.
    fn appended(parts: &[ReadPart]) -> Vec<u8> {
        let mut open = true;
        let mut all = Vec::new();
        for part in parts {
            assert_eq!(&part.buf[..1], b"x", "a part lost what it held");
            let got = &part.buf[1..];
            assert!(open || got.is_empty(), "a part filled after one not full");
            open = got.len() == part.len as usize;
            all.extend_from_slice(got);
        }
        all
    }

    fn run<T>(f: impl Future<Output = T>) -> T {
        // The test files never wait: one poll finishes them.
        let mut f = std::pin::pin!(f);
        let waker = std::task::Waker::noop();
        match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("a test file's read waited"),
        }
    }

    #[test]
    fn the_default_reads_a_file_in_memory_part_by_part_and_any_other_at_once() {
        for from_memory in [true, false] {
            let file = TestFile::new(100_000, from_memory);
            let mut p = parts(&[10, 20_000, 0, 30_000, 50_000]);
            let n = run(file.read_parts(7, &mut p)).expect("read_parts");
            assert_eq!(n, 99_993, "from memory: {from_memory}");
            assert_eq!(appended(&p), &file.data[7..]);
            let reads = file.reads.load(Ordering::Relaxed);
            // In turn: 4 parts that take bytes (the last comes back short); joined: one.
            assert_eq!(reads, if from_memory { 4 } else { 1 }, "{from_memory}");
            let mut p = parts(&[10, 10]);
            let e = run(file.read_parts(100_000, &mut p)).unwrap_err();
            assert_eq!(StatusCode::from(&e), StatusCode::Eof);
            assert!(appended(&p).is_empty());
        }
    }

    #[test]
    fn in_turn_a_later_part_that_fails_ends_the_read_short() {
        let mut file = TestFile::new(100_000, true);
        file.fail_at = 25;
        let mut p = parts(&[10, 15, 20, 20]);
        let n = run(read_parts_in_turn(&file, 0, &mut p)).expect("short read");
        assert_eq!(n, 25);
        assert_eq!(appended(&p), &file.data[..25]);
        // The first part's error is the read's.
        let mut p = parts(&[10, 15]);
        let e = run(read_parts_in_turn(&file, 30, &mut p)).unwrap_err();
        assert!(matches!(e, FsError::Other(_)), "{e:?}");
        assert!(appended(&p).is_empty());
        // Joined, an error appends nothing.
        let mut p = parts(&[10, 15, 20]);
        assert!(run(read_parts_joined(&file, 30, &mut p)).is_err());
        assert!(appended(&p).is_empty());
    }

    #[test]
    fn parts_fill_cuts_pieces_at_the_parts_ends() {
        let data: Vec<u8> = (0..=255u8).collect();
        let mut p = parts(&[0, 7, 100, 0, 50]);
        let mut fill = PartsFill::new(&mut p);
        let mut taken = 0;
        for piece in data.chunks(13) {
            taken += fill.extend_from_slice(piece);
        }
        assert_eq!(taken, 157);
        assert_eq!(fill.appended(), 157);
        assert_eq!(
            fill.extend_from_slice(b"more"),
            0,
            "full parts take nothing"
        );
        assert_eq!(appended(&p), &data[..157]);
        let lens: Vec<usize> = p.iter().map(|part| part.buf.len() - 1).collect();
        assert_eq!(lens, [0, 7, 100, 0, 50]);
    }
}
