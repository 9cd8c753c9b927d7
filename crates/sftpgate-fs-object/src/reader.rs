//! Reading an object: ranged GETs, in chunks fetched ahead for sequential readers.
//!
//! The object is cut into aligned chunks of `read_chunk` bytes. A read that falls in a chunk
//! already fetched or being fetched, or near where the previous read ended, is sequential:
//! it waits for its chunk (one shared fetch, however many reads wait for it) and starts the
//! fetch of the next `read_ahead` chunks. So a client pipelining 64 reads of 32 KiB costs
//! one or two GETs of a few MiB, not 64 small ones. Any other read is random access and
//! costs one GET of exactly what it asks. Chunks behind the reader are dropped, so a reader
//! holds at most `read_ahead + 2` chunks.
//!
//! Reads see the object as it was when it was opened only as far as its size goes: the
//! size is fixed at OPEN; S3 has no snapshot, so an object replaced meanwhile is read
//! from its new content.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::future::{BoxFuture, FutureExt, Shared as SharedFuture};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use sftpgate_vfs::{parts_len, FsError, PartsFill, ReadPart};

use crate::call::{call, duplicate};
use crate::fs::Shared;

type Fetch = SharedFuture<BoxFuture<'static, Result<Bytes, Arc<FsError>>>>;

pub(crate) struct Reader {
    shared: Arc<Shared>,
    key: Path,
    size: u64,
    state: Mutex<State>,
}

struct State {
    chunks: BTreeMap<u64, Fetch>,
    /// Where the last read ended.
    last_end: u64,
}

impl Reader {
    pub(crate) fn new(shared: Arc<Shared>, key: Path, size: u64) -> Reader {
        Reader {
            shared,
            key,
            size,
            state: Mutex::new(State {
                chunks: BTreeMap::new(),
                last_end: 0,
            }),
        }
    }

    pub(crate) async fn read(
        &self,
        offset: u64,
        len: u32,
        buf: &mut BytesMut,
    ) -> Result<usize, FsError> {
        self.read_with(offset, len, &mut |data| buf.extend_from_slice(data))
            .await
    }

    /// A read into the buffers of a READ's packets: each chunk's bytes are copied into
    /// them as they are, not into one buffer first.
    pub(crate) async fn read_parts(
        &self,
        offset: u64,
        parts: &mut [ReadPart],
    ) -> Result<usize, FsError> {
        let len = parts_len(parts);
        let mut fill = PartsFill::new(parts);
        self.read_with(offset, len, &mut |data| {
            fill.extend_from_slice(data);
        })
        .await
    }

    /// Reads up to `len` bytes at `offset`, handing them to `sink` in order, in the pieces
    /// of the chunks they come from; returns how many.
    async fn read_with(
        &self,
        offset: u64,
        len: u32,
        sink: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<usize, FsError> {
        if offset >= self.size || len == 0 {
            return Err(FsError::Eof);
        }
        let end = offset.saturating_add(u64::from(len)).min(self.size);
        let chunk = self.shared.config.read_chunk as u64;
        let first = offset / chunk;
        let last = (end - 1) / chunk;
        let fetches: Option<Vec<(u64, Fetch)>> = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let near = offset + chunk >= st.last_end && offset <= st.last_end + chunk;
            let sequential = near || st.chunks.contains_key(&first);
            st.last_end = st.last_end.max(end);
            if sequential {
                let ahead = self.shared.config.read_ahead as u64;
                let max_index = (self.size - 1) / chunk;
                for index in first..=(last + ahead).min(max_index) {
                    if let std::collections::btree_map::Entry::Vacant(slot) = st.chunks.entry(index)
                    {
                        let fetch = self.fetch(index * chunk, ((index + 1) * chunk).min(self.size));
                        // Run it now, even if nobody awaits it yet: that is the read-ahead.
                        tokio::spawn(fetch.clone());
                        slot.insert(fetch);
                    }
                }
                // Keep one chunk behind, for reads that arrive slightly out of order.
                let keep_from = first.saturating_sub(1);
                st.chunks.retain(|index, _| *index >= keep_from);
                Some((first..=last).map(|i| (i, st.chunks[&i].clone())).collect())
            } else {
                None
            }
        };
        let mut n = 0;
        match fetches {
            Some(fetches) => {
                for (index, fetch) in fetches {
                    let data = match fetch.await {
                        Ok(data) => data,
                        Err(e) => {
                            // Forget the failed chunk, so the client's retry fetches again.
                            self.state
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .chunks
                                .remove(&index);
                            return Err(duplicate(&e));
                        }
                    };
                    let start = index * chunk;
                    let from = (offset.max(start) - start) as usize;
                    let to = (end.min(start + data.len() as u64) - start) as usize;
                    if from >= to {
                        break;
                    }
                    sink(&data[from..to]);
                    n += to - from;
                }
            }
            None => {
                let data = call(
                    self.shared.config.call_timeout,
                    "GET",
                    self.shared.store.get_range(&self.key, offset..end),
                )
                .await?;
                sink(&data);
                n += data.len();
            }
        }
        if n == 0 {
            return Err(FsError::Eof);
        }
        Ok(n)
    }

    fn fetch(&self, start: u64, end: u64) -> Fetch {
        let store = self.shared.store.clone();
        let key = self.key.clone();
        let timeout = self.shared.config.call_timeout;
        async move {
            call(timeout, "GET", store.get_range(&key, start..end))
                .await
                .map_err(Arc::new)
        }
        .boxed()
        .shared()
    }
}
