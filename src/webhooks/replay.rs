//! Refusing the exact replay of an accepted webhook.
//!
//! A signature or token proves who made a request, not when: a captured request posted again
//! verifies just as well. HMAC-SHA256 signs its timestamp, which bounds a replay to the
//! tolerance window; CallRail's signature and tokens sign nothing of time. So the digest of
//! every accepted request (what its signature covers) is remembered for the tolerance window,
//! and the same request within it is answered as a duplicate and produces nothing. Later
//! replays are stopped by versions: a webhook's version comes from the payload's own times,
//! so an old payload never overwrites newer data.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// What identifies one request: account, signed timestamp (if any) and body.
pub type RequestDigest = [u8; 32];

/// The digest of a request to `account_key` with `body`, and the signed timestamp when the
/// method has one (a re-signed retry with a new timestamp is a new request).
pub fn request_digest(
    account_key: &str,
    signed_timestamp: Option<&str>,
    body: &[u8],
) -> RequestDigest {
    let mut hasher = Sha256::new();
    hasher.update((account_key.len() as u64).to_be_bytes());
    hasher.update(account_key.as_bytes());
    let ts = signed_timestamp.unwrap_or("");
    hasher.update((ts.len() as u64).to_be_bytes());
    hasher.update(ts.as_bytes());
    hasher.update(body);
    hasher.finalize().into()
}

struct Seen {
    at: HashMap<RequestDigest, Instant>,
    order: VecDeque<(RequestDigest, Instant)>,
}

/// Digests of accepted requests over a window, at most `max_entries` (the oldest go first).
pub struct ReplayCache {
    window: Duration,
    max_entries: usize,
    seen: Mutex<Seen>,
}

impl ReplayCache {
    pub fn new(window: Duration, max_entries: usize) -> Self {
        ReplayCache {
            window,
            max_entries: max_entries.max(1),
            seen: Mutex::new(Seen {
                at: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    fn expire(&self, seen: &mut Seen, now: Instant) {
        while let Some((digest, at)) = seen.order.front().copied() {
            let expired = now.saturating_duration_since(at) > self.window;
            if !expired && seen.order.len() <= self.max_entries {
                break;
            }
            seen.order.pop_front();
            if seen.at.get(&digest) == Some(&at) {
                seen.at.remove(&digest);
            }
        }
    }

    /// Whether `digest` was accepted within the window.
    pub fn seen(&self, digest: &RequestDigest, now: Instant) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        self.expire(&mut seen, now);
        seen.at.contains_key(digest)
    }

    /// Remembers an accepted request.
    pub fn remember(&self, digest: RequestDigest, now: Instant) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        seen.at.insert(digest, now);
        seen.order.push_back((digest, now));
        self.expire(&mut seen, now);
    }

    /// Requests remembered now.
    pub fn len(&self) -> usize {
        self.seen.lock().map(|s| s.at.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_a_replay_within_the_window_only() {
        let cache = ReplayCache::new(Duration::from_secs(300), 10);
        let t0 = Instant::now();
        let a = request_digest("callrail/A", None, b"{}");
        assert!(!cache.seen(&a, t0));
        cache.remember(a, t0);
        assert!(cache.seen(&a, t0 + Duration::from_secs(299)));
        assert!(!cache.seen(&a, t0 + Duration::from_secs(301)));
        assert!(cache.is_empty());
        // the same body to another account, or signed at another time, is another request
        assert_ne!(a, request_digest("callrail/B", None, b"{}"));
        assert_ne!(
            request_digest("x/A", Some("1"), b"{}"),
            request_digest("x/A", Some("2"), b"{}")
        );
        assert_ne!(
            request_digest("ab", Some("c"), b""),
            request_digest("a", Some("bc"), b"")
        );
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = ReplayCache::new(Duration::from_secs(300), 3);
        let t0 = Instant::now();
        for i in 0..10u8 {
            cache.remember(request_digest("k", None, &[i]), t0);
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.seen(&request_digest("k", None, &[9]), t0));
        assert!(!cache.seen(&request_digest("k", None, &[0]), t0));
    }
}
