//! The Kafka side of the sink: a consumer owned by one OS thread (the
//! poller), whose rebalance callback asks the sink loop for the offsets stored
//! in the database before taking partitions, and lets it finish or abort the
//! batch in flight before giving partitions up.
//!
//! The poller hands records to the async loop through a bounded channel in chunks (what
//! librdkafka has fetched, up to a bound: one wake-up of the loop per chunk, not per record),
//! in order, with rebalance events in the same stream; the loop answers rebalances through a
//! reply channel and sends commits back as commands. A rebalance callback runs inside `poll`,
//! so the chunk being gathered is sent before its event: no record is reported after the
//! revocation of its partition.
//!
//! A handshake the loop does not answer within the timeout (it was busy, e.g. committing a
//! large batch into a slow database) is given up by the poller, which must return to
//! librdkafka: it assigns the partitions at their end and reads nothing the loop has not
//! checked. The loop, when it reaches the stale event, learns from the [`Reply`] that nobody
//! waits any more and seeks each partition to where the database says instead.
//!
//! Seeks go through a [`SeekBoard`] instead, because they must never be lost:
//! every record carries the seek epoch its partition had when it was polled,
//! and after asking for a seek the loop drops the records of older epochs
//! still in the channel (read from before the seek). Without that, a record
//! already queued from past the seek target would move the loop's position on
//! and the re-read records would be skipped as "already applied".

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use tokio::sync::mpsc;

use crate::batch::SourceRecord;
use crate::config::IdleTiming;

/// Where the poller starts a newly assigned partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The next offset stored in the database.
    Offset(i64),
    /// The earliest retained record (no stored offset).
    Beginning,
    /// Not read: assigned but paused (the stored offset does not fit the partition).
    Paused,
    /// Not known yet (the database did not answer): at the end, so nothing is read before
    /// the loop checks the partition and seeks.
    Unchecked,
}

/// A record as polled, with the seek epoch of its partition when it was polled.
#[derive(Debug)]
pub struct PolledRecord {
    pub record: SourceRecord,
    pub seek_epoch: u64,
}

/// How many records (and value bytes) the poller gathers into one chunk at most.
#[derive(Debug, Clone, Copy)]
pub struct ChunkLimits {
    pub max_records: usize,
    pub max_bytes: usize,
}

/// What the poller tells the sink loop, in the order it happened.
#[derive(Debug)]
pub enum PollerEvent {
    /// Records in the order polled (never empty).
    Records(Vec<PolledRecord>),
    /// The consumer had nothing more to read (sent once after records were
    /// read): the batch in flight need not wait for its timer.
    Idle,
    /// Partitions about to be assigned: answer where each starts.
    Assigned {
        partitions: Vec<i32>,
        reply: Reply<BTreeMap<i32, StartAt>>,
    },
    /// Partitions about to be taken away: finish or abort their batch, then answer.
    Revoked {
        partitions: Vec<i32>,
        reply: Reply<()>,
    },
    /// The consumer stopped fetching a partition whose position is not in its range
    /// (`auto.offset.reset=error`; librdkafka does not say which partition).
    OffsetOutOfRange { message: String },
}

/// The answer slot of one rebalance handshake, shared by the poller (waiting, with a
/// timeout) and the loop (answering). Either the answer arrives while the poller waits, or
/// the poller gives up first and the loop learns so when it answers.
#[derive(Debug)]
pub struct Reply<T> {
    slot: Arc<(Mutex<ReplyState<T>>, Condvar)>,
}

#[derive(Debug)]
enum ReplyState<T> {
    Waiting,
    Answered(T),
    Abandoned,
}

impl<T> Reply<T> {
    fn new() -> (Self, Self) {
        let slot = Arc::new((Mutex::new(ReplyState::Waiting), Condvar::new()));
        (Reply { slot: slot.clone() }, Reply { slot })
    }

    /// The loop's answer; gives it back when the poller stopped waiting.
    pub fn answer(self, value: T) -> Result<(), T> {
        let (lock, ready) = &*self.slot;
        let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        match *state {
            ReplyState::Waiting => {
                *state = ReplyState::Answered(value);
                ready.notify_all();
                Ok(())
            }
            _ => Err(value),
        }
    }

