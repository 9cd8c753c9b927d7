//! Request ordering for concurrent dispatch: which earlier requests a new one must wait for.
//!
//! draft-ietf-secsh-filexfer-02 §6.1 lets a server process requests concurrently as long as
//! the results are those of processing them one at a time in order. The sequencer keeps the
//! requests in flight and answers, for each new one, the earlier ones it conflicts with:
//! - requests on different handles, and reads of one handle, never wait for each other;
//! - a READ waits for earlier overlapping WRITEs of its handle, a WRITE for earlier
//!   overlapping READs and WRITEs (on a handle opened for appending, for every earlier WRITE);
//! - a whole-handle request (CLOSE, FSTAT, FSETSTAT, READDIR, fsync, …) waits for every
//!   earlier request on its handle, and every later one on that handle waits for it;
//! - a path request that only reads (STAT, OPENDIR, REALPATH, …) waits for earlier requests
//!   that may change something;
//! - a path request that may change something (OPEN, REMOVE, RENAME, SETSTAT, …) is a
//!   barrier: it waits for everything earlier, and everything later waits for it.
//!
//! Replies on one handle go out in request order: a READ or WRITE is also given the previous
//! request on its handle, and replies only after that one has (it still runs concurrently
//! with it). The protocol allows any reply order, but OpenSSH 9.2's `scp` (SFTP mode, which
//! writes and reads "in place") truncates the file at the highest offset acknowledged in
//! order, so a reply overtaking an earlier one on its handle silently cuts the file short
//! (tests/interop.rs in crates/sftpgate, `openssh_scp`). OpenSSH's sftp-server answers
//! everything in order.
//!
//! The sequencer is owned by the session's reader; tasks signal completion through their
//! [`Done`] token once their reply is queued, and finished entries are pruned lazily.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use sftpgate_proto::{ExtendedRequest, Request};
use tokio::sync::Notify;

/// Completion of one request: set when it finished and its reply is queued.
///
/// A flag and a [`Notify`] rather than tokio-util's `CancellationToken`, whose every
/// `is_cancelled` takes the mutex of a tree node: admission checks the flag of every request
/// in flight (64 per READ at the OpenSSH client's default), and with those locks the tokens
/// took 1.0 % of all CPU samples of an 8-session download, 0.45 % without (docs/performance.md,
/// sixth run).
#[derive(Clone, Default)]
pub(crate) struct Done(Arc<DoneState>);

#[derive(Default)]
struct DoneState {
    set: AtomicBool,
    notify: Notify,
}

impl Done {
    pub(crate) fn new() -> Done {
        Done::default()
    }

    /// Marks the request finished and wakes everything waiting for it.
    pub(crate) fn set(&self) {
        self.0.set.store(true, Ordering::Release);
        self.0.notify.notify_waiters();
    }

    pub(crate) fn is_set(&self) -> bool {
        self.0.set.load(Ordering::Acquire)
    }

    /// Returns once the request has finished.
    pub(crate) async fn wait(&self) {
        // Created before the flag is read: a `notify_waiters` after its creation completes
        // it (tokio's guarantee), and a `set` before the read is seen by the read.
        let notified = self.0.notify.notified();
        if self.is_set() {
            return;
        }
        notified.await;
    }

    /// Sets the token when dropped, however its holder ends (an aborted task included).
    pub(crate) fn set_on_drop(self) -> SetOnDrop {
        SetOnDrop(self)
    }
}

/// See [`Done::set_on_drop`].
pub(crate) struct SetOnDrop(Done);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.set();
    }
}

/// What a request touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Access {
    /// May change anything: orders against everything.
    Barrier,
    /// Reads by path.
    PathRead,
    /// A byte range of a handle.
    Range {
        handle: Bytes,
        start: u64,
        end: u64,
        write: bool,
    },
    /// All of a handle.
    WholeHandle { handle: Bytes },
}

