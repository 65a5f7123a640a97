//! The Kafka side of the sink: a consumer owned by one OS thread (the
//! poller), whose rebalance callback asks the sink loop for the offsets stored
//! in the database before taking partitions, and lets it finish or abort the
//! batch in flight before giving partitions up.
//!
//! The poller hands records to the async loop through a bounded channel, in
//! order, with rebalance events in the same stream; the loop answers
//! rebalances through a reply channel and sends commits back as commands.
//!
//! Seeks go through a [`SeekBoard`] instead, because they must never be lost:
//! every record carries the seek epoch its partition had when it was polled,
//! and after asking for a seek the loop drops the records of older epochs
//! still in the channel (read from before the seek). Without that, a record
//! already queued from past the seek target would move the loop's position on
//! and the re-read records would be skipped as "already applied".

use std::collections::{BTreeMap, HashMap};
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
use crate::config::IdleTiming;

/// What the poller tells the sink loop, in the order it happened.
#[derive(Debug)]
pub enum PollerEvent {
    /// A record, with the seek epoch of its partition when it was polled.
    Record {
        record: SourceRecord,
        seek_epoch: u64,
    },
    /// The consumer had nothing more to read (sent once after records were
    /// read): the batch in flight need not wait for its timer.
    Idle,
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
}

/// The seeks the sink loop asked for and the ones the poller has made, per
/// partition. Bounded by the number of partitions; a newer request for a
/// partition replaces an older one not yet made.
#[derive(Debug, Default)]
pub struct SeekBoard {
    partitions: Mutex<HashMap<i32, SeekEntry>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct SeekEntry {
    /// Epoch of the newest request.
    requested: u64,
    /// Epoch of the newest seek made (records polled now carry it).
    applied: u64,
    /// Where the newest request reads from (None: the beginning).
    target: Option<i64>,
}

impl SeekBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, SeekEntry>> {
        self.partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Ask for `partition` to be read from `offset` (the beginning when None);
    /// returns the epoch records read from there will carry.
    pub fn request(&self, partition: i32, offset: Option<i64>) -> u64 {
        let mut partitions = self.lock();
        let entry = partitions.entry(partition).or_default();
        entry.requested += 1;
        entry.target = offset;
        entry.requested
    }

    /// The epoch of the newest seek requested for `partition`: records of an
    /// older epoch were read from before it.
    pub fn requested(&self, partition: i32) -> u64 {
        self.lock().get(&partition).map_or(0, |e| e.requested)
    }

    /// The epoch records of `partition` polled now carry.
    fn applied(&self, partition: i32) -> u64 {
        self.lock().get(&partition).map_or(0, |e| e.applied)
    }

    fn pending(&self) -> Vec<(i32, Option<i64>, u64)> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.applied < e.requested)
            .map(|(p, e)| (*p, e.target, e.requested))
            .collect()
    }

    fn mark_applied(&self, partition: i32, epoch: u64) {
        if let Some(entry) = self.lock().get_mut(&partition) {
            entry.applied = entry.applied.max(epoch);
        }
    }

    /// A fresh assignment starts where the loop said (offsets read from the
    /// database at that moment): it supersedes seeks asked for before.
    fn settle(&self, partitions: &[i32]) {
        let mut board = self.lock();
        for p in partitions {
            if let Some(entry) = board.get_mut(p) {
                entry.applied = entry.requested;
            }
        }
    }
}

/// The consumer context: the rebalance handshake with the sink loop.
pub struct SinkConsumerContext {
    topic: String,
    events: mpsc::Sender<PollerEvent>,
    commands: Mutex<Receiver<PollerCommand>>,
    seeks: Arc<SeekBoard>,
    closing: Arc<AtomicBool>,
    handshake_timeout: Duration,
}

impl SinkConsumerContext {
    pub fn new(
        topic: String,
        events: mpsc::Sender<PollerEvent>,
        commands: Receiver<PollerCommand>,
        seeks: Arc<SeekBoard>,
        closing: Arc<AtomicBool>,
        handshake_timeout: Duration,
    ) -> Self {
        SinkConsumerContext {
            topic,
            events,
            commands: Mutex::new(commands),
            seeks,
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
        while let Ok(PollerCommand::Commit(offsets)) = commands.try_recv() {
            let mut tpl = TopicPartitionList::new();
            for (partition, next) in offsets {
                let _ = tpl.add_partition_offset(&self.topic, partition, Offset::Offset(next));
            }
            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!(error = %e, "committing offsets to Kafka (advisory) failed");
            }
        }
        drop(commands);
        self.run_seeks(consumer);
    }

    /// Make the seeks the loop asked for. A seek of a partition no longer
    /// assigned is moot (its next assignment starts from the database's
    /// offsets); one that fails otherwise is tried again on the next round.
    fn run_seeks(&self, consumer: &BaseConsumer<SinkConsumerContext>) {
        let pending = self.seeks.pending();
        if pending.is_empty() {
            return;
        }
        let assigned: Vec<i32> = consumer
            .assignment()
            .map(|tpl| self.partitions(&tpl))
            .unwrap_or_default();
        for (partition, target, epoch) in pending {
            if !assigned.contains(&partition) {
                self.seeks.mark_applied(partition, epoch);
                continue;
            }
            let to = target.map(Offset::Offset).unwrap_or(Offset::Beginning);
            match consumer.seek(&self.topic, partition, to, Duration::from_secs(5)) {
                Ok(()) => {
                    tracing::debug!(partition, ?target, epoch, "seeked");
                    self.seeks.mark_applied(partition, epoch);
                }
                Err(e) => {
                    tracing::warn!(partition, ?target, error = %e, "seek failed; trying again")
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
                let answer = self.handshake(|reply| PollerEvent::Assigned {
                    partitions: partitions.clone(),
                    reply,
                });
                self.seeks.settle(&partitions);
                if let Some(stored) = answer {
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
    idle: IdleTiming,
) {
    let context = consumer.context();
    let closing = context.closing.clone();
    // Short, so an idle consumer is noticed soon after the last record; shorter still after
    // a live record (see `IdleTiming`).
    let mut poll_timeout = idle.catching_up;
    let mut read_since_idle = false;
    while !stop.load(Ordering::SeqCst) {
        context.run_commands(&consumer);
        match consumer.poll(poll_timeout) {
            None => {
                poll_timeout = idle.catching_up;
                if read_since_idle {
                    read_since_idle = false;
                    if events.blocking_send(PollerEvent::Idle).is_err() {
                        break;
                    }
                }
            }
            Some(Ok(message)) => {
                read_since_idle = true;
                poll_timeout = idle.after_record(
                    message.timestamp().to_millis(),
                    chrono::Utc::now().timestamp_millis(),
                );
                let partition = message.partition();
                let record = SourceRecord {
                    partition,
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                };
                let seek_epoch = context.seeks.applied(partition);
                if events
                    .blocking_send(PollerEvent::Record { record, seek_epoch })
                    .is_err()
                {
                    break;
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "Kafka consumer error"),
        }
    }
    closing.store(true, Ordering::SeqCst);
    context.run_commands(&consumer);
    drop(consumer);
}

/// Send a command to the poller; a full queue drops it (commits to Kafka are
/// advisory: the database holds the offsets).
pub fn send_command(commands: &SyncSender<PollerCommand>, command: PollerCommand) {
    if let Err(TrySendError::Full(c)) = commands.try_send(command) {
        tracing::debug!(command = ?c, "poller command queue full; dropped");
    }
}
