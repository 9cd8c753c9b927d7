//! sftpgate: how much of a channel's window the server leaves unused.
//!
//! A peer's window says how much it is willing to hold, not how much it takes to keep the
//! data moving: that is the data rate times the round trip. Beyond it, data only waits in
//! the peer. For OpenSSH's client that wait is costly: `ssh` keeps what it has decrypted
//! for `sftp` in a buffer that grows 32 KiB at a time, each time into fresh memory with a
//! copy of all it holds (sshbuf, `recallocarray`), so a fast server that keeps the whole
//! 2 MiB window in flight makes the client copy and page-fault in several times the
//! window before the buffer stops growing (measured: a third of `ssh`'s CPU during a
//! 256 MiB download on loopback, and the download client-bound).
//!
//! With [`SendAhead`] configured, a server channel measures the round trip once when it
//! opens (a `keepalive@openssh.com` request, which every client answers) and then keeps
//! unacknowledged at most what `bytes_per_second` needs over it, and never less than
//! `min`. Where that is the whole window (every link whose round trip is over half a
//! millisecond, with the defaults sftpgate uses) nothing changes.
//!
//! Holding back must never leave a peer waiting for data it needs before it grants more
//! window, so the limit applies only to a peer that has shown it grants window early: a
//! WINDOW_ADJUST giving back part of what was sent, arriving while no more than a quarter
//! of the window was unacknowledged (an adjustment that enlarges the window is no such
//! sign; the window counted from is then the larger one). A peer that waits until some
//! amount is unacknowledged before it grants shows at least that amount at every grant
//! (this end only ever sends more in between), so the limit is kept at twice the least
//! seen at a grant, and at four packets at least (OpenSSH's client grants once three
//! packets are unacknowledged). A peer that grants only when half its window is used
//! (PuTTY, AsyncSSH, russh) never shows an early grant and gets the whole window. A peer
//! that never answers the keepalive is never held back either.

use std::time::Duration;

/// Keep no more of a server channel's data unacknowledged than a stream of
/// `bytes_per_second` needs over the connection's round trip, and no less than `min`
/// (sftpgate; see the module documentation of `send_ahead.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendAhead {
    /// The least kept in flight, whatever the round trip.
    pub min: u32,
    /// The rate the limit must never hold a stream below.
    pub bytes_per_second: u64,
}

impl SendAhead {
    /// The limit for a measured round trip.
    pub fn limit(&self, round_trip: Duration) -> u32 {
        let bytes = (self.bytes_per_second as u128).saturating_mul(round_trip.as_nanos())
            / 1_000_000_000;
        u32::try_from(bytes).unwrap_or(u32::MAX).max(self.min)
    }
}

/// What a channel knows to decide how much of the peer's window to use (public so that
/// the rule can be tested where russh's own tests do not run: sftpgate-server).
#[derive(Debug, Default, Clone, Copy)]
pub struct SendAheadState {
    /// The largest window the peer has granted: at the start, or after a WINDOW_ADJUST
    /// that gave more than this end had sent (the peer enlarging its window).
    peak: u32,
    /// The most to keep unacknowledged, once the round trip is known.
    limit: Option<u32>,
    /// The least that was unacknowledged when a WINDOW_ADJUST arrived that gave back
    /// part of what this end had sent.
    least_at_grant: Option<u32>,
}

impl SendAheadState {
    /// A channel whose peer opened with `initial_window`.
    pub fn new(initial_window: u32) -> Self {
        SendAheadState {
            peak: initial_window,
            ..Default::default()
        }
    }

    /// The most to keep unacknowledged, from [`SendAhead::limit`].
    pub fn set_limit(&mut self, limit: u32) {
        self.limit = Some(limit);
    }

    /// Records a WINDOW_ADJUST of `amount` arriving while `window` (before it) was left.
    pub fn note_grant(&mut self, window: u32, amount: u32) {
        let after = window.saturating_add(amount);
        if amount == 0 || after > self.peak {
            // Not a grant of what the peer consumed: a larger window from now on.
            self.peak = self.peak.max(after);
            return;
        }
        let unacknowledged = self.peak - window;
        self.least_at_grant = Some(
            self.least_at_grant
                .map_or(unacknowledged, |least| least.min(unacknowledged)),
        );
    }

    /// How much of `window` (what the peer has granted and this end not yet used) may be
    /// sent now, in packets of at most `max_packet` bytes.
    pub fn usable(&self, window: u32, max_packet: u32) -> u32 {
        let (Some(limit), Some(least)) = (self.limit, self.least_at_grant) else {
            return window;
        };
        if least > self.peak / 4 {
            return window;
        }
        let limit = limit
            .max(least.saturating_mul(2))
            .max(max_packet.saturating_mul(4));
        // Unacknowledged now is `peak - window`: keep it within the limit.
        window.saturating_sub(self.peak.saturating_sub(limit))
    }
}
