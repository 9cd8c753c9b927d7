//! Who may hold a connection: the per-address, per-user and unauthenticated budgets that
//! keep one source (or one user, or a crowd of connections that never log in) from taking
//! the slots everyone else needs. The total (`Limits::max_connections`) is a semaphore in
//! `server.rs`; everything that needs a key lives here.
//!
//! A connection gets a [`Ticket`] at accept, counted against its address and against the
//! unauthenticated budget. Authentication moves it out of the unauthenticated budget and
//! into its user's count ([`Ticket::authenticate`]). Everything it holds is released once,
//! by [`Ticket::release`] when the connection task ends or by `Drop`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::Limits;

/// Why a connection was refused: the `reason` label of
/// `sftpgate_connections_rejected_total` and the DISCONNECT message the client reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `Limits::max_connections_per_address`.
    PerAddress { limit: usize },
    /// `Limits::max_unauthenticated`.
    Unauthenticated { limit: usize },
    /// `Limits::max_unauthenticated_per_address`.
    UnauthenticatedPerAddress { limit: usize },
    /// `Limits::max_connections_per_user`.
    PerUser { limit: usize },
}

impl Refusal {
    /// The counter's `reason` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::PerAddress { .. } => "per_address",
            Refusal::Unauthenticated { .. } => "unauthenticated",
            Refusal::UnauthenticatedPerAddress { .. } => "unauthenticated_per_address",
            Refusal::PerUser { .. } => "per_user",
        }
    }

    /// What the client is told.
    pub(crate) fn message(self) -> String {
        match self {
            Refusal::PerAddress { limit } => {
                format!("too many connections from your address (limit {limit}); try again later")
            }
            Refusal::Unauthenticated { .. } => {
                "too many connections are logging in; try again later".to_owned()
            }
            Refusal::UnauthenticatedPerAddress { limit } => format!(
                "too many unauthenticated connections from your address (limit {limit}); \
                 try again later"
            ),
            Refusal::PerUser { limit } => {
                format!("too many connections for this user (limit {limit}); close one first")
            }
        }
    }
}

/// The server's per-key connection counts.
pub(crate) struct Admission {
    limits: Limits,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    unauthenticated: usize,
    addresses: HashMap<IpAddr, AddressCounts>,
    users: HashMap<String, usize>,
}

#[derive(Default, Clone, Copy)]
struct AddressCounts {
    total: usize,
    unauthenticated: usize,
}

impl Admission {
    pub(crate) fn new(limits: &Limits) -> Arc<Admission> {
        Arc::new(Admission {
            limits: limits.clone(),
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Counts a new, unauthenticated connection from `peer`, or says why it may not be.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Ticket, Refusal> {
        let address = address_key(peer);
        let l = &self.limits;
        let mut counts = self.lock();
        let current = counts.addresses.get(&address).copied().unwrap_or_default();
        if current.total >= l.max_connections_per_address {
            return Err(Refusal::PerAddress {
                limit: l.max_connections_per_address,
            });
        }
        if current.unauthenticated >= l.max_unauthenticated_per_address {
            return Err(Refusal::UnauthenticatedPerAddress {
                limit: l.max_unauthenticated_per_address,
            });
        }
        if counts.unauthenticated >= l.max_unauthenticated {
            return Err(Refusal::Unauthenticated {
                limit: l.max_unauthenticated,
            });
        }
        counts.unauthenticated += 1;
        let entry = counts.addresses.entry(address).or_default();
        entry.total += 1;
        entry.unauthenticated += 1;
        Ok(Ticket {
            admission: self.clone(),
            address,
            state: Mutex::new(TicketState::Unauthenticated),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // The counts are updated in single steps that cannot panic halfway.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn snapshot(&self) -> (usize, usize, usize) {
        let c = self.lock();
        (c.unauthenticated, c.addresses.len(), c.users.len())
    }
}

/// One connection's place in the counts. Shared by the connection task (which releases it
/// when the connection ends) and its russh handler (which authenticates it).
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    address: IpAddr,
    state: Mutex<TicketState>,
}

enum TicketState {
    Unauthenticated,
    Authenticated { user: String },
    Released,
}

impl Ticket {
    /// Moves the connection from the unauthenticated budget to `user`'s count, or refuses
    /// it if `user` already has as many connections as allowed (then the ticket still
    /// counts as unauthenticated until it is released).
    pub(crate) fn authenticate(&self, user: &str) -> Result<(), Refusal> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(*state, TicketState::Unauthenticated) {
            return Ok(());
        }
        let limit = self.admission.limits.max_connections_per_user;
        let mut counts = self.admission.lock();
        let users = counts.users.get(user).copied().unwrap_or(0);
        if users >= limit {
            return Err(Refusal::PerUser { limit });
        }
        *counts.users.entry(user.to_owned()).or_default() += 1;
        counts.unauthenticated -= 1;
        if let Some(entry) = counts.addresses.get_mut(&self.address) {
            entry.unauthenticated -= 1;
        }
        *state = TicketState::Authenticated {
            user: user.to_owned(),
        };
        Ok(())
    }

    /// Gives back everything the connection holds; later calls do nothing.
    pub(crate) fn release(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let previous = std::mem::replace(&mut *state, TicketState::Released);
        let mut counts = self.admission.lock();
        let unauthenticated = match previous {
            TicketState::Released => return,
            TicketState::Unauthenticated => {
                counts.unauthenticated -= 1;
                1
            }
            TicketState::Authenticated { user } => {
                if let Some(n) = counts.users.get_mut(&user) {
                    *n -= 1;
                    if *n == 0 {
                        counts.users.remove(&user);
                    }
                }
                0
            }
        };
        if let Some(entry) = counts.addresses.get_mut(&self.address) {
            entry.total -= 1;
            entry.unauthenticated -= unauthenticated;
            if entry.total == 0 {
                counts.addresses.remove(&self.address);
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.release();
    }
}

/// IPv4 addresses as they are; IPv6 addresses by their /64 (one host usually has a whole
/// /64 to rotate through); IPv4-mapped IPv6 addresses as IPv4. The same rule as the
/// brute-force guard in sftpgate-auth.
fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
        },
    }
}

/// Logs a refusal at most once per interval per reason, with the number left unlogged:
/// a flood of refused connections must not become a flood of log lines.
pub(crate) struct LogLimiter {
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
    interval: Duration,
}

impl LogLimiter {
    pub(crate) fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            last: Mutex::new(HashMap::new()),
            interval,
        }
    }