impl Access {
    /// Classifies a request; `append` says whether a handle was opened for appending.
    pub(crate) fn of(request: &Request, append: impl Fn(&[u8]) -> bool) -> Access {
        match request {
            Request::Read {
                handle,
                offset,
                len,
                ..
            } => Access::Range {
                handle: handle.clone(),
                start: *offset,
                end: offset.saturating_add(u64::from(*len)),
                write: false,
            },
            Request::Write {
                handle,
                offset,
                data,
                ..
            } => {
                if append(handle) {
                    Access::Range {
                        handle: handle.clone(),
                        start: 0,
                        end: u64::MAX,
                        write: true,
                    }
                } else {
                    Access::Range {
                        handle: handle.clone(),
                        start: *offset,
                        end: offset.saturating_add(data.len() as u64),
                        write: true,
                    }
                }
            }
            Request::Close { handle, .. }
            | Request::Fstat { handle, .. }
            | Request::Fsetstat { handle, .. }
            | Request::Readdir { handle, .. }
            | Request::Extended {
                request: ExtendedRequest::Fsync { handle } | ExtendedRequest::Fstatvfs { handle },
                ..
            } => Access::WholeHandle {
                handle: handle.clone(),
            },
            // copy-data touches two handles: order it against everything.
            Request::Extended {
                request: ExtendedRequest::CopyData { .. },
                ..
            } => Access::Barrier,
            other if other.mutates() => Access::Barrier,
            _ => Access::PathRead,
        }
    }

    fn handle(&self) -> Option<&Bytes> {
        match self {
            Access::Range { handle, .. } | Access::WholeHandle { handle } => Some(handle),
            Access::Barrier | Access::PathRead => None,
        }
    }

    fn may_write(&self) -> bool {
        match self {
            Access::Barrier | Access::WholeHandle { .. } => true,
            Access::Range { write, .. } => *write,
            Access::PathRead => false,
        }
    }

    /// Whether `later` must wait for `self` (which arrived earlier).
    fn conflicts(&self, later: &Access) -> bool {
        use Access::*;
        match (self, later) {
            (Barrier, _) | (_, Barrier) => true,
            (PathRead, PathRead) => false,
            (PathRead, other) | (other, PathRead) => other.may_write(),
            (WholeHandle { handle: a }, WholeHandle { handle: b })
            | (WholeHandle { handle: a }, Range { handle: b, .. })
            | (Range { handle: a, .. }, WholeHandle { handle: b }) => a == b,
            (
                Range {
                    handle: a,
                    start: s1,
                    end: e1,
                    write: w1,
                },
                Range {
                    handle: b,
                    start: s2,
                    end: e2,
                    write: w2,
                },
            ) => a == b && (*w1 || *w2) && s1 < e2 && s2 < e1,
        }
    }
}

struct Entry {
    access: Access,
    done: Done,
}

/// The requests in flight of one session, in arrival order.
#[derive(Default)]
pub(crate) struct Sequencer {
    entries: Vec<Entry>,
}

