//! Postgres and SQLite stores, batching and offsets for the calls sink.
