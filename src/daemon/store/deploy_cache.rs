//! Deploys as the store last read them, by id, so that status polls (`GET /deploys/{id}`, a follower's
//! "has it ended?") are answered without a round trip to a database thread.
//!
//! It stays exact because every change to a deploy goes through this process's [`super::Store`], which
//! calls [`DeployCache::changed`] after each write that touches a deploy (its row, its stages or its hosts),
//! once the write is committed. A read that began before a change must not put what it read back: each
//! change bumps a generation, and [`DeployCache::put`] keeps a deploy only when no change happened since its
//! read began. Absent deploys are never cached (a new one is visible at once).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::daemon::model::Deploy;

/// Most deploys kept (a few KB each); when full, the cache starts over.
const CAPACITY: usize = 512;

#[derive(Default)]
pub(super) struct DeployCache {
    inner: Mutex<Inner>,
    /// Told of every change (the notifier waits on it for new deploy events).
    pub(super) changes: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    /// Bumped by every change: a read that began at another generation is not kept.
    generation: u64,
    deploys: HashMap<i64, Deploy>,
}

impl DeployCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    pub(super) fn get(&self, id: i64) -> Option<Deploy> {
        self.lock().deploys.get(&id).cloned()
    }

    /// The generation to pass to [`DeployCache::put`], taken before reading the database.
    pub(super) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps a deploy read from the database, unless something changed since `generation`.
    pub(super) fn put(&self, deploy: &Deploy, generation: u64) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.deploys.len() >= CAPACITY {
            inner.deploys.clear();
        }
        inner.deploys.insert(deploy.id, deploy.clone());
    }

    /// Deploy `id` changed (call after the change is committed).
    pub(super) fn changed(&self, id: i64) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.deploys.remove(&id);
        self.changes.notify_one();
    }

    /// Deploys changed, which ones not known (call after the change is committed).
    pub(super) fn changed_all(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.deploys.clear();
        self.changes.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::model::DeployState;

    fn deploy(id: i64, state: DeployState) -> Deploy {
        Deploy {
            id,
            service: "app".into(),
            destination: None,
            kind: "deploy".into(),
            version: None,
            git_ref: None,
            commit: None,
            state,
            stage: None,
            reason: None,
            requested_by: None,
            created_at: String::new(),
            started_at: None,
            ended_at: None,
            error: None,
            runner: None,
            stages: Vec::new(),
        }
    }

    #[test]
    fn a_read_that_began_before_a_change_is_not_kept() {
        let cache = DeployCache::default();
        let before = cache.generation();
        cache.changed(1);
        cache.put(&deploy(1, DeployState::Queued), before);
        assert_eq!(cache.get(1), None, "read before the change: maybe stale");
        let now = cache.generation();
        cache.put(&deploy(1, DeployState::Running), now);
        assert_eq!(cache.get(1).unwrap().state, DeployState::Running);
        cache.changed(1);
        assert_eq!(cache.get(1), None);
        cache.put(&deploy(2, DeployState::Running), cache.generation());
        cache.changed_all();
        assert_eq!(cache.get(2), None);
    }

    #[test]
    fn it_holds_at_most_its_capacity() {
        let cache = DeployCache::default();
        for id in 0..(CAPACITY as i64 + 10) {
            cache.put(&deploy(id, DeployState::Queued), cache.generation());
        }
        assert!(cache.lock().deploys.len() <= CAPACITY);
        assert!(cache.get(CAPACITY as i64 + 9).is_some());
    }
}
