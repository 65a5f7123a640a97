//! The client context of consumers that read partitions to their end.
//!
//! Such a consumer sets `enable.partition.eof` and waits for one `PartitionEOF` per partition:
//! the end of a partition is what it is looking for. rust-rdkafka (0.39) hands every consumer
//! error event to the context's `error` callback before returning it from `poll`, and the
//! default callback logs it at ERROR as a "Global error", so each restore of the dedup state,
//! each cursor read and each scan logged one ERROR per partition in a healthy system.
//! [`ReadToEndContext`] logs the end of a partition at TRACE and every other error as the
//! default context does.

use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Context of a consumer with `enable.partition.eof` (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadToEndContext;

/// Whether `error` is only the end of a partition.
pub fn is_partition_end(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::Global(RDKafkaErrorCode::PartitionEOF) | KafkaError::PartitionEOF(_)
    )
}

impl ClientContext for ReadToEndContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if is_partition_end(&error) {
            tracing::trace!(target: "rdkafka::client", reason, "partition end");
        } else {
            tracing::error!(target: "rdkafka::client", "librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for ReadToEndContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_end_of_a_partition_is_quiet() {
        assert!(is_partition_end(&KafkaError::Global(
            RDKafkaErrorCode::PartitionEOF
        )));
        assert!(is_partition_end(&KafkaError::PartitionEOF(3)));
        assert!(!is_partition_end(&KafkaError::Global(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
        assert!(!is_partition_end(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::UnknownTopicOrPartition
        )));
    }
}
