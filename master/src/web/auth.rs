//! Who a web request acts for: one-time sign-in links (made by `shardfs web` for the caller of
//! its `WebLogin` request, within what that credential allows) exchanged for a session cookie.
//!
//! Both live in memory only (a master restart signs everyone out). A link is good for one use
//! within [`LINK_TTL`]; a session for [`SESSION_TTL`]. Only the blake3 of a link's or a
//! cookie's secret is kept, and a session ends when the credential that made its link is
//! revoked. Both maps are bounded: the oldest entries go first.

use shardfs_common::proto::Caller;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const LINK_TTL: Duration = Duration::from_secs(600);
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const MAX_LINKS: usize = 1024;
const MAX_SESSIONS: usize = 10_000;
/// The cookie holding a session's secret.
pub const COOKIE: &str = "shardfs_session";

/// The signed-in user of a web session.
#[derive(Clone, Debug)]
pub struct WebUser {
    /// Who every request of the session acts as.
    pub caller: Caller,
    /// The credential whose `shardfs web` made the sign-in link.
    pub credential: String,
}

#[derive(Default)]
pub struct Auth {
    links: Mutex<HashMap<[u8; 32], (WebUser, Instant)>>,
    sessions: Mutex<HashMap<[u8; 32], (WebUser, Instant)>>,
}

fn key(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

fn new_secret() -> String {
    hex::encode(shardfs_common::pki::random::<32>())
}

/// Drop expired entries, then the oldest while more than `max` are left.
fn bound(map: &mut HashMap<[u8; 32], (WebUser, Instant)>, max: usize) {
    let now = Instant::now();
    map.retain(|_, (_, until)| *until > now);
    while map.len() >= max {
        let oldest = map.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k);
        match oldest {
            Some(k) => map.remove(&k),
            None => break,
        };
    }
}

impl Auth {
    /// A new one-time sign-in secret for `user`.
    pub fn link(&self, user: WebUser) -> String {
        let secret = new_secret();
        let mut links = self.links.lock().expect("links lock");
        bound(&mut links, MAX_LINKS);
        links.insert(key(&secret), (user, Instant::now() + LINK_TTL));
        secret
    }

    /// Spend a sign-in secret: the new session's cookie secret, or None (unknown, used or
    /// expired).
    pub fn redeem(&self, link: &str) -> Option<String> {
        let (user, until) = self.links.lock().expect("links lock").remove(&key(link))?;
        if until <= Instant::now() {
            return None;
        }
        let secret = new_secret();
        let mut sessions = self.sessions.lock().expect("sessions lock");
        bound(&mut sessions, MAX_SESSIONS);
        sessions.insert(key(&secret), (user, Instant::now() + SESSION_TTL));
        Some(secret)
    }

    /// The user of the session with cookie secret `cookie`, if it is live and its
    /// credential is not `revoked`.
    pub fn user(&self, cookie: &str, revoked: impl Fn(&str) -> bool) -> Option<WebUser> {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let k = key(cookie);
        let (user, until) = sessions.get(&k)?;
        if *until <= Instant::now() || revoked(&user.credential) {
            sessions.remove(&k);
            return None;
        }
        Some(user.clone())
    }

    /// Sign out.
    pub fn end(&self, cookie: &str) {
        self.sessions
            .lock()
            .expect("sessions lock")
            .remove(&key(cookie));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(cred: &str) -> WebUser {
        WebUser {
            caller: Caller {
                uid: 1000,
                gid: 1000,
                groups: Vec::new(),
            },
            credential: cred.into(),
        }
    }

    #[test]
    fn a_link_signs_in_once_and_a_revoked_credential_ends_the_session() {
        let a = Auth::default();
        let link = a.link(user("client-1"));
        let cookie = a.redeem(&link).expect("first use");
        assert!(a.redeem(&link).is_none(), "a link is good once");
        assert!(a.redeem("not a link").is_none());
        assert_eq!(a.user(&cookie, |_| false).unwrap().caller.uid, 1000);
        assert!(a.user("forged", |_| false).is_none());
        assert!(a.user(&cookie, |c| c == "client-1").is_none(), "revoked");
        assert!(a.user(&cookie, |_| false).is_none(), "and gone for good");
        let c2 = a.redeem(&a.link(user("client-2"))).unwrap();
        a.end(&c2);
        assert!(a.user(&c2, |_| false).is_none(), "signed out");
    }

    #[test]
    fn the_maps_stay_bounded() {
        let a = Auth::default();
        for _ in 0..MAX_LINKS + 50 {
            a.link(user("c"));
        }
        assert!(a.links.lock().unwrap().len() <= MAX_LINKS);
    }
}
