//! Prometheus metrics under the names INTERFACE.md promises, behind a typed API.
//!
//! Each gateway owns its recorder instead of installing the process-global one: two gateways in
//! one process (the tests run dozens) then never mix their counts.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

const METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

/// Upstream latency buckets, in seconds: amoCRM answers in tens to hundreds of milliseconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The gateway's caches, as the `cache` label names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheName {
    Pages,
    Entities,
    Responses,
}

impl CacheName {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheName::Pages => "pages",
            CacheName::Entities => "entities",
            CacheName::Responses => "responses",
        }
    }
}

/// The `result` of a cache lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Stale,
    Miss,
}

/// The `outcome` of revalidating a stale entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// A probe answered "nothing changed": renewed without a download.
    ProbeUnchanged,
    /// A probe of another entry of the same scope, moments ago, renewed this one too.
    ProbeReused,
    /// A probe found changes, so the page was downloaded.
    ProbeChanged,
    /// Another replica had revalidated it already: taken from the shared tier.
    Shared,
    /// Downloaded again (changed, or past `--cache-max-age`).
    Downloaded,
    /// The refresh failed; the stale copy stays until its window ends.
    Failed,
}

impl Refresh {
    fn as_str(self) -> &'static str {
        match self {
            Refresh::ProbeUnchanged => "probe_unchanged",
            Refresh::ProbeReused => "probe_reused",
            Refresh::ProbeChanged => "probe_changed",
            Refresh::Shared => "shared",
            Refresh::Downloaded => "downloaded",
            Refresh::Failed => "failed",
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// The counters every request bumps, registered on first use: a registration builds and
    /// hashes a labelled key and looks it up in the registry, which is most of a hit's cost
    /// of counting. Lazily, so that `/metrics` lists a series only once it has counted.
    hot: Arc<HotCounters>,
}

#[derive(Default)]
struct HotCounters {
    /// By [`CacheName`], then [`Lookup`].
    lookups: [[OnceLock<metrics::Counter>; 3]; 3],
    /// `ok`, `error`, `cached`.
    graphql: [OnceLock<metrics::Counter>; 3],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("gateway_upstream_duration_seconds".to_owned()),
                &LATENCY_BUCKETS,
            )
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        Metrics {
            recorder: Arc::new(recorder),
            handle,
            hot: Arc::default(),
        }
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> metrics::Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>) -> metrics::Gauge {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &METADATA)
    }

    pub fn cache_lookup(&self, cache: CacheName, result: Lookup) {
        let (name, index) = match result {
            Lookup::Hit => ("hit", 0),
            Lookup::Stale => ("stale", 1),
            Lookup::Miss => ("miss", 2),
        };
        self.hot.lookups[cache as usize][index]
            .get_or_init(|| {
                self.counter(
                    "gateway_cache_lookups_total",
                    vec![
                        Label::new("cache", cache.as_str()),
                        Label::new("result", name),
                    ],
                )
            })
            .increment(1);
    }

    pub fn cache_refresh(&self, cache: CacheName, outcome: Refresh) {
        self.counter(
            "gateway_cache_refreshes_total",
            vec![
                Label::new("cache", cache.as_str()),
                Label::new("outcome", outcome.as_str()),
            ],
        )
        .increment(1);
    }

    pub fn cache_eviction(&self, cache: CacheName) {
        self.counter(
            "gateway_cache_evictions_total",
            vec![Label::new("cache", cache.as_str())],
        )
        .increment(1);
    }

    pub fn coalesced_waiter(&self, cache: CacheName) {
        self.counter(
            "gateway_cache_coalesced_waiters_total",
            vec![Label::new("cache", cache.as_str())],
        )
        .increment(1);
    }

    pub fn cache_size(&self, cache: CacheName, entries: u64, weighted_bytes: u64) {
        let label = || vec![Label::new("cache", cache.as_str())];
        self.gauge("gateway_cache_entries", label())
            .set(entries as f64);
        self.gauge("gateway_cache_weighted_bytes", label())
            .set(weighted_bytes as f64);
    }

    /// One upstream call. `endpoint` is a route template, never a concrete id; `status` is the
    /// HTTP status, or what went wrong before one arrived (`timeout`, `connect`, `transport`).
    pub fn upstream_request(&self, endpoint: &'static str, status: &str, took: Duration) {
        self.counter(
            "gateway_upstream_requests_total",
            vec![
                Label::new("endpoint", endpoint),
                Label::new("status", status.to_owned()),
            ],
        )
        .increment(1);
        self.recorder
            .register_histogram(
                &Key::from_parts(
                    "gateway_upstream_duration_seconds",
                    vec![Label::new("endpoint", endpoint)],
                ),
                &METADATA,
            )
            .record(took.as_secs_f64());
    }

    /// One GraphQL request: `ok`, `error` (any error in the response) or `cached` (answered from
    /// the response cache).
    pub fn graphql_request(&self, outcome: &'static str) {
        let register = || {
            self.counter(
                "gateway_graphql_requests_total",
                vec![Label::new("outcome", outcome)],
            )
        };
        match ["ok", "error", "cached"].iter().position(|o| *o == outcome) {
            Some(index) => self.hot.graphql[index].get_or_init(register).increment(1),
            None => register().increment(1),
        }
    }

    /// A lookup in the shared (Redis) tier after a miss in moka.
    pub fn shared_lookup(&self, cache: CacheName, hit: bool) {
        self.counter(
            "gateway_shared_cache_lookups_total",
            vec![
                Label::new("cache", cache.as_str()),
                Label::new("result", if hit { "hit" } else { "miss" }),
            ],
        )
        .increment(1);
    }

    /// A replica waited for another one's fetch instead of calling the upstream itself.
    pub fn shared_lease_wait(&self, cache: CacheName) {
        self.counter(
            "gateway_shared_cache_lease_waits_total",
            vec![Label::new("cache", cache.as_str())],
        )
        .increment(1);
    }

    /// A Redis operation failed or timed out; the gateway went on without it.
    pub fn redis_error(&self, operation: &'static str) {
        self.counter(
            "gateway_redis_errors_total",
            vec![Label::new("operation", operation)],
        )
        .increment(1);
    }

    /// Whether Redis answers (1) or the gateway works alone (0).
    pub fn redis_up(&self, up: bool) {
        self.gauge("gateway_redis_up", Vec::new())
            .set(if up { 1.0 } else { 0.0 });
    }

    /// Whether this replica listens to the other replicas' invalidations.
    pub fn redis_subscribed(&self, subscribed: bool) {
        self.gauge("gateway_redis_subscribed", Vec::new())
            .set(if subscribed { 1.0 } else { 0.0 });
    }

    /// A batch of invalidations (from webhooks and purges, coalesced) was applied.
    pub fn invalidations_applied(&self, count: usize) {
        self.counter("gateway_invalidation_batches_total", Vec::new())
            .increment(1);
        self.counter("gateway_invalidations_total", Vec::new())
            .increment(u64::try_from(count).unwrap_or(u64::MAX));
    }

    /// Another replica's invalidation (or a gap in them) was applied to this replica's caches.
    pub fn broadcast_applied(&self, what: &'static str) {
        self.counter(
            "gateway_broadcast_invalidations_total",
            vec![Label::new("kind", what)],
        )
        .increment(1);
    }

    /// Subscriptions open on this replica.
    pub fn live_subscriptions(&self, active: usize) {
        self.gauge("gateway_live_subscriptions", Vec::new())
            .set(active as f64);
    }

    /// Events handed to subscribers (one per subscriber reached).
    pub fn live_events_delivered(&self, count: usize) {
        self.counter("gateway_live_events_delivered_total", Vec::new())
            .increment(u64::try_from(count).unwrap_or(u64::MAX));
    }

    /// A subscriber's connection the gateway cut: `reason` is `silent` (no pong for two
    /// keep-alive intervals) or `slow` (a message not taken within one).
    pub fn live_disconnect(&self, reason: &'static str) {
        self.counter(
            "gateway_live_disconnects_total",
            vec![Label::new("reason", reason)],
        )
        .increment(1);
    }

    /// A change-feed call to amoCRM; `outcome` is `ok` or `error`.
    pub fn live_feed_call(&self, outcome: &'static str) {
        self.counter(
            "gateway_live_feed_calls_total",
            vec![Label::new("outcome", outcome)],
        )
        .increment(1);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        // Histograms keep raw samples until upkeep folds them into buckets.
        self.handle.run_upkeep();
        self.handle.render()
    }
}