    /// The poller's wait; None (and the slot abandoned) after `timeout`, or at once when the
    /// loop dropped its side unanswered.
    fn wait(&self, timeout: Duration) -> Option<T> {
        let (lock, ready) = &*self.slot;
        let deadline = Instant::now() + timeout;
        let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if matches!(*state, ReplyState::Abandoned) {
                return None;
            }
            if matches!(*state, ReplyState::Answered(_)) {
                return match std::mem::replace(&mut *state, ReplyState::Abandoned) {
                    ReplyState::Answered(value) => Some(value),
                    _ => None,
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                *state = ReplyState::Abandoned;
                return None;
            }
            state = ready
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn abandon(&self) {
        let (lock, _) = &*self.slot;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = ReplyState::Abandoned;
    }
}

/// A side dropped while the other still waits abandons the slot and wakes the waiter: a
/// loop that stops (SIGTERM) with a handshake still queued must not keep the poller waiting
/// out the whole handshake timeout in a rebalance callback (the process then outlived its
/// shutdown grace period).
impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        let (lock, ready) = &*self.slot;
        let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(*state, ReplyState::Waiting) {
            *state = ReplyState::Abandoned;
            ready.notify_all();
        }
    }
}

/// What the sink loop asks of the consumer.
#[derive(Debug)]
pub enum PollerCommand {
    /// Commit these next offsets to Kafka (for lag tools).
    Commit(Vec<(i32, i64)>),
    /// Stop fetching these partitions (they are stopped).
    Pause(Vec<i32>),
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

    /// A fresh assignment starts where the loop says: it supersedes seeks asked for before
    /// it. Called before the handshake, so the seeks the loop asks for while answering a
    /// handshake the poller gave up on are made.
    fn settle(&self, partitions: &[i32]) {
        let mut board = self.lock();
        for p in partitions {
            if let Some(entry) = board.get_mut(p) {
                entry.applied = entry.requested;
            }
        }
    }
}

/// Records gathered by the poller for the next [`PollerEvent::Records`].
#[derive(Debug, Default)]
struct Chunk {
    records: Vec<PolledRecord>,
    bytes: usize,
}

/// How long the poller waits before committing again offsets Kafka has not confirmed.
const COMMIT_RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// The offsets the loop asked the poller to commit to Kafka and those Kafka confirmed, per
/// partition this consumer owns. An asynchronous commit can fail (a rebalance in progress,
/// the coordinator moving or down), and on a partition without new records nothing else
/// would commit again: lag tools and `callsync status` would show records left for good
/// although the database holds them. The poller commits the unconfirmed ones again.
#[derive(Debug, Default)]
pub struct KafkaCommits {
    wanted: BTreeMap<i32, i64>,
    confirmed: BTreeMap<i32, i64>,
}

impl KafkaCommits {
    /// The loop asks for `next` to be committed for `partition`.
    pub fn want(&mut self, partition: i32, next: i64) {
        let entry = self.wanted.entry(partition).or_insert(next);
        *entry = (*entry).max(next);
    }

    /// Kafka confirmed `next` for `partition`.
    pub fn confirm(&mut self, partition: i32, next: i64) {
        let entry = self.confirmed.entry(partition).or_insert(next);
        *entry = (*entry).max(next);
    }

    /// The partitions are no longer ours: their commits are the new owner's.
    pub fn forget(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.wanted.remove(p);
            self.confirmed.remove(p);
        }
    }

    /// The wanted offsets Kafka has not confirmed, of the partitions in `assigned`.
    pub fn unconfirmed(&self, assigned: &[i32]) -> Vec<(i32, i64)> {
        self.wanted
            .iter()
            .filter(|(p, next)| {
                assigned.contains(p) && self.confirmed.get(p).is_none_or(|c| c < next)
            })
            .map(|(p, next)| (*p, *next))
            .collect()
    }
}

/// The consumer context: the rebalance handshake with the sink loop.
pub struct SinkConsumerContext {
    topic: String,
    events: mpsc::Sender<PollerEvent>,
    /// Records polled and not sent yet; only the poller thread touches it (in `poll` and
    /// between polls), the mutex makes the context `Sync`.
    chunk: Mutex<Chunk>,
    chunk_limits: ChunkLimits,
    commands: Mutex<Receiver<PollerCommand>>,
    seeks: Arc<SeekBoard>,
    closing: Arc<AtomicBool>,
    handshake_timeout: Duration,
    kafka_commits: Mutex<KafkaCommits>,
    last_commit: Mutex<Option<Instant>>,
}

impl SinkConsumerContext {
    pub fn new(
        topic: String,
        events: mpsc::Sender<PollerEvent>,
        commands: Receiver<PollerCommand>,
        seeks: Arc<SeekBoard>,
        closing: Arc<AtomicBool>,
        handshake_timeout: Duration,
        chunk_limits: ChunkLimits,
    ) -> Self {
        SinkConsumerContext {
            topic,
            events,
            chunk: Mutex::new(Chunk::default()),
            chunk_limits,
            commands: Mutex::new(commands),
            seeks,
            closing,
            handshake_timeout,
            kafka_commits: Mutex::new(KafkaCommits::default()),
            last_commit: Mutex::new(None),
        }
    }

