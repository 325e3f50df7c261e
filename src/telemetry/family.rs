//! A metric family: one metric a label set, as prometheus-client's `Family`, but with its
//! map hashed by foldhash instead of SipHash.
//!
//! Every request looks up about eight label sets (its counter, its histograms, its token
//! counters, the GenAI ones), each holding two or three strings. With SipHash those
//! lookups were the largest single cost of a request's accounting under callgrind. The
//! labels are keyless's own bounded values (configured names, fixed operation names),
//! never a client's text, so a hash built for speed rather than for hostile keys is safe
//! here. The encoding goes through prometheus-client's own encoder, so `/metrics` is
//! unchanged.

use parking_lot::{MappedRwLockReadGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

type Map<S, M> = HashMap<S, M, foldhash::fast::RandomState>;

/// Metrics of one name, by label set; cloned handles share the same metrics.
pub struct Family<S, M> {
    metrics: Arc<RwLock<Map<S, M>>>,
    constructor: fn() -> M,
}

impl<S, M> Clone for Family<S, M> {
    fn clone(&self) -> Self {
        Family {
            metrics: self.metrics.clone(),
            constructor: self.constructor,
        }
    }
}

impl<S, M> std::fmt::Debug for Family<S, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family")
            .field("label_sets", &self.metrics.read().len())
            .finish()
    }
}

impl<S, M: Default> Default for Family<S, M> {
    fn default() -> Self {
        Family::new_with_constructor(M::default)
    }
}

impl<S, M> Family<S, M> {
    /// A family whose metrics are made by `constructor` (a histogram's buckets).
    pub fn new_with_constructor(constructor: fn() -> M) -> Self {
        Family {
            metrics: Arc::new(RwLock::new(Map::default())),
            constructor,
        }
    }
}

impl<S: Clone + Hash + Eq, M> Family<S, M> {
    /// The metric of `labels`, made on first use.
    pub fn get_or_create(&self, labels: &S) -> MappedRwLockReadGuard<'_, M> {
        if let Ok(metric) = RwLockReadGuard::try_map(self.metrics.read(), |m| m.get(labels)) {
            return metric;
        }
        let mut write = self.metrics.write();
        if !write.contains_key(labels) {
            write.insert(labels.clone(), (self.constructor)());
        }
        let read = RwLockWriteGuard::downgrade(write);
        RwLockReadGuard::map(read, |m| &m[labels])
    }
}

impl<S, M> EncodeMetric for Family<S, M>
where
    S: Clone + Hash + Eq + EncodeLabelSet,
    M: EncodeMetric + TypedMetric,
{
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, metric) in self.metrics.read().iter() {
            metric.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }

    fn is_empty(&self) -> bool {
        self.metrics.read().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::registry::Registry;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Labels {
        route: &'static str,
        app: Arc<str>,
    }

    #[test]
    fn one_metric_a_label_set_encoded_as_prometheus_client_does() {
        let family = Family::<Labels, Counter>::default();
        let mut registry = Registry::with_prefix("keyless");
        registry.register("requests", "Requests answered", family.clone());
        let billing = Labels {
            route: "chat/completions",
            app: Arc::from("billing"),
        };
        family.get_or_create(&billing).inc();
        family.get_or_create(&billing).inc();
        family
            .get_or_create(&Labels {
                route: "embeddings",
                app: Arc::from("search"),
            })
            .inc_by(5);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("keyless_requests_total{route=\"chat/completions\",app=\"billing\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("keyless_requests_total{route=\"embeddings\",app=\"search\"} 5\n"),
            "{out}"
        );
        assert!(out.contains("# TYPE keyless_requests counter\n"), "{out}");
    }
}
