//! The Kafka side of the sink: a consumer owned by one OS thread (the
//! poller), whose rebalance callback asks the sink loop for the offsets stored
//! in the database before taking partitions, and lets it finish or abort the
//! batch in flight before giving partitions up.
//!
//! The poller hands records to the async loop through a bounded channel, in
//! order, with rebalance events in the same stream; the loop answers
//! rebalances through a reply channel and sends commits and seeks back as
//! commands.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::mpsc;

use crate::batch::SourceRecord;

/// What the poller tells the sink loop, in the order it happened.
#[derive(Debug)]
pub enum PollerEvent {
    Record(SourceRecord),
    /// Partitions about to be assigned: answer with the stored next offset of
    /// each partition that has one (the consumer starts there; the others at
    /// Kafka's committed offset, else the earliest).
    Assigned {
        partitions: Vec<i32>,
        reply: SyncSender<BTreeMap<i32, i64>>,
    },
    /// Partitions about to be taken away: finish or abort their batch, then answer.
    Revoked {
        partitions: Vec<i32>,
        reply: SyncSender<()>,
    },
}

/// What the sink loop asks of the consumer.
#[derive(Debug)]
pub enum PollerCommand {
    /// Commit these next offsets to Kafka (for lag tools).
    Commit(Vec<(i32, i64)>),
    /// Read `partition` from `offset` (Offset::Beginning when None).
    Seek { partition: i32, offset: Option<i64> },
}

/// The consumer context: the rebalance handshake with the sink loop.
pub struct SinkConsumerContext {
    topic: String,
    events: mpsc::Sender<PollerEvent>,
    commands: Mutex<Receiver<PollerCommand>>,
    closing: Arc<AtomicBool>,
    handshake_timeout: Duration,
}

impl SinkConsumerContext {
    pub fn new(
        topic: String,
        events: mpsc::Sender<PollerEvent>,
        commands: Receiver<PollerCommand>,
        closing: Arc<AtomicBool>,
        handshake_timeout: Duration,
    ) -> Self {
        SinkConsumerContext {
            topic,
            events,
            commands: Mutex::new(commands),
            closing,
            handshake_timeout,
        }
    }

    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }

    /// Send an event and wait for its answer, unless the sink is closing.
    fn handshake<T>(&self, make: impl FnOnce(SyncSender<T>) -> PollerEvent) -> Option<T> {
        if self.closing.load(Ordering::SeqCst) {
            return None;
        }
        let (tx, rx) = sync_channel(1);
        self.events.blocking_send(make(tx)).ok()?;
        match rx.recv_timeout(self.handshake_timeout) {
            Ok(answer) => Some(answer),
            Err(e) => {
                tracing::warn!(error = %e, "sink loop did not answer a rebalance in time");
                None
            }
        }
    }

    /// Run the loop's queued commands on `consumer`.
    pub fn run_commands(&self, consumer: &BaseConsumer<SinkConsumerContext>) {
        let commands = self.commands.lock().unwrap_or_else(PoisonError::into_inner);
        while let Ok(command) = commands.try_recv() {
            match command {
                PollerCommand::Commit(offsets) => {
                    let mut tpl = TopicPartitionList::new();
                    for (partition, next) in offsets {
                        let _ =
                            tpl.add_partition_offset(&self.topic, partition, Offset::Offset(next));
                    }
                    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                        tracing::debug!(error = %e, "committing offsets to Kafka (advisory) failed");
                    }
                }
                PollerCommand::Seek { partition, offset } => {
                    let to = offset.map(Offset::Offset).unwrap_or(Offset::Beginning);
                    if let Err(e) =
                        consumer.seek(&self.topic, partition, to, Duration::from_secs(5))
                    {
                        tracing::debug!(partition, error = %e, "seek failed; records before the stored offset are skipped instead");
                    }
                }
            }
        }
    }
}

impl ClientContext for SinkConsumerContext {}

impl ConsumerContext for SinkConsumerContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions = self.partitions(tpl);
                tracing::info!(?partitions, "partitions assigned");
                if let Some(stored) =
                    self.handshake(|reply| PollerEvent::Assigned { partitions, reply })
                {
                    for (partition, next) in stored {
                        let _ =
                            tpl.set_partition_offset(&self.topic, partition, Offset::Offset(next));
                    }
                }
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "assigning partitions failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let partitions = self.partitions(tpl);
                tracing::info!(
                    ?partitions,
                    lost = consumer.assignment_lost(),
                    "partitions revoked"
                );
                let _ = self.handshake(|reply| PollerEvent::Revoked { partitions, reply });
                // commit what the loop finished while we still own the partitions
                self.run_commands(consumer);
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "unassigning partitions failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

/// Poll `consumer` until `stop`, forwarding records and running commands.
/// The consumer is dropped (leaving the group) on this thread.
pub fn poll_until_stopped(
    consumer: BaseConsumer<SinkConsumerContext>,
    events: mpsc::Sender<PollerEvent>,
    stop: Arc<AtomicBool>,
) {
    let closing = consumer.context().closing.clone();
    while !stop.load(Ordering::SeqCst) {
        consumer.context().run_commands(&consumer);
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                let record = SourceRecord {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                };
                if events.blocking_send(PollerEvent::Record(record)).is_err() {
                    break;
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "Kafka consumer error"),
        }
    }
    closing.store(true, Ordering::SeqCst);
    consumer.context().run_commands(&consumer);
    drop(consumer);
}

/// Send a command to the poller; a full queue drops it (commits are advisory,
/// seeks are an optimisation).
pub fn send_command(commands: &SyncSender<PollerCommand>, command: PollerCommand) {
    if let Err(TrySendError::Full(c)) = commands.try_send(command) {
        tracing::debug!(command = ?c, "poller command queue full; dropped");
    }
}
