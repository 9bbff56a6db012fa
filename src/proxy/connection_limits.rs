//! Caps on what clients can hold: connections in total and per client IP address (`--max-connections`,
//! `--max-connections-per-ip`: a connection over either is closed as soon as it is accepted, before any
//! byte is read) and the memory held by request heads that are still incomplete
//! (`--max-pending-header-memory`), so a flood of idle or slow clients cannot take the proxy's memory or
//! descriptors.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The open client connections, counted against the limits (shared by every worker).
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it frees its place.
pub struct Admitted {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    /// Limits of `max_total` and `max_per_ip` connections (0: no limit).
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Admits a connection from `ip`, or says no when a limit is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let total = self.total.fetch_add(1, Ordering::Relaxed);
        if self.max_total > 0 && total >= self.max_total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        if self.max_per_ip > 0 {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= self.max_per_ip {
                drop(per_ip);
                self.total.fetch_sub(1, Ordering::Relaxed);
                return None;
            }
            *count += 1;
        }
        Some(Admitted { limits: Arc::clone(self), ip })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let limits = &self.limits;
        limits.total.fetch_sub(1, Ordering::Relaxed);
        if limits.max_per_ip > 0 {
            let mut per_ip = limits.per_ip.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(count) = per_ip.get_mut(&self.ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&self.ip);
                }
            }
        }
    }
}

/// Memory that incomplete request heads may hold beyond their first read buffer, process-wide.
static PENDING_HEAD_LIMIT: AtomicUsize = AtomicUsize::new(32 * 1024 * 1024);
static PENDING_HEAD_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Sets the process-wide budget for incomplete request heads (`--max-pending-header-memory`).
pub fn set_pending_head_limit(bytes: usize) {
    PENDING_HEAD_LIMIT.store(bytes, Ordering::Relaxed);
}

/// Bytes an incomplete request head holds from the budget; given back on drop (or [`Self::release`]).
#[derive(Debug, Default)]
pub struct HeadReservation(usize);

impl HeadReservation {
    /// Takes `bytes` more from the budget, or says no when the budget would be exceeded: the head is
    /// then refused (503) instead of growing, so slow clients cannot hold more than the budget in all.
    pub fn grow(&mut self, bytes: usize) -> bool {
        let limit = PENDING_HEAD_LIMIT.load(Ordering::Relaxed);
        let held = PENDING_HEAD_BYTES.fetch_add(bytes, Ordering::Relaxed);
        if held + bytes > limit {
            PENDING_HEAD_BYTES.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        self.0 += bytes;
        true
    }

    /// Gives everything held back (the head is complete, or refused).
    pub fn release(&mut self) {
        PENDING_HEAD_BYTES.fetch_sub(std::mem::take(&mut self.0), Ordering::Relaxed);
    }
}

impl Drop for HeadReservation {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_in_total_and_per_ip() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limits.admit(a).expect("first");
        let _second = limits.admit(a).expect("second");
        assert!(limits.admit(a).is_none(), "per-IP limit");
        let third = limits.admit(b).expect("another IP");
        assert!(limits.admit(b).is_none(), "total limit");
        assert_eq!(limits.open(), 3);
        drop(first);
        assert!(limits.admit(a).is_some(), "a place freed");
        drop(third);
        let unlimited = ConnectionLimits::new(0, 0);
        let many: Vec<_> = (0..100).map(|_| unlimited.admit(a).unwrap()).collect();
        assert_eq!(unlimited.open(), many.len());
    }

    #[test]
    fn incomplete_heads_share_one_budget() {
        let before = PENDING_HEAD_BYTES.load(Ordering::Relaxed);
        let limit = PENDING_HEAD_LIMIT.load(Ordering::Relaxed);
        let mut first = HeadReservation::default();
        assert!(first.grow(limit / 2));
        let mut second = HeadReservation::default();
        assert!(!second.grow(limit), "over the budget");
        first.release();
        assert!(second.grow(limit / 2), "given back");
        drop(second);
        assert_eq!(PENDING_HEAD_BYTES.load(Ordering::Relaxed), before);
    }
}
