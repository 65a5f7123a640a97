//! The process-wide metrics registry, exported in Prometheus text format.
//!
//! Every metric is named `callsync_*`; the names live here so that docs,
//! dashboards and code agree.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Records handled by a stage, labelled `stage` and `outcome`.
pub const RECORDS_TOTAL: &str = "callsync_records_total";
/// Requests to provider APIs, labelled `provider`, `status`.
pub const PROVIDER_REQUESTS_TOTAL: &str = "callsync_provider_requests_total";
/// Provider request latency in seconds, labelled `provider`.
pub const PROVIDER_REQUEST_SECONDS: &str = "callsync_provider_request_seconds";
/// 429 answers from providers, labelled `provider`, `account`.
pub const PROVIDER_RATE_LIMITED_TOTAL: &str = "callsync_provider_rate_limited_total";
/// Circuit breaker state per provider account: 0 closed, 1 half-open, 2 open.
pub const CIRCUIT_STATE: &str = "callsync_circuit_state";
/// Rows per sink batch.
pub const SINK_BATCH_ROWS: &str = "callsync_sink_batch_rows";
/// Sink batch commit latency in seconds.
pub const SINK_BATCH_SECONDS: &str = "callsync_sink_batch_seconds";
/// Partitions a sink instance holds, labelled `state`: `live`, `backfilling` (read from the
/// earliest retained offset because the database had no offset for them, not yet at the end
/// they had then) or `stopped` (the stored offset lies outside the partition or belongs to an
/// earlier incarnation of the topic; see `callsync status`).
pub const SINK_PARTITIONS: &str = "callsync_sink_partitions";
/// Offsets a sink instance still has to read before its backfilling partitions are live.
pub const SINK_BACKFILL_REMAINING: &str = "callsync_sink_backfill_remaining";
/// Consumer lag, labelled `group`, `topic`, `partition`: the records a read_committed consumer
/// still has to read after the group's committed offset (a tail of up to 64 offsets is read and
/// counted, so a partition that ends in transaction markers shows 0 once consumed; beyond that,
/// the high watermark minus the committed offset).
pub const CONSUMER_LAG: &str = "callsync_consumer_lag";
/// Members of each of callsync's consumer groups (processor, sink, workers), labelled
/// `group`: a role whose processes are all gone shows 0.
pub const CONSUMER_GROUP_MEMBERS: &str = "callsync_consumer_group_members";
/// Records sent to the DLQ, labelled `stage`, `reason`.
pub const DLQ_TOTAL: &str = "callsync_dlq_total";
/// Seconds from `observed_at` to the database commit.
pub const END_TO_END_SECONDS: &str = "callsync_end_to_end_seconds";
/// Dedup state entries held, labelled `partition`.
pub const DEDUP_STATE_ENTRIES: &str = "callsync_dedup_state_entries";
/// Approximate bytes of dedup state held.
pub const DEDUP_STATE_BYTES: &str = "callsync_dedup_state_bytes";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the Prometheus recorder once per process and return its handle
/// (render it for `/metrics`). Later calls return the same handle.
pub fn prometheus() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
            .map(|b| b.build_recorder())
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        // Fails only if another recorder is installed (e.g. by a test); ours still renders.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_up_in_the_rendered_text() {
        let handle = prometheus();
        metrics::counter!(RECORDS_TOTAL, "stage" => "test", "outcome" => "ok").increment(3);
        let text = handle.render();
        assert!(
            text.contains("callsync_records_total{stage=\"test\",outcome=\"ok\"} 3"),
            "{text}"
        );
    }
}
