//! A stored response lives on the resource that created it: retrieve, cancel, delete,
//! `input_items` and a new response's `previous_response_id` must go back there.
//!
//! keyless learns `response id -> backend` from the create's answer as it passes to the
//! client (the first `"id":"resp_..."` of a JSON answer or of the `response.created`
//! event), before the client can know the id. The map is bounded (the oldest ids are
//! forgotten first) and per process: with several replicas, a model on several endpoints
//! needs session affinity in front of keyless, or one backend per model. An id keyless
//! does not know goes where it would have gone anyway (the default endpoint).

use crate::backend::Backend;
use memchr::memmem;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Ids remembered at most: about 100 bytes each, a few MB in all.
const MAX_IDS: usize = 65_536;
/// The longest id read; Azure's are about 50 characters.
const MAX_ID_LEN: usize = 256;

/// Response id -> the backend that created it.
#[derive(Default)]
pub struct Affinity {
    inner: Mutex<Map>,
}

#[derive(Default)]
struct Map {
    by_id: HashMap<Box<str>, Backend>,
    order: VecDeque<Box<str>>,
}

impl Affinity {
    /// An empty map.
    pub fn new() -> Arc<Affinity> {
        Arc::new(Affinity::default())
    }

    /// Remembers that `backend` created `id`.
    pub fn learn(&self, id: &str, backend: Backend) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if map.by_id.insert(id.into(), backend).is_none() {
            map.order.push_back(id.into());
            while map.order.len() > MAX_IDS {
                if let Some(old) = map.order.pop_front() {
                    map.by_id.remove(&old);
                }
            }
        }
    }

    /// The backend that created `id`, if known.
    pub fn get(&self, id: &str) -> Option<Backend> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.by_id.get(id).cloned()
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The response id an operation path names: `responses/{id}` and what follows it.
pub fn id_in_path(op: &str) -> Option<&str> {
    let rest = op.strip_prefix("responses/")?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then_some(id)
}

/// Finds the first `"id":"resp_..."` in an answer's bytes, across reads, and tells the
/// map which backend made it.
pub struct Learner {
    affinity: Arc<Affinity>,
    backend: Backend,
    find: FirstString,
}

impl Learner {
    /// Learns for `backend`.
    pub fn new(affinity: Arc<Affinity>, backend: Backend) -> Learner {
        Learner {
            affinity,
            backend,
            find: FirstString::new(&ID_KEY, "resp_"),
        }
    }

    /// Looks at the next bytes of the answer.
    pub fn feed(&mut self, data: &[u8]) {
        if let Some(id) = self.find.feed(data) {
            self.affinity.learn(&id, self.backend.clone());
        }
    }
}

/// The first string value of a key in an answer (`"id":"`), across reads, when it starts
/// with a prefix.
#[derive(Debug)]
pub struct FirstString {
    finder: &'static memmem::Finder<'static>,
    key_len: usize,
    prefix: &'static str,
    state: Learn,
    id: Vec<u8>,
    /// The end of the last read, so a key split across reads is still found.
    tail: Vec<u8>,
}

#[derive(Debug)]
enum Learn {
    Seeking,
    /// Inside the id's string.
    Reading,
    Done,
}

/// `"id":"`, the key of a response's id.
pub static ID_KEY: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"\"id\":\""));
/// `"model":"`, the key of the model that answered.
pub static MODEL_KEY: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"\"model\":\""));

impl FirstString {
    /// Looks for the key `finder` finds (`"name":"`, quotes and colon included) and a
    /// value starting with `prefix`.
    pub fn new(finder: &'static memmem::Finder<'static>, prefix: &'static str) -> FirstString {
        FirstString {
            finder,
            key_len: finder.needle().len(),
            prefix,
            state: Learn::Seeking,
            id: Vec::new(),
            tail: Vec::new(),
        }
    }

    /// The value, once (the read that completes it).
    pub fn feed(&mut self, data: &[u8]) -> Option<String> {
        let mut data = data;
        loop {
            match self.state {
                Learn::Done => return None,
                Learn::Seeking => {
                    // The key may straddle earlier reads: their tail and this read's
                    // start are searched together first.
                    let take = data.len().min(self.key_len - 1);
                    let mut joined = std::mem::take(&mut self.tail);
                    let held = joined.len();
                    joined.extend_from_slice(&data[..take]);
                    if let Some(at) = self.finder.find(&joined) {
                        self.state = Learn::Reading;
                        self.id.clear();
                        data = &data[at + self.key_len - held..];
                        continue;
                    }
                    if let Some(at) = self.finder.find(data) {
                        self.state = Learn::Reading;
                        self.id.clear();
                        data = &data[at + self.key_len..];
                        continue;
                    }
                    let keep = joined.len().min(self.key_len - 1);
                    self.tail = joined[joined.len() - keep..].to_vec();
                    if data.len() >= self.key_len - 1 {
                        self.tail = data[data.len() - (self.key_len - 1)..].to_vec();
                    }
                    return None;
                }
                Learn::Reading => match memchr::memchr(b'"', data) {
                    Some(end) => {
                        self.id.extend_from_slice(&data[..end]);
                        self.state = Learn::Done;
                        return self.response_id();
                    }
                    None => {
                        self.id.extend_from_slice(data);
                        if self.id.len() > MAX_ID_LEN {
                            self.state = Learn::Done;
                        }
                        return None;
                    }
                },
            }
        }
    }

    /// The value, if it has the prefix (the first `"id"` of a create's answer is the
    /// response's).
    fn response_id(&self) -> Option<String> {
        std::str::from_utf8(&self.id)
            .ok()
            .filter(|id| id.starts_with(self.prefix) && id.len() <= MAX_ID_LEN)
            .map(str::to_owned)
    }
}

impl std::fmt::Debug for Learner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Learner").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_id_is_found_across_any_split() {
        let answers = [
            r#"{"id":"resp_abc123","object":"response","output":[{"id":"msg_1"}]}"#,
            "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_abc123\",\"status\":\"in_progress\"}}\n\n",
        ];
        for answer in answers {
            for size in 1..answer.len() {
                let mut find = FirstString::new(&ID_KEY, "resp_");
                let found: Vec<String> = answer
                    .as_bytes()
                    .chunks(size)
                    .filter_map(|piece| find.feed(piece))
                    .collect();
                assert_eq!(found, ["resp_abc123"], "pieces of {size}");
            }
        }
        let mut find = FirstString::new(&ID_KEY, "resp_");
        assert_eq!(
            find.feed(br#"{"id":"chatcmpl-1","x":{"id":"resp_2"}}"#),
            None,
            "not a response"
        );
    }

    #[test]
    fn ids_in_paths() {
        assert_eq!(id_in_path("responses/resp_1"), Some("resp_1"));
        assert_eq!(id_in_path("responses/resp_1/cancel"), Some("resp_1"));
        assert_eq!(id_in_path("responses/resp_1/input_items"), Some("resp_1"));
        assert_eq!(id_in_path("responses"), None);
        assert_eq!(id_in_path("responses/"), None);
        assert_eq!(id_in_path("chat/completions"), None);
    }
}
