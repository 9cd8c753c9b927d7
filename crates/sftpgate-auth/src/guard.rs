//! Brute-force protection: failed logins counted per source address and per user name in a
//! sliding window; past the threshold the address (or the user) is banned for a cooling-off
//! time. In memory, per server process; the clock is passed in (`tokio::time::Instant`, so
//! tests run it with paused time).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// When to ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BanConfig {
    /// Failures within [`BanConfig::window`] that start a ban (default 10); 0 turns
    /// brute-force protection off.
    pub max_failures: u32,
    /// How far back failures count (default 5 minutes).
    pub window: Duration,
    /// How long a ban lasts (default 15 minutes).
    pub ban_time: Duration,
    /// Most addresses (and, separately, user names) tracked at once (default 100 000).
    /// When full, entries with no recent failure and no ban are dropped first; if that is
    /// not enough, new keys go uncounted until room frees up.
    pub max_tracked: usize,
}

impl Default for BanConfig {
    fn default() -> Self {
        BanConfig {
            max_failures: 10,
            window: Duration::from_secs(5 * 60),
            ban_time: Duration::from_secs(15 * 60),
            max_tracked: 100_000,
        }
    }
}

impl BanConfig {
    /// `max_failures` failures within `window` ban for `ban_time`.
    pub fn new(max_failures: u32, window: Duration, ban_time: Duration) -> BanConfig {
        BanConfig {
            max_failures,
            window,
            ban_time,
            ..BanConfig::default()
        }
    }
}

/// What a ban is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BanKind {
    /// A source address (IPv4, or the /64 network of an IPv6 address).
    Address,
    /// A user name, whatever address the attempts come from.
    User,
}

impl BanKind {
    /// `address` or `user`: the `kind` label of the metrics.
    pub fn name(self) -> &'static str {
        match self {
            BanKind::Address => "address",
            BanKind::User => "user",
        }
    }
}

/// Failure counts and bans for addresses and user names.
///
/// - Addresses are counted as IPv4 addresses, or as the /64 network of an IPv6 address
///   (one host usually has a whole /64 to rotate through); IPv4-mapped IPv6 addresses
///   count as their IPv4 address.
/// - A success clears the user's count (the owner typing their password wrong a few times
///   should not stay one step from a ban), but not the address's: otherwise an attacker
///   with one valid account could reset their address between guesses at other accounts.
/// - Attempts refused during a ban are not counted and do not extend it.
#[derive(Debug)]
pub struct LoginGuard {
    config: BanConfig,
    addresses: Mutex<Tracker<IpAddr>>,
    users: Mutex<Tracker<String>>,
}

