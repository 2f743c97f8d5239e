//! Locks that outlive a panic. A thread that panics while holding a std lock poisons it,
//! and `lock().expect(..)` then panics in every later user: one request that reached a
//! bug would take the member's store, lease keeper or watches down for good, on every
//! restart that replays it. A panic is a bug and is logged where it happens; the members
//! keep serving with the state as the panicking thread left it, since the guarded data is
//! written in single steps (no invariant spans a point that can panic).

use std::sync::{LockResult, PoisonError};

/// `lock()`, `read()` and `write()` results: the guard, poisoned or not.
pub trait Recover<G> {
    fn or_recover(self) -> G;
}

impl<G> Recover<G> for LockResult<G> {
    fn or_recover(self) -> G {
        self.unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_poisoned_lock_is_still_usable() {
        let m = Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().or_recover();
            panic!("a bug while holding the lock");
        })
        .join();
        assert!(m.is_poisoned());
        *m.lock().or_recover() += 1;
        assert_eq!(*m.lock().or_recover(), 2);
    }
}
