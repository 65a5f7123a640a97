//! Kafka topic ids (KIP-516): what tells one incarnation of a topic from another. A topic that
//! is deleted and created again under the same name gets a new id, so offsets stored against
//! the old one can be recognised as foreign even where they happen to lie inside the new
//! topic's range. rust-rdkafka does not wrap librdkafka's `DescribeTopics`; this does.

use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::time::Duration;

use rdkafka::client::{Client, ClientContext};
use rdkafka_sys as rdsys;

/// The all-zero id Kafka uses for "no id" (brokers before 2.8, some mocks).
const ZERO_TOPIC_ID: &str = "AAAAAAAAAAAAAAAAAAAAAA";

/// Describing a topic failed (the cluster does not support it, timed out, no such topic).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("describing topic {topic:?} for its id: {message}")]
pub struct TopicIdError {
    pub topic: String,
    pub message: String,
}

/// The id of `topic` (base64, as Kafka's tools print it), or `None` when the cluster has none
/// for it. Blocking: call it off the async runtime.
pub fn topic_id<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<String>, TopicIdError> {
    let fail = |message: String| TopicIdError {
        topic: topic.to_string(),
        message,
    };
    let name = CString::new(topic).map_err(|_| fail("the name contains a NUL byte".into()))?;
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // Ask a broker the client knows rather than the controller (librdkafka's default target
    // for admin requests): any broker answers the metadata request behind DescribeTopics, and
    // librdkafka's mock cluster names no controller at all.
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| fail(format!("reading metadata: {e}")))?;
    let broker = metadata
        .brokers()
        .first()
        .map_or(metadata.orig_broker_id(), |b| b.id());
    let rk = client.native_ptr();
    // SAFETY: every handle created here is destroyed by its guard when this function
    // returns; `rk` belongs to `client`, which outlives the call. librdkafka copies the topic
    // names into the collection, and strings read from the result event are copied out before
    // the event is destroyed.
    unsafe {
        let mut names: [*const c_char; 1] = [name.as_ptr()];
        let collection = Guard(
            rdsys::rd_kafka_TopicCollection_of_topic_names(names.as_mut_ptr(), 1),
            rdsys::rd_kafka_TopicCollection_destroy,
        );
        let options = Guard(
            rdsys::rd_kafka_AdminOptions_new(
                rk,
                rdsys::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
            ),
            rdsys::rd_kafka_AdminOptions_destroy,
        );
        let mut errstr = [0 as c_char; 256];
        rdsys::rd_kafka_AdminOptions_set_request_timeout(
            options.0,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        rdsys::rd_kafka_AdminOptions_set_broker(
            options.0,
            broker,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        let queue = Guard(rdsys::rd_kafka_queue_new(rk), rdsys::rd_kafka_queue_destroy);
        rdsys::rd_kafka_DescribeTopics(rk, collection.0, options.0, queue.0);
        let event = Guard(
            rdsys::rd_kafka_queue_poll(queue.0, timeout_ms.saturating_add(1000)),
            rdsys::rd_kafka_event_destroy,
        );
        if event.0.is_null() {
            return Err(fail(format!("no answer within {} ms", timeout_ms)));
        }
        let err = rdsys::rd_kafka_event_error(event.0);
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(fail(c_text(rdsys::rd_kafka_event_error_string(event.0))));
        }
        let result = rdsys::rd_kafka_event_DescribeTopics_result(event.0);
        if result.is_null() {
            return Err(fail("the answer was not a DescribeTopics result".into()));
        }
        let mut count = 0usize;
        let topics = rdsys::rd_kafka_DescribeTopics_result_topics(result, &mut count);
        for i in 0..count {
            let description = *topics.add(i);
            if description.is_null() {
                continue;
            }
            if c_text(rdsys::rd_kafka_TopicDescription_name(description)) != topic {
                continue;
            }
            let error = rdsys::rd_kafka_TopicDescription_error(description);
            if !error.is_null()
                && rdsys::rd_kafka_error_code(error)
                    != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                return Err(fail(c_text(rdsys::rd_kafka_error_string(error))));
            }
            let id = rdsys::rd_kafka_TopicDescription_topic_id(description);
            if id.is_null() {
                return Ok(None);
            }
            let text = c_text(rdsys::rd_kafka_Uuid_base64str(id));
            return Ok((!text.is_empty() && text != ZERO_TOPIC_ID).then_some(text));
        }
        Err(fail("the topic is not in the answer".into()))
    }
}

/// Destroys a librdkafka handle when dropped (a null one is left alone).
struct Guard<T>(*mut T, unsafe extern "C" fn(*mut T));

impl<T> Drop for Guard<T> {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from the matching librdkafka constructor and is
            // destroyed exactly once, here.
            unsafe { (self.1)(self.0) }
        }
    }
}

/// A C string owned by librdkafka, copied (empty when null).
///
/// # Safety
/// `ptr` is null or points to a NUL-terminated string valid for this call.
unsafe fn c_text(ptr: *const c_char) -> String {
    if ptr.is_null() {
        String::new()
    } else {
        CStr::from_ptr(ptr).to_string_lossy().into_owned()
    }
}
