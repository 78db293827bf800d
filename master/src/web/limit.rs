//! Limits on guessing: how often one client may try sign-in links and share-link passwords,
//! and how often anyone at all may try the password of one share link.
//!
//! Sign-in links and share secrets are 256 random bits, so guessing them is hopeless; a
//! share link's password is chosen by a person and is not. Every try of a password costs one
//! try of the client's allowance and one of the link's, before the (deliberately slow) argon2
//! check runs, so neither one client nor many together can try more than a few passwords a
//! minute against a link, nor keep the master's cores busy hashing. A refusal says when to
//! come back (`429` with `Retry-After`).
//!
//! Clients are told apart by their address (IPv6 by its /64, which one host usually holds
//! whole). Behind a reverse proxy every client is the proxy: its own limits then apply to all
//! of them together. The number of clients and links tracked is bounded: past it, the ones
//! not tracked share one allowance.

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

/// Tries of sign-in links and passwords one client may make: a burst of this many, then one
/// more every 60/this seconds.
const PER_CLIENT_PER_MINUTE: u32 = 20;
/// Password tries one share link takes from everyone together, likewise.
const PER_LINK_PER_MINUTE: u32 = 10;
/// Clients or links tracked one by one, at most.
const MAX_TRACKED: usize = 10_000;

fn quota(per_minute: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN))
}

/// One allowance per key, bounded in how many keys it tracks.
struct PerKey<K: Hash + Eq + Clone, C: Clock> {
    keys: RateLimiter<K, HashMapStateStore<K>, C, NoOpMiddleware<C::Instant>>,
    /// The allowance every key past the bound shares.
    rest: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    max: usize,
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> PerKey<K, C> {
    fn new(q: Quota, clock: C, max: usize) -> Self {
        PerKey {
            keys: RateLimiter::hashmap_with_clock(q, clock.clone()),
            rest: RateLimiter::direct_with_clock(q, clock.clone()),
            clock,
            max,
        }
    }

    /// Take one try for `key`: `Err(wait)` if it has none left.
    fn take(&self, key: &K) -> Result<(), Duration> {
        if self.keys.len() >= self.max {
            self.keys.retain_recent();
        }
        let now = self.clock.now();
        let tried = match self.keys.len() < self.max {
            true => self.keys.check_key(key),
            false => self.rest.check(),
        };
        tried.map_err(|until| until.wait_time_from(now))
    }
}

/// What a refused try is told: how long to wait.
#[derive(Debug, PartialEq, Eq)]
pub struct TooMany(pub Duration);

impl TooMany {
    /// Whole seconds for `Retry-After` (at least one).
    pub fn retry_after(&self) -> u64 {
        (self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0)).max(1)
    }
}

/// The web UI's limits on guessing.
pub struct Limits<C: Clock = DefaultClock> {
    clients: PerKey<IpAddr, C>,
    links: PerKey<[u8; 32], C>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::with_clock(DefaultClock::default())
    }
}

/// The part of an address that names one client: all of IPv4, the /64 of IPv6.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl<C: Clock + Clone> Limits<C> {
    pub fn with_clock(clock: C) -> Self {
        Limits {
            clients: PerKey::new(quota(PER_CLIENT_PER_MINUTE), clock.clone(), MAX_TRACKED),
            links: PerKey::new(quota(PER_LINK_PER_MINUTE), clock, MAX_TRACKED),
        }
    }

    /// One try of a sign-in link from `ip`.
    pub fn sign_in(&self, ip: IpAddr) -> Result<(), TooMany> {
        self.clients.take(&client_of(ip)).map_err(TooMany)
    }

    /// One try of the password of the link whose key is `link`, from `ip`.
    pub fn password(&self, ip: IpAddr, link: &[u8; 32]) -> Result<(), TooMany> {
        self.clients.take(&client_of(ip)).map_err(TooMany)?;
        self.links.take(link).map_err(TooMany)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_client_runs_out_of_tries_and_gets_them_back_with_time() {
        let clock = FakeRelativeClock::default();
        let l = Limits::with_clock(clock.clone());
        for _ in 0..PER_CLIENT_PER_MINUTE {
            l.sign_in(ip("10.0.0.1")).unwrap();
        }
        let wait = l.sign_in(ip("10.0.0.1")).unwrap_err();
        assert!(
            wait.0 > Duration::ZERO && wait.0 <= Duration::from_secs(3),
            "{wait:?}"
        );
        assert!(wait.retry_after() >= 1);
        // Another client is not held back by the first.
        l.sign_in(ip("10.0.0.2")).unwrap();
        clock.advance(Duration::from_secs(3));
        l.sign_in(ip("10.0.0.1")).unwrap();
        assert!(l.sign_in(ip("10.0.0.1")).is_err());
    }

    #[test]
    fn a_link_runs_out_of_password_tries_whoever_tries() {
        let clock = FakeRelativeClock::default();
        let l = Limits::with_clock(clock.clone());
        let link = [7u8; 32];
        for i in 0..PER_LINK_PER_MINUTE {
            l.password(ip(&format!("10.0.1.{i}")), &link).unwrap();
        }
        assert!(l.password(ip("10.0.2.1"), &link).is_err());
        // Another link still answers.
        l.password(ip("10.0.2.1"), &[8u8; 32]).unwrap();
        clock.advance(Duration::from_secs(60));
        l.password(ip("10.0.2.1"), &link).unwrap();
    }

    #[test]
    fn one_ipv6_host_is_one_client_and_the_tracking_is_bounded() {
        let l = Limits::with_clock(FakeRelativeClock::default());
        for i in 0..PER_CLIENT_PER_MINUTE {
            l.sign_in(ip(&format!("2001:db8::{i:x}"))).unwrap();
        }
        assert!(l.sign_in(ip("2001:db8::ffff")).is_err());
        let small: PerKey<u32, FakeRelativeClock> =
            PerKey::new(quota(1), FakeRelativeClock::default(), 3);
        for k in 0..3 {
            small.take(&k).unwrap();
        }
        // Past the bound, new keys share one allowance of their own.
        small.take(&100).unwrap();
        assert!(small.take(&101).is_err());
        assert_eq!(small.keys.len(), 3);
    }
}
