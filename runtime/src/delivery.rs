//! Waiting for a `BaseProducer`'s deliveries without rdkafka's 100 ms steps, and without
//! spinning.
//!
//! rdkafka 0.39's `BaseProducer::flush` waits in steps of `poll(100 ms)`, and its `poll(t)`
//! always runs for the whole `t`, even once the last delivery report has been served. Its
//! `commit_transaction` flushes that way first, so every commit with a record still in flight
//! took at least 100 ms: measured in the processor as 105-120 ms per commit at 150 records a
//! batch, most of the webhook -> Postgres latency and a third of a 10,000-record batch's time.
//! [`await_deliveries`] asks librdkafka whether everything is delivered between 1 ms waits;
//! [`commit_transaction`] calls it before committing, so rdkafka's own flush finds nothing left.
//!
//! The wait blocks instead of calling `poll(1 ms)`: rdkafka hands librdkafka whole
//! milliseconds, so the sub-millisecond rest of any `poll(t)` is a busy loop of zero-timeout
//! polls, and `poll(1 ms)` is nothing but that loop. It took a sixth of the webhook benchmark
//! process's CPU, on a machine whose two cores the broker needs to answer these very commits.
//! Each wait is spent inside `rd_kafka_flush` (see [`flushing_wait`]), so that records still
//! lingering leave at once.

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, FutureProducer, Producer, ProducerContext};
use rdkafka::ClientContext;

/// How long one wait between two "all delivered?" checks lasts.
const STEP: Duration = Duration::from_millis(1);

/// Serves delivery reports until every record sent through `producer` is delivered (or failed:
/// the failures are reported to its context as usual), or `timeout` passes
/// (`KafkaError::Flush(OperationTimedOut)`).
pub fn await_deliveries<C: ProducerContext>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    // a BaseProducer serves its delivery reports only when polled
    wait_until_delivered(producer, timeout, || serve_then_wait(producer))
}

/// Commits `producer`'s open transaction: [`await_deliveries`], then librdkafka's commit
/// (whose own flush then has nothing to wait for). Errors are the transaction's, as from
/// `Producer::commit_transaction`.
pub fn commit_transaction<C: ProducerContext>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    commit_when_delivered(producer, timeout, || serve_then_wait(producer))
}

/// Serves every event `producer` has queued (delivery reports, errors) without waiting, then
/// waits one [`STEP`] flushing. `poll(ZERO)` serves at most one event, so it is repeated
/// while it shortens the queue.
fn serve_then_wait<C: ProducerContext>(producer: &BaseProducer<C>) {
    loop {
        let before = producer.in_flight_count();
        producer.poll(Duration::ZERO);
        if producer.in_flight_count() >= before {
            break;
        }
    }
    flushing_wait(producer);
}

/// Waits one [`STEP`] inside librdkafka's `rd_kafka_flush`, which tells the producer's broker
/// threads to send what they hold at once instead of after `linger.ms`: records still
/// lingering when a commit begins leave at once. (rdkafka's `flush(t)` calls
/// `rd_kafka_flush(0)`, which holds that flag for microseconds; a broker thread woken by it
/// usually looks too late and waits out its linger.) The wait ends early when nothing is
/// outstanding any more, which needs the delivery reports served: by the caller after this
/// returns, or by a `FutureProducer`'s own thread meanwhile.
fn flushing_wait<P: Producer<C>, C: ProducerContext>(producer: &P) {
    let step_ms = STEP.as_millis() as i32;
    // SAFETY: the handle belongs to `producer`, which outlives the call; `rd_kafka_flush` may
    // be called from any thread. Its result (timed out or not) is read by the caller's next
    // check of what is outstanding.
    unsafe {
        rdkafka_sys::rd_kafka_flush(producer.client().native_ptr(), step_ms);
    }
}

/// [`commit_transaction`] for a `FutureProducer`, whose own thread serves the delivery
/// reports. Blocking: call it off the async runtime.
pub fn commit_future_transaction<C: ClientContext + 'static>(
    producer: &FutureProducer<C>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    commit_when_delivered(producer, timeout, || flushing_wait(producer))
}

