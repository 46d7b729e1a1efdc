//! The lessor's clock: when each lease expires. Deadlines live only in
//! memory (etcd's rule: a restart gives every lease a fresh TTL); the leases
//! themselves are part of the store's state. A queue ordered by deadline
//! makes "which leases have expired" and "when is the next expiry" cheap
//! however many leases there are; a renewal leaves its old queue entry
//! behind, to be skipped when it comes up.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

/// Lease deadlines.
#[derive(Debug, Default)]
pub struct Lessor {
    deadlines: HashMap<i64, Instant>,
    /// (deadline, lease): entries whose deadline is no longer the lease's are
    /// stale and skipped.
    queue: BinaryHeap<Reverse<(Instant, i64)>>,
}

impl Lessor {
    /// Starts (or restarts) lease `id`'s clock: it expires `ttl` seconds
    /// after `now`.
    pub fn grant(&mut self, id: i64, ttl: i64, now: Instant) {
        let deadline = now + Duration::from_secs(ttl.max(0) as u64);
        self.deadlines.insert(id, deadline);
        self.queue.push(Reverse((deadline, id)));
    }

    /// Renews lease `id` for `ttl` seconds from `now`; false if it has no
    /// clock (revoked, expired, or never granted).
    pub fn renew(&mut self, id: i64, ttl: i64, now: Instant) -> bool {
        if !self.deadlines.contains_key(&id) {
            return false;
        }
        self.grant(id, ttl, now);
        true
    }

    /// Stops lease `id`'s clock.
    pub fn revoke(&mut self, id: i64) {
        self.deadlines.remove(&id);
    }

    /// When lease `id` expires.
    pub fn deadline(&self, id: i64) -> Option<Instant> {
        self.deadlines.get(&id).copied()
    }

    /// The leases whose deadline has passed at `now`, oldest first. They
    /// keep their clock until [`Lessor::revoke`]: an expiry is a write, and
    /// a write can fail.
    pub fn expired(&mut self, now: Instant) -> Vec<i64> {
        let mut out = Vec::new();
        let mut keep = Vec::new();
        while let Some(Reverse((deadline, id))) = self.queue.peek().copied() {
            if deadline > now {
                break;
            }
            self.queue.pop();
            if self.deadlines.get(&id) == Some(&deadline) {
                out.push(id);
                keep.push(Reverse((deadline, id)));
            }
        }
        self.queue.extend(keep);
        out
    }

    /// The next deadline, if any lease has one.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((deadline, id))) = self.queue.peek().copied() {
            if self.deadlines.get(&id) == Some(&deadline) {
                return Some(deadline);
            }
            self.queue.pop();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_follows_the_latest_deadline() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut l = Lessor::default();
        l.grant(1, 10, t0);
        l.grant(2, 5, t0);
        l.grant(3, 60, t0);
        assert_eq!(l.next_deadline(), Some(t0 + s(5)));
        assert!(l.expired(t0 + s(4)).is_empty());
        // Renewed before it expires: the old deadline no longer counts.
        assert!(l.renew(2, 5, t0 + s(4)));
        assert_eq!(l.next_deadline(), Some(t0 + s(9)));
        assert_eq!(l.expired(t0 + s(9)), vec![2]);
        // Still expired until revoked (the revoke is a write that may fail).
        assert_eq!(l.expired(t0 + s(9)), vec![2]);
        l.revoke(2);
        assert_eq!(l.expired(t0 + s(10)), vec![1]);
        l.revoke(1);
        assert!(!l.renew(1, 10, t0 + s(11)), "a revoked lease is not renewed");
        assert_eq!(l.deadline(3), Some(t0 + s(60)));
        assert_eq!(l.next_deadline(), Some(t0 + s(60)));
        l.revoke(3);
        assert_eq!(l.next_deadline(), None);
    }
}
