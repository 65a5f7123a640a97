//! Validation, normalization, dedup state and the exactly-once processor loop.
//!
//! Records from `calls.raw` are decoded, validated and normalized ([`validate`],
//! [`normalize`]), fingerprinted ([`callsync_schemas::ContentFingerprint`], shared with the
//! sink) and judged against the partition's dedup state ([`dedup`]) by
//! [`callsync_schemas::Precedence`] (version, then fingerprint: the order the sink's upsert guard
//! uses too); new or changed versions go to `calls`, invalid records to `calls.dlq`
//! ([`dlq`]), and each batch's outputs, state changes and offsets commit in one Kafka
//! transaction ([`processor`]).

// The errors carry rdkafka's `KafkaError` (about 100 bytes) plus the topic, group or
// transactional id that failed; they end an instance and are never built per record, so their
// size is not worth boxing every source.
#![allow(clippy::result_large_err)]

pub mod bench_support;
pub mod codec;
pub mod config;
pub mod counters;
pub mod dedup;
pub mod dlq;
pub mod error;
pub mod normalize;
pub mod phone_memo;
pub mod pipeline;
pub mod processor;
pub mod step_watch;
pub mod synthetic;
pub mod validate;

pub use config::{ConfigError, PhoneCheck, ProcessorConfig};
pub use counters::{ProcessorCounters, ProcessorReport};
pub use error::ProcessorError;
pub use processor::{
    run_processor, run_processor_with_counters, run_processor_with_faults, ProcessorFaults,
};
