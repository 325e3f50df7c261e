//! What the simulated resource keeps between requests: files, batches, stored responses and
//! generated images, in memory, bounded (the oldest go first), lost when it stops.
//!
//! Nothing runs in the background: a batch or a background response that is due is
//! finished by the first request that looks at it, under the same lock.

use bytes::Bytes;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// How many of each kind are kept, and how many bytes of files.
const MAX_RESPONSES: usize = 10_000;
const MAX_FILES: usize = 1_000;
const MAX_FILE_BYTES: usize = 512 * 1024 * 1024;
const MAX_BATCHES: usize = 1_000;
const MAX_IMAGES: usize = 256;

/// Everything stored, behind one lock (held for map operations only, never across I/O).
#[derive(Default)]
pub(super) struct Store {
    inner: Mutex<Inner>,
}

impl Store {
    /// The stored objects; a panic elsewhere while holding the lock leaves maps that are
    /// still consistent (every operation is a single insert or remove), so go on using them.
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) responses: Bounded<StoredResponse>,
    pub(super) files: Bounded<StoredFile>,
    pub(super) batches: Bounded<StoredBatch>,
    pub(super) images: Bounded<Bytes>,
}

/// A map that forgets its oldest entries past a count (and, for files, a byte total).
pub(super) struct Bounded<T> {
    map: HashMap<String, T>,
    /// Ids oldest first; may hold ids already removed (skipped when evicting).
    order: VecDeque<String>,
}

impl<T> Default for Bounded<T> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<T> Bounded<T> {
    pub(super) fn get(&self, id: &str) -> Option<&T> {
        self.map.get(id)
    }

    pub(super) fn get_mut(&mut self, id: &str) -> Option<&mut T> {
        self.map.get_mut(id)
    }

    pub(super) fn remove(&mut self, id: &str) -> Option<T> {
        let removed = self.map.remove(id);
        if removed.is_some() {
            self.order.retain(|other| other != id);
        }
        removed
    }

    /// Every entry, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.order.iter().filter_map(|id| self.map.get(id))
    }

    fn insert_bounded(
        &mut self,
        id: String,
        value: T,
        max: usize,
        too_big: impl Fn(&Self) -> bool,
    ) {
        self.order.push_back(id.clone());
        self.map.insert(id, value);
        while self.map.len() > max || (self.map.len() > 1 && too_big(self)) {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&oldest);
        }
    }
}

impl Bounded<StoredResponse> {
    pub(super) fn insert(&mut self, id: String, value: StoredResponse) {
        self.insert_bounded(id, value, MAX_RESPONSES, |_| false);
    }
}

impl Bounded<StoredFile> {
    pub(super) fn insert(&mut self, id: String, value: StoredFile) {
        self.insert_bounded(id, value, MAX_FILES, |files| {
            files.map.values().map(|f| f.content.len()).sum::<usize>() > MAX_FILE_BYTES
        });
    }
}

impl Bounded<StoredBatch> {
    pub(super) fn insert(&mut self, id: String, value: StoredBatch) {
        self.insert_bounded(id, value, MAX_BATCHES, |_| false);
    }
}

impl Bounded<Bytes> {
    pub(super) fn insert(&mut self, id: String, value: Bytes) {
        self.insert_bounded(id, value, MAX_IMAGES, |_| false);
    }
}

/// A response made with `store` (the default): what retrieve, cancel, delete,
/// `input_items` and a later `previous_response_id` read.
pub(super) struct StoredResponse {
    /// The response object as it is once completed.
    pub(super) completed: Value,
    /// The request's input, as items with ids.
    pub(super) input_items: Vec<Value>,
    /// For a background response: when it completes. `None`: it was answered at once.
    pub(super) ready_at: Option<Instant>,
    pub(super) cancelled: bool,
    /// Input and output tokens, which a response that continues this one counts again.
    pub(super) context_tokens: u64,
    /// The SSE frames of a background response created with `stream: true`, frame `i`
    /// being event `sequence_number: i`, for a client that resumes the stream.
    pub(super) events: Option<Vec<Bytes>>,
}

impl StoredResponse {
    /// The response object now: queued, completed or cancelled.
    pub(super) fn current(&self, now: Instant) -> Value {
        let mut response = self.completed.clone();
        let status = if self.cancelled {
            "cancelled"
        } else if self.ready_at.is_some_and(|ready| now < ready) {
            "in_progress"
        } else {
            return response;
        };
        if let Some(fields) = response.as_object_mut() {
            fields.insert("status".into(), Value::from(status));
            fields.insert("output".into(), Value::Array(Vec::new()));
            fields.insert("usage".into(), Value::Null);
        }
        response
    }

    pub(super) fn is_done(&self, now: Instant) -> bool {
        self.cancelled || self.ready_at.is_none_or(|ready| now >= ready)
    }
}

/// An uploaded (or batch-made) file: its `file` object and its bytes.
pub(super) struct StoredFile {
    pub(super) object: Value,
    pub(super) content: Bytes,
}

/// A batch: its `batch` object, made with the answers already computed, revealed (as an
/// output file and an error file) when it is due.
pub(super) struct StoredBatch {
    pub(super) object: Value,
    pub(super) created: Instant,
    pub(super) ready_at: Instant,
    /// The output and error JSONL, until the batch completes and they become files.
    pub(super) pending: Option<(Bytes, Bytes)>,
}
