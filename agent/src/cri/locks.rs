//! Locks by name, so that RPCs about one pod or container serialise while
//! RPCs about unrelated ones run side by side.
//!
//! RunPodSandbox holds its pod's metadata key, so a retried request finds
//! the first one's record; CreateContainer holds its pod shared, and
//! StopPodSandbox / RemovePodSandbox hold it exclusively, so a container is
//! never added to a pod that is being stopped or torn down. A lock lives as
//! long as someone holds or waits for it: the table does not grow with the
//! pods the node has seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

/// The lock table.
#[derive(Debug, Default)]
pub struct KeyedLocks {
    table: Mutex<HashMap<String, Weak<RwLock<()>>>>,
}

impl KeyedLocks {
    /// Runs `work` holding `key` exclusively.
    pub fn exclusive<T>(&self, key: &str, work: impl FnOnce() -> T) -> T {
        let lock = self.lock_for(key);
        let _held = lock.write().unwrap_or_else(PoisonError::into_inner);
        work()
    }

    /// Runs `work` holding `key` shared: other shared holders may run too.
    pub fn shared<T>(&self, key: &str, work: impl FnOnce() -> T) -> T {
        let lock = self.lock_for(key);
        let _held = lock.read().unwrap_or_else(PoisonError::into_inner);
        work()
    }

    fn lock_for(&self, key: &str) -> Arc<RwLock<()>> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lock) = table.get(key).and_then(Weak::upgrade) {
            return lock;
        }
        // Forget the locks nobody holds any more before adding one.
        table.retain(|_, lock| lock.strong_count() > 0);
        let lock = Arc::new(RwLock::new(()));
        table.insert(key.to_owned(), Arc::downgrade(&lock));
        lock
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn one_key_serialises_and_other_keys_do_not_wait() {
        let locks = KeyedLocks::default();
        let (entered, inside) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        std::thread::scope(|scope| {
            let locks = &locks;
            scope.spawn(move || {
                locks.exclusive("pod-a", || {
                    entered.send(()).expect("send");
                    released.recv().expect("release");
                });
            });
            inside.recv().expect("first holder inside");
            // Another pod's lock is free while pod-a is held.
            let other = locks.exclusive("pod-b", || "ran");
            assert_eq!(other, "ran");
            let (tried, waited) = mpsc::channel();
            scope.spawn(move || locks.exclusive("pod-a", || tried.send(()).expect("send")));
            assert!(waited.recv_timeout(Duration::from_millis(200)).is_err(), "pod-a was not held exclusively");
            release.send(()).expect("send");
            waited.recv().expect("second holder got in after the first left");
        });
    }

    #[test]
    fn shared_holders_run_together() {
        let locks = KeyedLocks::default();
        let inside = AtomicUsize::new(0);
        let (both, seen) = mpsc::channel();
        std::thread::scope(|scope| {
            for _ in 0..2 {
                let (locks, inside, both) = (&locks, &inside, both.clone());
                scope.spawn(move || {
                    locks.shared("pod", || {
                        inside.fetch_add(1, Ordering::SeqCst);
                        while inside.load(Ordering::SeqCst) < 2 {
                            std::thread::yield_now();
                        }
                        both.send(()).expect("send");
                    });
                });
            }
            seen.recv_timeout(Duration::from_secs(10)).expect("two shared holders at once");
        });
    }

    #[test]
    fn unused_locks_are_forgotten() {
        let locks = KeyedLocks::default();
        for n in 0..100 {
            locks.exclusive(&format!("pod-{n}"), || ());
        }
        assert!(locks.len() <= 1, "{} locks kept", locks.len());
    }
}
