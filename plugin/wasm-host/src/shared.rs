//! Shared data and shared queues: one store for all the VMs of a host, as ngx_wasm_module's
//! shm zones are for nginx's workers and Envoy's for its threads.
//!
//! Shared data: every set bumps the key's CAS; a set with a non-zero CAS that is not the
//! current one fails with `CasMismatch`. Queues are registered by name (the same name gives the
//! same id) and are unbounded, as Envoy's are: the filter bounds what it holds itself.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// The store.
#[derive(Default, Clone)]
pub struct SharedStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    data: HashMap<String, (Vec<u8>, u32)>,
    queues: Vec<(String, VecDeque<Vec<u8>>)>,
}

/// Outcome of a set.
#[derive(Debug, PartialEq, Eq)]
pub enum SetResult {
    /// Stored.
    Ok,
    /// The CAS given is not the key's.
    CasMismatch,
}

impl SharedStore {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A key's value and CAS.
    pub fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.lock().data.get(key).cloned()
    }

    /// Sets a key (`cas` 0: unconditionally).
    pub fn set(&self, key: &str, value: Vec<u8>, cas: u32) -> SetResult {
        let mut inner = self.lock();
        let entry = inner.data.entry(key.to_owned()).or_insert((Vec::new(), 0));
        if cas != 0 && cas != entry.1 {
            return SetResult::CasMismatch;
        }
        entry.0 = value;
        entry.1 = entry.1.wrapping_add(1).max(1);
        SetResult::Ok
    }

    /// Registers (or finds) a queue; ids start at 1.
    pub fn register_queue(&self, name: &str) -> u32 {
        let mut inner = self.lock();
        if let Some(i) = inner.queues.iter().position(|(n, _)| n == name) {
            return i as u32 + 1;
        }
        inner.queues.push((name.to_owned(), VecDeque::new()));
        inner.queues.len() as u32
    }

    /// A registered queue's id.
    pub fn resolve_queue(&self, name: &str) -> Option<u32> {
        let inner = self.lock();
        inner
            .queues
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| i as u32 + 1)
    }

    /// Appends to a queue; false if there is no such queue.
    pub fn enqueue(&self, id: u32, value: Vec<u8>) -> bool {
        let mut inner = self.lock();
        match inner.queues.get_mut((id as usize).wrapping_sub(1)) {
            Some((_, q)) => {
                q.push_back(value);
                true
            }
            None => false,
        }
    }

    /// Takes the oldest item: `Err(())` no such queue, `Ok(None)` empty.
    #[allow(clippy::result_unit_err)]
    pub fn dequeue(&self, id: u32) -> Result<Option<Vec<u8>>, ()> {
        let mut inner = self.lock();
        match inner.queues.get_mut((id as usize).wrapping_sub(1)) {
            Some((_, q)) => Ok(q.pop_front()),
            None => Err(()),
        }
    }

    /// Items waiting in the queue `name`.
    pub fn queue_len(&self, name: &str) -> usize {
        let inner = self.lock();
        inner
            .queues
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, q)| q.len())
    }
}