impl LoginGuard {
    /// A guard with nothing counted.
    pub fn new(config: BanConfig) -> LoginGuard {
        LoginGuard {
            config,
            addresses: Mutex::new(Tracker::default()),
            users: Mutex::new(Tracker::default()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BanConfig {
        &self.config
    }

    /// Until when `address` is banned, if it is at `now`.
    pub fn address_banned_until(&self, address: IpAddr, now: Instant) -> Option<Instant> {
        lock(&self.addresses).banned_until(&address_key(address), now)
    }

    /// Until when `user` is banned, if they are at `now`.
    pub fn user_banned_until(&self, user: &str, now: Instant) -> Option<Instant> {
        lock(&self.users).banned_until(user, now)
    }

    /// Counts a failed attempt of `user` from `address`; returns the bans it started.
    pub fn record_failure(&self, address: IpAddr, user: &str, now: Instant) -> Vec<BanKind> {
        if self.config.max_failures == 0 {
            return Vec::new();
        }
        let mut started = Vec::new();
        let key = address_key(address);
        if lock(&self.addresses).fail(key, now, &self.config) {
            metrics::counter!("sftpgate_auth_bans_total", "kind" => BanKind::Address.name())
                .increment(1);
            tracing::warn!(
                peer = %address, network = %key, user,
                failures = self.config.max_failures,
                ban = ?self.config.ban_time,
                "address banned after repeated failed logins"
            );
            started.push(BanKind::Address);
        }
        if lock(&self.users).fail_str(user, now, &self.config) {
            metrics::counter!("sftpgate_auth_bans_total", "kind" => BanKind::User.name())
                .increment(1);
            tracing::warn!(
                user, peer = %address,
                failures = self.config.max_failures,
                ban = ?self.config.ban_time,
                "user banned after repeated failed logins"
            );
            started.push(BanKind::User);
        }
        started
    }

    /// Clears the failure count of `user` after a successful login (see the type's docs).
    pub fn record_success(&self, user: &str) {
        lock(&self.users).forget_failures(user);
    }
}

/// How many keys are tracked (for tests).
#[cfg(test)]
impl LoginGuard {
    fn tracked(&self) -> (usize, usize) {
        (
            lock(&self.addresses).entries.len(),
            lock(&self.users).entries.len(),
        )
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The trackers hold plain data; a panic elsewhere cannot leave them inconsistent.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The key an address is counted under.
fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(
                v6.to_bits() & !0xffff_ffff_ffff_ffff_u128,
            )),
        },
    }
}

#[derive(Debug)]
struct Tracker<K> {
    entries: HashMap<K, Entry>,
}

impl<K> Default for Tracker<K> {
    fn default() -> Self {
        Tracker {
            entries: HashMap::new(),
        }
    }
}

#[derive(Debug, Default)]
struct Entry {
    /// Times of the failures within the window, oldest first.
    failures: VecDeque<Instant>,
    banned_until: Option<Instant>,
}

impl Entry {
    fn is_stale(&self, now: Instant, window: Duration) -> bool {
        self.banned_until.is_none_or(|until| until <= now)
            && self
                .failures
                .back()
                .is_none_or(|last| now.saturating_duration_since(*last) >= window)
    }
}

impl<K: Hash + Eq> Tracker<K> {
    fn banned_until<Q>(&mut self, key: &Q, now: Instant) -> Option<Instant>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entry = self.entries.get_mut(key)?;
        match entry.banned_until {
            Some(until) if until > now => Some(until),
            Some(_) => {
                // The ban is over; the count starts afresh.
                entry.banned_until = None;
                entry.failures.clear();
                None
            }
            None => None,
        }
    }

    /// Makes room for one more entry; false if there is none.
    fn room(&mut self, now: Instant, config: &BanConfig) -> bool {
        if self.entries.len() < config.max_tracked {
            return true;
        }
        self.entries
            .retain(|_, entry| !entry.is_stale(now, config.window));
        if self.entries.len() < config.max_tracked {
            return true;
        }
        metrics::counter!("sftpgate_auth_tracking_full_total").increment(1);
        false
    }

    fn fail(&mut self, key: K, now: Instant, config: &BanConfig) -> bool {
        if !self.entries.contains_key(&key) && !self.room(now, config) {
            return false;
        }
        Self::fail_entry(self.entries.entry(key).or_default(), now, config)
    }

    fn fail_entry(entry: &mut Entry, now: Instant, config: &BanConfig) -> bool {
        if entry.banned_until.is_some_and(|until| until > now) {
            return false;
        }
        entry.banned_until = None;
        while entry
            .failures
            .front()
            .is_some_and(|first| now.saturating_duration_since(*first) >= config.window)
        {
            entry.failures.pop_front();
        }
        entry.failures.push_back(now);
        if entry.failures.len() >= config.max_failures as usize {
            entry.failures.clear();
            entry.banned_until = Some(now + config.ban_time);
            return true;
        }
        false
    }
}

impl Tracker<String> {
    fn fail_str(&mut self, key: &str, now: Instant, config: &BanConfig) -> bool {
        if let Some(entry) = self.entries.get_mut(key) {
            return Self::fail_entry(entry, now, config);
        }
        self.fail(key.to_owned(), now, config)
    }