fn commit_when_delivered<P, C>(
    producer: &P,
    timeout: Duration,
    step: impl FnMut(),
) -> Result<(), KafkaError>
where
    P: Producer<C>,
    C: ProducerContext,
{
    let started = Instant::now();
    wait_until_delivered(producer, timeout, step)?;
    producer.commit_transaction(timeout.saturating_sub(started.elapsed()))
}

fn wait_until_delivered<P, C>(
    producer: &P,
    timeout: Duration,
    mut step: impl FnMut(),
) -> Result<(), KafkaError>
where
    P: Producer<C>,
    C: ProducerContext,
{
    let deadline = Instant::now() + timeout;
    loop {
        // a zero timeout: librdkafka says at once whether anything is still outstanding
        match producer.flush(Duration::ZERO) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) => {}
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
        step();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext};
    use rdkafka::ClientConfig;

    #[test]
    fn a_transaction_commits_with_every_record_delivered() {
        let (_mock, producer) =
            producer_on_mock("delivery-test", &[("transactional.id", "delivery-test")]);
        producer
            .init_transactions(Duration::from_secs(10))
            .expect("init");
        producer.begin_transaction().expect("begin");
        for i in 0..500 {
            let key = format!("k{i}");
            crate::send_waiting(
                &producer,
                BaseRecord::to("delivery-test").key(&key).payload("v"),
            )
            .expect("send");
        }
        assert!(producer.in_flight_count() > 0);
        commit_transaction(&producer, Duration::from_secs(10)).expect("commit");
        assert_eq!(producer.in_flight_count(), 0);
    }

    #[test]
    fn waiting_for_deliveries_sends_lingering_records_at_once() {
        let (_mock, producer) = producer_on_mock(
            "linger-test",
            &[("linger.ms", "20000"), ("message.timeout.ms", "60000")],
        );
        // connected, so that only the linger can hold the records back
        producer
            .client()
            .fetch_metadata(Some("linger-test"), Duration::from_secs(10))
            .expect("metadata");
        // ten rounds: a broker thread that happens to look while `flush(0)` holds its flag
        // sends at once too (1-140 ms a round when only that was done; about 1 ms now)
        let started = Instant::now();
        for round in 0..10 {
            for i in 0..10 {
                let key = format!("k{round}-{i}");
                crate::send_waiting(
                    &producer,
                    BaseRecord::to("linger-test").key(&key).payload("v"),
                )
                .expect("send");
            }
            await_deliveries(&producer, Duration::from_secs(10)).expect("delivered");
            assert_eq!(producer.in_flight_count(), 0);
        }
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "10 rounds took {:?}: the records waited for their linger",
            started.elapsed()
        );
    }

    #[test]
    fn waiting_for_deliveries_gives_up_at_its_timeout() {
        // nothing listens on port 1: the record can never be delivered
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.timeout.ms", "60000")
            .create()
            .expect("producer");
        crate::send_waiting(&producer, BaseRecord::<str, str>::to("t").payload("v")).expect("send");
        let started = Instant::now();
        let cpu_before = thread_cpu_ticks();
        let err = await_deliveries(&producer, Duration::from_millis(500)).unwrap_err();
        let cpu_ticks = thread_cpu_ticks() - cpu_before;
        assert!(
            matches!(err, KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)),
            "{err:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert_eq!(producer.in_flight_count(), 1);
        // the wait blocks: a busy loop would use the whole 500 ms (50 ticks of 10 ms)
        assert!(
            cpu_ticks <= 10,
            "waiting 500 ms used {cpu_ticks} ticks of CPU"
        );
    }

    /// A MockCluster with a two-partition `topic`, and a producer on it with `properties`.
    fn producer_on_mock(
        topic: &str,
        properties: &[(&str, &str)],
    ) -> (MockCluster<'static, DefaultProducerContext>, BaseProducer) {
        let mock = MockCluster::new(1).expect("mock cluster");
        mock.create_topic(topic, 2, 1).expect("topic");
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", mock.bootstrap_servers());
        for (key, value) in properties {
            config.set(*key, *value);
        }
        let producer = config.create().expect("producer");
        (mock, producer)
    }

    /// CPU time this thread has used (user + system), in clock ticks (10 ms on Linux).
    fn thread_cpu_ticks() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("thread stat");
        // the fields after the command, which is in parentheses and may hold spaces
        let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = after_comm.split(' ').collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the comm
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    }
}
