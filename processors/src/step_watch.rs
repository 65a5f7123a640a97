//! The watch on the processor thread's blocking Kafka transaction calls: the processor thread
//! marks each call with [`StepWatch::enter`], and the task that started the thread ends the
//! instance with [`crate::ProcessorError::Stuck`] once a call has run twice its timeout. The
//! watch lives in `callsync_runtime::step_watch` (the connectors' sync store uses it too),
//! which explains the librdkafka call that never returned.

pub use callsync_runtime::step_watch::{Step, StepWatch};
