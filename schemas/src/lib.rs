//! callsync's records: Avro schemas, the typed model and the wire codecs.

pub mod model;

pub use model::*;