impl Sequencer {
    /// Registers a new request: returns its completion token, the tokens of the earlier
    /// requests it must wait for before it runs, and for a READ or WRITE the token of the
    /// previous request on its handle, which it must wait for before it replies.
    pub(crate) fn admit(&mut self, access: Access) -> (Done, Vec<Done>, Option<Done>) {
        self.entries.retain(|e| !e.done.is_set());
        let deps = self
            .entries
            .iter()
            .filter(|e| e.access.conflicts(&access))
            .map(|e| e.done.clone())
            .collect();
        let after = match &access {
            Access::Range { handle, .. } => self
                .entries
                .iter()
                .rev()
                .find(|e| e.access.handle() == Some(handle))
                .map(|e| e.done.clone()),
            _ => None,
        };
        let done = Done::new();
        self.entries.push(Entry {
            access,
            done: done.clone(),
        });
        (done, deps, after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(h: &'static [u8], start: u64, end: u64, write: bool) -> Access {
        Access::Range {
            handle: Bytes::from_static(h),
            start,
            end,
            write,
        }
    }

    fn check(earlier: Access, later: Access, expected: bool) {
        let mut s = Sequencer::default();
        s.admit(earlier.clone());
        let (_, deps, _) = s.admit(later.clone());
        assert_eq!(deps.len() == 1, expected, "{earlier:?} then {later:?}");
    }

    /// Whether `later` replies after `earlier` (is given its token as `after`).
    fn replies_after(earlier: Access, later: Access) -> bool {
        let mut s = Sequencer::default();
        s.admit(earlier);
        s.admit(later).2.is_some()
    }

    #[test]
    fn replies_on_one_handle_keep_request_order() {
        assert!(replies_after(
            range(b"h", 0, 10, false),
            range(b"h", 10, 20, false)
        ));
        assert!(replies_after(
            range(b"h", 0, 10, true),
            range(b"h", 10, 20, true)
        ));
        let close = Access::WholeHandle {
            handle: Bytes::from_static(b"h"),
        };
        assert!(replies_after(close, range(b"h", 0, 1, false)));
        assert!(!replies_after(
            range(b"g", 0, 10, true),
            range(b"h", 0, 10, true)
        ));
        assert!(!replies_after(Access::PathRead, range(b"h", 0, 10, true)));
    }

    #[test]
    fn replies_chain_to_the_latest_request_on_the_handle() {
        let mut s = Sequencer::default();
        s.admit(range(b"h", 0, 10, false));
        let (second, _, _) = s.admit(range(b"h", 10, 20, false));
        s.admit(range(b"g", 0, 10, false));
        let (_, _, after) = s.admit(range(b"h", 20, 30, false));
        let after = after.expect("a previous request on h");
        assert!(!after.is_set());
        second.set();
        assert!(
            after.is_set(),
            "chained to the second request, not the first"
        );
    }

    #[tokio::test]
    async fn done_wakes_whoever_waits_before_or_after_it_is_set() {
        let limit = std::time::Duration::from_secs(5);
        let done = Done::new();
        let waiter = tokio::spawn({
            let done = done.clone();
            async move { done.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "waits until set");
        done.set();
        tokio::time::timeout(limit, waiter)
            .await
            .expect("woken by set")
            .unwrap();
        tokio::time::timeout(limit, done.wait())
            .await
            .expect("already set: returns at once");
    }

    #[tokio::test]
    async fn an_aborted_holder_still_sets_its_token() {
        let done = Done::new();
        let guard = done.clone().set_on_drop();
        let holder = tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        let waiter = tokio::spawn({
            let done = done.clone();
            async move { done.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!done.is_set());
        assert!(!waiter.is_finished());
        holder.abort();
        assert!(holder.await.unwrap_err().is_cancelled());
        assert!(done.is_set());
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter is woken by the dropped guard")
            .unwrap();
    }

    #[test]
    fn reads_never_wait_for_reads() {
        check(range(b"h", 0, 10, false), range(b"h", 0, 10, false), false);
    }
    #[test]
    fn overlapping_write_after_read_waits() {
        check(range(b"h", 0, 10, false), range(b"h", 5, 15, true), true);
    }
    #[test]
    fn overlapping_read_after_write_waits() {
        check(range(b"h", 0, 10, true), range(b"h", 9, 15, false), true);
    }
    #[test]
    fn adjacent_writes_do_not_wait() {
        check(range(b"h", 0, 10, true), range(b"h", 10, 20, true), false);
    }
    #[test]
    fn other_handles_do_not_wait() {
        check(range(b"h", 0, 10, true), range(b"g", 0, 10, true), false);
    }
    #[test]
    fn close_waits_for_its_handle() {
        let close = Access::WholeHandle {
            handle: Bytes::from_static(b"h"),
        };
        check(range(b"h", 0, 10, false), close.clone(), true);
        check(range(b"g", 0, 10, false), close.clone(), false);
        check(close, range(b"h", 0, 1, false), true);
    }
    #[test]
    fn barriers_order_everything() {
        check(Access::Barrier, Access::PathRead, true);
        check(range(b"h", 0, 1, false), Access::Barrier, true);
    }
    #[test]
    fn path_reads_wait_for_writes_only() {
        check(Access::PathRead, Access::PathRead, false);
        check(range(b"h", 0, 1, false), Access::PathRead, false);
        check(range(b"h", 0, 1, true), Access::PathRead, true);
        check(Access::PathRead, range(b"h", 0, 1, true), true);
    }
    #[test]
    fn finished_requests_are_forgotten() {
        let mut s = Sequencer::default();
        let (done, _, _) = s.admit(Access::Barrier);
        done.set();
        let (_, deps, _) = s.admit(Access::Barrier);
        assert!(deps.is_empty());
        assert_eq!(s.entries.len(), 1);
    }
    #[test]
    fn append_writes_are_ordered() {
        let req = |offset| Request::Write {
            id: 1,
            handle: Bytes::from_static(b"h"),
            offset,
            data: Bytes::from_static(b"x").into(),
        };
        let a = Access::of(&req(0), |_| true);
        let b = Access::of(&req(100), |_| true);
        check(a, b, true);
    }
}
