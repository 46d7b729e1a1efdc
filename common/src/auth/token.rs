//! etcd's simple tokens and its password hashing.
//!
//! A simple token is 16 random letters, a dot and an index (etcd's raft
//! index of the Authenticate request; gitcd's revision). It names a user
//! for as long as it is used: each use pushes its expiry `ttl` further (etcd's
//! `--auth-token-ttl`, 300 s). Tokens live in memory only, as etcd's do: a
//! restart, disabling auth, and deleting the user or changing their password
//! invalidate them, and clients authenticate again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// etcd's default `--auth-token-ttl`.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);
/// etcd's default `--bcrypt-cost` (Go's `bcrypt.DefaultCost`).
pub const DEFAULT_BCRYPT_COST: u32 = 10;

const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const TOKEN_LETTERS: usize = 16;

/// The live simple tokens.
pub struct Tokens {
    ttl: Duration,
    live: Mutex<HashMap<String, (String, Instant)>>,
}

impl Tokens {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            live: Mutex::new(HashMap::new()),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.live
            .lock()
            .expect("token map lock is never poisoned: holders do not panic")
    }

    /// A new token for `user`, made at `index`.
    pub fn assign(&self, user: &str, index: u64) -> String {
        let letters: String = (0..TOKEN_LETTERS)
            .map(|_| LETTERS[rand::random_range(0..LETTERS.len())] as char)
            .collect();
        let token = format!("{letters}.{index}");
        let now = Instant::now();
        let mut live = self.live();
        live.retain(|_, (_, deadline)| *deadline > now);
        live.insert(token.clone(), (user.to_owned(), now + self.ttl));
        token
    }

    /// The user `token` names, if it is live; using it renews it.
    pub fn user(&self, token: &str) -> Option<String> {
        let (_, index) = token.split_once('.')?;
        if index.contains('.') || index.parse::<u64>().is_err() {
            return None;
        }
        let now = Instant::now();
        let mut live = self.live();
        let (user, deadline) = live.get_mut(token)?;
        if *deadline <= now {
            live.remove(token);
            return None;
        }
        *deadline = now + self.ttl;
        Some(user.clone())
    }

    /// Forgets every token of `user` (deleted, or their password changed).
    pub fn invalidate_user(&self, user: &str) {
        self.live().retain(|_, (u, _)| u != user);
    }

    /// Forgets every token (auth disabled).
    pub fn clear(&self) {
        self.live().clear();
    }
}

/// A bcrypt hash of `password` at `cost`, in the `$2a$` form Go's bcrypt
/// writes. Slow by design: call it off the async threads.
pub fn hash_password(password: &str, cost: u32) -> Result<Vec<u8>, bcrypt::BcryptError> {
    let parts = bcrypt::hash_with_result(password, cost)?;
    Ok(parts.format_for_version(bcrypt::Version::TwoA).into_bytes())
}

/// Whether `password` matches bcrypt `hash`. Slow by design.
pub fn verify_password(password: &str, hash: &[u8]) -> bool {
    std::str::from_utf8(hash).is_ok_and(|h| bcrypt::verify(password, h).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_users_until_invalidated() {
        let t = Tokens::new(Duration::from_secs(60));
        let a = t.assign("alice", 7);
        assert_eq!(a.len(), 16 + 2);
        assert!(a.ends_with(".7"));
        assert_eq!(t.user(&a).as_deref(), Some("alice"));
        assert_eq!(t.user("nope"), None);
        assert_eq!(t.user("abc.x"), None);
        let b = t.assign("bob", 8);
        t.invalidate_user("alice");
        assert_eq!(t.user(&a), None);
        assert_eq!(t.user(&b).as_deref(), Some("bob"));
        t.clear();
        assert_eq!(t.user(&b), None);
    }

    #[test]
    fn tokens_expire() {
        let t = Tokens::new(Duration::ZERO);
        let a = t.assign("alice", 1);
        assert_eq!(t.user(&a), None);
    }

    #[test]
    fn passwords() -> Result<(), bcrypt::BcryptError> {
        let h = hash_password("secret", 4)?;
        assert!(h.starts_with(b"$2a$04$"));
        assert!(verify_password("secret", &h));
        assert!(!verify_password("Secret", &h));
        assert!(!verify_password("secret", b"not a hash"));
        Ok(())
    }
}