    /// `Some(suppressed)` when a line for `reason` should be logged now, with how many were
    /// not logged since the last one.
    pub(crate) fn allow(&self, reason: &'static str, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get_mut(reason) {
            Some((at, suppressed)) if now.duration_since(*at) < self.interval => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let n = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                last.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections_per_address: 3,
            max_unauthenticated: 4,
            max_unauthenticated_per_address: 2,
            max_connections_per_user: 2,
            ..Limits::default()
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn unauthenticated_per_address_then_per_address() {
        let a = Admission::new(&limits());
        let t1 = a.admit(ip("10.0.0.1")).unwrap();
        let t2 = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            a.admit(ip("10.0.0.1")).err(),
            Some(Refusal::UnauthenticatedPerAddress { limit: 2 })
        );
        // Authenticated connections make room in the unauthenticated budget only.
        t1.authenticate("alice").unwrap();
        let t3 = a.admit(ip("10.0.0.1")).unwrap();
        t2.authenticate("bob").unwrap();
        assert_eq!(
            a.admit(ip("10.0.0.1")).err(),
            Some(Refusal::PerAddress { limit: 3 })
        );
        // Another address is not affected.
        let _other = a.admit(ip("10.0.0.2")).unwrap();
        drop((t1, t2, t3));
        assert_eq!(a.snapshot(), (1, 1, 0));
    }

    #[test]
    fn unauthenticated_budget_is_shared() {
        let a = Admission::new(&limits());
        let held: Vec<_> = (1..=4)
            .map(|i| a.admit(ip(&format!("10.0.1.{i}"))).unwrap())
            .collect();
        assert_eq!(
            a.admit(ip("10.0.2.1")).err(),
            Some(Refusal::Unauthenticated { limit: 4 })
        );
        held[0].authenticate("alice").unwrap();
        let _t = a.admit(ip("10.0.2.1")).unwrap();
    }

    #[test]
    fn per_user_limit_and_release_once() {
        let a = Admission::new(&limits());
        let t1 = a.admit(ip("10.0.0.1")).unwrap();
        let t2 = a.admit(ip("10.0.0.2")).unwrap();
        let t3 = a.admit(ip("10.0.0.3")).unwrap();
        t1.authenticate("alice").unwrap();
        t2.authenticate("alice").unwrap();
        assert_eq!(
            t3.authenticate("alice").err(),
            Some(Refusal::PerUser { limit: 2 })
        );
        t3.authenticate("bob").unwrap();
        t1.release();
        t1.release();
        t3.authenticate("carol").unwrap(); // already authenticated: no change
        let t4 = a.admit(ip("10.0.0.4")).unwrap();
        t4.authenticate("alice").unwrap();
        drop((t1, t2, t3, t4));
        assert_eq!(a.snapshot(), (0, 0, 0));
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a = Admission::new(&Limits {
            max_unauthenticated: 100,
            ..limits()
        });
        let _t1 = a.admit(ip("2001:db8::1")).unwrap();
        let _t2 = a.admit(ip("2001:db8::ffff:2")).unwrap();
        assert!(a.admit(ip("2001:db8::3")).is_err());
        let _t3 = a.admit(ip("2001:db8:0:1::1")).unwrap();
        let _t4 = a.admit(ip("::ffff:10.0.0.9")).unwrap();
        let _t5 = a.admit(ip("10.0.0.9")).unwrap();
        assert!(a.admit(ip("10.0.0.9")).is_err());
    }

    #[test]
    fn log_limiter_counts_what_it_suppressed() {
        let l = LogLimiter::new(Duration::from_secs(1));
        let t = Instant::now();
        assert_eq!(l.allow("a", t), Some(0));
        assert_eq!(l.allow("a", t + Duration::from_millis(10)), None);
        assert_eq!(l.allow("a", t + Duration::from_millis(20)), None);
        assert_eq!(l.allow("b", t), Some(0));
        assert_eq!(l.allow("a", t + Duration::from_secs(2)), Some(2));
    }
}
