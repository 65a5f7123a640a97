//! The one naming rule for every command that takes a topic (`tail`, `replay`, `sink rewind`):
//! a callsync base name (`calls`, `calls.raw`, `calls.dlq`, `callsync.*`) gets the configured
//! `kafka.topic_prefix`; any other name (one that already carries the prefix, an analytics
//! team's own topic) is taken as the full name. The command says which it used.

use std::fmt;

use callsync_runtime::{names, KafkaSettings};

/// The base names of callsync's own topics.
const BASE_NAMES: [&str; 7] = [
    names::CALLS_RAW,
    names::CALLS,
    names::CALLS_DLQ,
    names::DEDUP_STATE,
    names::SOURCE_OFFSETS,
    names::SYNC_REQUESTS,
    names::SYNC_EVENTS,
];

/// A topic name as given on the command line, resolved to the full name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicName {
    /// The name on the cluster.
    pub full: String,
    /// What was given.
    pub given: String,
    /// The prefix added (`None`: the name was taken as given).
    pub prefix_added: Option<String>,
}

impl TopicName {
    /// Applies the rule to `given` with `settings`' prefix.
    pub fn resolve(settings: &KafkaSettings, given: &str) -> TopicName {
        let prefix = &settings.topic_prefix;
        let prefix_added =
            (!prefix.is_empty() && BASE_NAMES.contains(&given)).then(|| prefix.to_string());
        TopicName {
            full: match &prefix_added {
                Some(prefix) => format!("{prefix}{given}"),
                None => given.to_string(),
            },
            given: given.to_string(),
            prefix_added,
        }
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.prefix_added {
            Some(prefix) => write!(
                f,
                "topic {} (base name {} with kafka.topic_prefix {prefix:?})",
                self.full, self.given
            ),
            None => write!(f, "topic {} (full name, as given)", self.full),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prod() -> KafkaSettings {
        let mut settings = KafkaSettings::plaintext("x:1");
        settings.topic_prefix = "prod.".into();
        settings
    }

    #[test]
    fn base_names_get_the_prefix_full_names_are_kept() {
        let calls = TopicName::resolve(&prod(), "calls");
        assert_eq!(calls.full, "prod.calls");
        assert_eq!(
            calls.to_string(),
            "topic prod.calls (base name calls with kafka.topic_prefix \"prod.\")"
        );
        assert_eq!(
            TopicName::resolve(&prod(), "callsync.sync-events").full,
            "prod.callsync.sync-events"
        );
        let full = TopicName::resolve(&prod(), "prod.calls");
        assert_eq!(full.full, "prod.calls");
        assert_eq!(full.to_string(), "topic prod.calls (full name, as given)");
        assert_eq!(
            TopicName::resolve(&prod(), "analytics.enriched").full,
            "analytics.enriched"
        );
    }

    #[test]
    fn without_a_prefix_every_name_is_full() {
        let settings = KafkaSettings::plaintext("x:1");
        let calls = TopicName::resolve(&settings, "calls");
        assert_eq!(calls.full, "calls");
        assert_eq!(calls.prefix_added, None);
    }
}
