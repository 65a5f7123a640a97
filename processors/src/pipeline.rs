//! What happens to one input record before dedup: decode, validate and normalize,
//! fingerprint. Pure (no Kafka), so it can be tested and fuzzed on its own.

use callsync_schemas::{CallRecord, ContentFingerprint, DecodeError, DecodedCall};
use chrono::{DateTime, Utc};

use crate::codec::CallRecordCodec;
use crate::config::{ConfigError, ProcessorConfig};
use crate::dlq::ErrorStage;
use crate::validate::{RecordValidator, RejectReason, Rejection};

/// A record that passed: normalized, with its content fingerprint.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub record: CallRecord,
    /// Whether normalization changed it (if not, its original bytes can be passed on as is).
    pub normalized: bool,
    pub fingerprint: ContentFingerprint,
}

/// A record that goes to the DLQ, and at which stage it failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{stage:?}: {rejection}")]
pub struct Rejected {
    pub rejection: Rejection,
    pub stage: ErrorStage,
}

/// Decode + validate + fingerprint.
#[derive(Debug)]
pub struct RecordPipeline {
    codec: CallRecordCodec,
    validator: RecordValidator,
}

impl RecordPipeline {
    pub fn new(config: &ProcessorConfig) -> Result<Self, ConfigError> {
        Ok(RecordPipeline {
            codec: CallRecordCodec::default(),
            validator: RecordValidator::new(config)?,
        })
    }

    pub fn codec(&self) -> &CallRecordCodec {
        &self.codec
    }

    /// Inspect one Kafka record's key and value at time `now`: [`Self::decode`] then
    /// [`Self::accept`].
    pub fn inspect(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Result<Accepted, Rejected> {
        let call = self.decode(key, value)?;
        self.accept(call, key, now)
    }

    /// Decode the value and check the key rule: enough to look the record's version up in the
    /// dedup state (a stale or duplicate version is dropped whatever else it holds, so the
    /// costlier rules run only on records that may be emitted). A record written with our
    /// schema is read in place: every field is checked (bytes that do not decode are rejected
    /// here, duplicate or not) but nothing is copied until [`Self::accept`].
    pub fn decode<'a>(
        &self,
        key: Option<&[u8]>,
        value: Option<&'a [u8]>,
    ) -> Result<DecodedCall<'a>, Rejected> {
        let Some(value) = value else {
            return Err(Rejected {
                rejection: Rejection::new(
                    RejectReason::Undecodable,
                    "value",
                    "the message has no value (a tombstone); calls.raw carries call records only",
                ),
                stage: ErrorStage::Decode,
            });
        };
        let call = self.codec.decode_call(value).map_err(undecodable)?;
        self.validator
            .check_key(call.provider(), call.account_id(), call.call_id(), key)
            .map_err(|rejection| Rejected {
                rejection,
                stage: ErrorStage::Validate,
            })?;
        Ok(call)
    }

    /// Validate and normalize a decoded record and fingerprint it.
    pub fn accept(
        &mut self,
        call: DecodedCall<'_>,
        key: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Result<Accepted, Rejected> {
        let mut record = call.into_record().map_err(undecodable)?;
        // a partial record's fields it does not carry are placeholders: reset, never judged
        let cleared = record.clear_uncarried();
        let normalized = self
            .validator
            .check(&mut record, key, now)
            .map_err(|rejection| Rejected {
                rejection,
                stage: ErrorStage::Validate,
            })?
            || cleared;
        let fingerprint = ContentFingerprint::of(&record);
        Ok(Accepted {
            record,
            normalized,
            fingerprint,
        })
    }
}

fn undecodable(e: DecodeError) -> Rejected {
    Rejected {
        rejection: Rejection::new(
            RejectReason::Undecodable,
            e.field().map_or(std::borrow::Cow::Borrowed("value"), |f| {
                f.to_string().into()
            }),
            e.to_string(),
        ),
        stage: ErrorStage::Decode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::call_record;
    use callsync_schemas::{encode_to_vec, WireFormat};
    use proptest::prelude::*;

    fn pipeline() -> RecordPipeline {
        RecordPipeline::new(&ProcessorConfig::default()).unwrap()
    }

    #[test]
    fn a_valid_record_passes_with_its_fingerprint() {
        let r = call_record(3, 7);
        let bytes = encode_to_vec(&r, WireFormat::SingleObject).unwrap();
        let key = r.key();
        let accepted = pipeline()
            .inspect(Some(key.as_bytes()), Some(&bytes), Utc::now())
            .unwrap();
        assert_eq!(accepted.record, r);
        assert!(!accepted.normalized);
        assert_eq!(accepted.fingerprint, ContentFingerprint::of(&r));
    }

    #[test]
    fn a_missing_value_is_undecodable() {
        let err = pipeline()
            .inspect(Some(b"k"), None, Utc::now())
            .unwrap_err();
        assert_eq!(
            (err.rejection.reason, err.stage),
            (RejectReason::Undecodable, ErrorStage::Decode)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_are_rejected_as_undecodable_without_panicking(
            value in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            match pipeline().inspect(Some(b"retreaver:a:c"), Some(&value), Utc::now()) {
                Err(rejected) => {
                    prop_assert_eq!(rejected.stage, ErrorStage::Decode);
                    prop_assert_eq!(rejected.rejection.reason, RejectReason::Undecodable);
                    prop_assert!(!rejected.rejection.message.is_empty());
                }
                Ok(accepted) => prop_assert!(false, "garbage decoded as {:?}", accepted.record),
            }
        }

        #[test]
        fn corrupted_records_never_panic(
            index in 0u64..1_000,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let r = call_record(index, 1);
            let mut bytes = encode_to_vec(&r, WireFormat::SingleObject).unwrap();
            for (at, byte) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= byte;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            let key = r.key();
            // any outcome is fine but a panic; a rejection names its stage
            if let Err(rejected) = pipeline().inspect(Some(key.as_bytes()), Some(&bytes), Utc::now()) {
                prop_assert!(!rejected.rejection.message.is_empty());
            }
        }
    }
}