    fn forget_failures(&mut self, key: &str) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.failures.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn guard(max: u32) -> LoginGuard {
        LoginGuard::new(BanConfig::new(max, 5 * MIN, 15 * MIN))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn bans_the_address_and_the_user_at_the_threshold() {
        let guard = guard(3);
        let t0 = Instant::now();
        assert!(guard.record_failure(ip("10.0.0.1"), "alice", t0).is_empty());
        assert!(guard.record_failure(ip("10.0.0.1"), "alice", t0).is_empty());
        assert_eq!(
            guard.record_failure(ip("10.0.0.1"), "alice", t0),
            vec![BanKind::Address, BanKind::User]
        );
        assert_eq!(
            guard.address_banned_until(ip("10.0.0.1"), t0),
            Some(t0 + 15 * MIN)
        );
        assert_eq!(guard.user_banned_until("alice", t0), Some(t0 + 15 * MIN));
        assert_eq!(guard.address_banned_until(ip("10.0.0.2"), t0), None);
        assert_eq!(guard.user_banned_until("bob", t0), None);
    }

    #[test]
    fn ban_expires() {
        let guard = guard(1);
        let t0 = Instant::now();
        guard.record_failure(ip("10.0.0.1"), "alice", t0);
        assert!(guard
            .address_banned_until(ip("10.0.0.1"), t0 + 15 * MIN - Duration::from_secs(1))
            .is_some());
        assert_eq!(
            guard.address_banned_until(ip("10.0.0.1"), t0 + 15 * MIN),
            None
        );
        assert_eq!(guard.user_banned_until("alice", t0 + 15 * MIN), None);
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let guard = guard(3);
        let t0 = Instant::now();
        guard.record_failure(ip("10.0.0.1"), "alice", t0);
        guard.record_failure(ip("10.0.0.1"), "alice", t0 + MIN);
        // The first failure has left the window by now.
        assert!(guard
            .record_failure(ip("10.0.0.1"), "alice", t0 + 5 * MIN)
            .is_empty());
        assert_eq!(
            guard.record_failure(ip("10.0.0.1"), "alice", t0 + 5 * MIN),
            vec![BanKind::Address, BanKind::User]
        );
    }

    #[test]
    fn users_are_counted_across_addresses() {
        let guard = guard(3);
        let t0 = Instant::now();
        guard.record_failure(ip("10.0.0.1"), "alice", t0);
        guard.record_failure(ip("10.0.0.2"), "alice", t0);
        assert_eq!(
            guard.record_failure(ip("10.0.0.3"), "alice", t0),
            vec![BanKind::User]
        );
    }

    #[test]
    fn success_clears_the_user_but_not_the_address() {
        let guard = guard(3);
        let t0 = Instant::now();
        guard.record_failure(ip("10.0.0.1"), "alice", t0);
        guard.record_failure(ip("10.0.0.1"), "alice", t0);
        guard.record_success("alice");
        assert_eq!(
            guard.record_failure(ip("10.0.0.1"), "alice", t0),
            vec![BanKind::Address]
        );
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let guard = guard(2);
        let t0 = Instant::now();
        guard.record_failure(ip("2001:db8:1:2::1"), "a", t0);
        assert_eq!(
            guard.record_failure(ip("2001:db8:1:2:ffff::9"), "b", t0),
            vec![BanKind::Address]
        );
        assert!(guard
            .address_banned_until(ip("2001:db8:1:3::1"), t0)
            .is_none());
        guard.record_failure(ip("::ffff:192.0.2.1"), "c", t0);
        guard.record_failure(ip("192.0.2.1"), "d", t0);
        assert!(guard.address_banned_until(ip("192.0.2.1"), t0).is_some());
    }

    #[test]
    fn zero_turns_protection_off() {
        let guard = guard(0);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(guard.record_failure(ip("10.0.0.1"), "a", t0).is_empty());
        }
        assert_eq!(guard.tracked(), (0, 0));
    }

    #[test]
    fn tracking_is_bounded_and_stale_entries_make_room() {
        let guard = LoginGuard::new(BanConfig {
            max_tracked: 2,
            ..BanConfig::new(5, 5 * MIN, 15 * MIN)
        });
        let t0 = Instant::now();
        guard.record_failure(ip("10.0.0.1"), "a", t0);
        guard.record_failure(ip("10.0.0.2"), "b", t0);
        guard.record_failure(ip("10.0.0.3"), "c", t0);
        assert_eq!(guard.tracked(), (2, 2));
        // Once the first two are stale, new keys are counted again.
        guard.record_failure(ip("10.0.0.4"), "d", t0 + 5 * MIN);
        assert_eq!(guard.tracked(), (1, 1));
    }
}
