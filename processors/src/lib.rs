//! Validation, normalization, dedup state and the exactly-once processor loop.