    fn commits(&self) -> std::sync::MutexGuard<'_, KafkaCommits> {
        self.kafka_commits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn commit_async(&self, consumer: &BaseConsumer<SinkConsumerContext>, offsets: &[(i32, i64)]) {
        let mut tpl = TopicPartitionList::new();
        for &(partition, next) in offsets {
            let _ = tpl.add_partition_offset(&self.topic, partition, Offset::Offset(next));
        }
        *self
            .last_commit
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "committing offsets to Kafka (advisory) failed");
        }
    }

    /// Commit again the offsets Kafka has not confirmed, at most every
    /// [`COMMIT_RETRY_INTERVAL`] (see [`KafkaCommits`]).
    fn retry_commits(&self, consumer: &BaseConsumer<SinkConsumerContext>) {
        let due = self
            .last_commit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none_or(|at| at.elapsed() >= COMMIT_RETRY_INTERVAL);
        if !due {
            return;
        }
        let assigned = consumer
            .assignment()
            .map(|tpl| self.partitions(&tpl))
            .unwrap_or_default();
        let unconfirmed = self.commits().unconfirmed(&assigned);
        if !unconfirmed.is_empty() {
            tracing::debug!(
                ?unconfirmed,
                "committing unconfirmed offsets to Kafka again"
            );
            self.commit_async(consumer, &unconfirmed);
        }
    }

    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }

    /// Add a polled record to the chunk; true when the chunk is full.
    fn gather(&self, record: PolledRecord) -> bool {
        let mut chunk = self.chunk.lock().unwrap_or_else(PoisonError::into_inner);
        chunk.bytes += record.record.payload.as_ref().map_or(0, Vec::len);
        chunk.records.push(record);
        chunk.records.len() >= self.chunk_limits.max_records
            || chunk.bytes >= self.chunk_limits.max_bytes
    }

    /// Send the gathered records, if any; Err when the loop is gone.
    fn send_chunk(&self) -> Result<(), ()> {
        let records = {
            let mut chunk = self.chunk.lock().unwrap_or_else(PoisonError::into_inner);
            chunk.bytes = 0;
            std::mem::take(&mut chunk.records)
        };
        if records.is_empty() {
            return Ok(());
        }
        self.events
            .blocking_send(PollerEvent::Records(records))
            .map_err(|_| ())
    }

    /// Send an event (after the records polled before it) and wait for its answer, unless
    /// the sink is closing.
    fn handshake<T>(&self, make: impl FnOnce(Reply<T>) -> PollerEvent) -> Option<T> {
        if self.closing.load(Ordering::SeqCst) {
            return None;
        }
        let (mine, theirs) = Reply::new();
        if self.send_chunk().is_err() || self.events.blocking_send(make(theirs)).is_err() {
            mine.abandon();
            return None;
        }
        let answer = mine.wait(self.handshake_timeout);
        if answer.is_none() {
            tracing::warn!(
                timeout_ms = self.handshake_timeout.as_millis() as u64,
                "sink loop did not answer a rebalance in time; it checks the partitions when it gets to it"
            );
        }
        answer
    }

    /// Run the loop's queued commands on `consumer`.
    pub fn run_commands(&self, consumer: &BaseConsumer<SinkConsumerContext>) {
        let commands = self.commands.lock().unwrap_or_else(PoisonError::into_inner);
        while let Ok(command) = commands.try_recv() {
            match command {
                PollerCommand::Commit(offsets) => {
                    {
                        let mut commits = self.commits();
                        for &(partition, next) in &offsets {
                            commits.want(partition, next);
                        }
                    }
                    self.commit_async(consumer, &offsets);
                }
                PollerCommand::Pause(partitions) => {
                    let assigned = consumer
                        .assignment()
                        .map(|tpl| self.partitions(&tpl))
                        .unwrap_or_default();
                    let mut tpl = TopicPartitionList::new();
                    for p in partitions.into_iter().filter(|p| assigned.contains(p)) {
                        tpl.add_partition(&self.topic, p);
                    }
                    if tpl.count() > 0 {
                        if let Err(e) = consumer.pause(&tpl) {
                            tracing::warn!(error = %e, "pausing stopped partitions failed; their records are dropped");
                        }
                    }
                }
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
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::debug!(error = %e, "a Kafka commit failed; committed again soon");
            return;
        }
        let mut commits = self.commits();
        for element in offsets.elements_for_topic(&self.topic) {
            if let (Ok(()), Offset::Offset(next)) = (element.error(), element.offset()) {
                commits.confirm(element.partition(), next);
            }
        }
    }

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
                self.seeks.settle(&partitions);
                let answer = self.handshake(|reply| PollerEvent::Assigned {
                    partitions: partitions.clone(),
                    reply,
                });
                let mut paused = TopicPartitionList::new();
                let mut reading = TopicPartitionList::new();
                for &partition in &partitions {
                    let start = answer
                        .as_ref()
                        .and_then(|a| a.get(&partition).copied())
                        .unwrap_or(StartAt::Unchecked);
                    let offset = match start {
                        StartAt::Offset(next) => Offset::Offset(next),
                        StartAt::Beginning => Offset::Beginning,
                        StartAt::Paused | StartAt::Unchecked => Offset::End,
                    };
                    let _ = tpl.set_partition_offset(&self.topic, partition, offset);
                    if start == StartAt::Paused {
                        paused.add_partition(&self.topic, partition);
                    } else {
                        reading.add_partition(&self.topic, partition);
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
                // a partition paused in an earlier assignment stays paused otherwise
                if reading.count() > 0 {
                    if let Err(e) = consumer.resume(&reading) {
                        tracing::warn!(error = %e, "resuming assigned partitions failed");
                    }
                }
                if paused.count() > 0 {
                    if let Err(e) = consumer.pause(&paused) {
                        tracing::warn!(error = %e, "pausing stopped partitions failed; their records are dropped");
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let partitions = self.partitions(tpl);
                tracing::info!(
                    ?partitions,
                    lost = consumer.assignment_lost(),
                    "partitions revoked"
                );
                let _ = self.handshake(|reply| PollerEvent::Revoked {
                    partitions: partitions.clone(),
                    reply,
                });
                // commit what the loop finished while we still own the partitions
                self.run_commands(consumer);
                self.commits().forget(&partitions);
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

/// Poll `consumer` until `stop`, forwarding records in chunks and running commands.
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
    'polling: while !stop.load(Ordering::SeqCst) {
        context.run_commands(&consumer);
        context.retry_commits(&consumer);
        let mut polled = consumer.poll(poll_timeout);
        if polled.is_none() {
            poll_timeout = idle.catching_up;
            if read_since_idle {
                read_since_idle = false;
                if events.blocking_send(PollerEvent::Idle).is_err() {
                    break;
                }
            }
            continue;
        }
        // gather what librdkafka has already fetched (polls that do not wait), up to a chunk
        while let Some(result) = polled {
            match result {
                Ok(message) => {
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
                    if context.gather(PolledRecord { record, seek_epoch }) {
                        break;
                    }
                }
                Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => {
                    // a partition's position left its range (auto.offset.reset=error): the
                    // loop finds which and stops it, or seeks it back where it belongs
                    let event = PollerEvent::OffsetOutOfRange {
                        message: "a partition's position is outside its range".into(),
                    };
                    if context.send_chunk().is_err() || events.blocking_send(event).is_err() {
                        break 'polling;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "Kafka consumer error"),
            }
            polled = consumer.poll(Duration::ZERO);
        }
        if context.send_chunk().is_err() {
            break;
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{KafkaCommits, Reply};

    /// A sink SIGTERMed right after an assignment was queued to its loop: the loop stopped
    /// without answering, and the poller waited out the 30 s handshake timeout (the chaos
    /// test saw a sink outlive its 30 s grace period). The loop's side, dropped unanswered,
    /// now ends the wait at once. Fails before the change (the wait runs to its timeout).
    #[test]
    fn a_handshake_the_loop_drops_unanswered_ends_the_wait() {
        let (mine, theirs) = Reply::<u32>::new();
        let started = Instant::now();
        let dropper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(theirs);
        });
        assert_eq!(mine.wait(Duration::from_secs(10)), None);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        dropper.join().expect("dropper");
        // an answer still arrives as before
        let (mine, theirs) = Reply::<u32>::new();
        assert_eq!(theirs.answer(7), Ok(()));
        assert_eq!(mine.wait(Duration::from_secs(1)), Some(7));
    }

    /// A commit Kafka did not confirm (it failed during a rebalance) stays due until a later
    /// one is confirmed; a partition given up is the new owner's to commit.
    #[test]
    fn unconfirmed_commits_stay_due_until_confirmed() {
        let mut commits = KafkaCommits::default();
        commits.want(2, 899);
        commits.confirm(2, 899);
        commits.want(2, 952);
        commits.want(4, 987);
        assert_eq!(commits.unconfirmed(&[2, 4]), vec![(2, 952), (4, 987)]);
        // only partitions still assigned
        assert_eq!(commits.unconfirmed(&[4]), vec![(4, 987)]);
        // an older want never lowers the offset asked for
        commits.want(2, 900);
        commits.confirm(4, 987);
        assert_eq!(commits.unconfirmed(&[2, 4]), vec![(2, 952)]);
        commits.forget(&[2]);
        assert!(commits.unconfirmed(&[2, 4]).is_empty());
    }
}
