//! How callsync names its transactional producers.
//!
//! - A role whose partitions come from a consumer group (the processor) names each process
//!   anew ([`TransactionalId::per_process`]): any number of processes can share one config,
//!   and zombies are kept out by the group generation their offsets are committed with
//!   (KIP-447), not by the id. A configured instance name gives a stable id instead
//!   ([`TransactionalId::stable`]), for static membership: the restarted instance fences its
//!   predecessor at once.
//! - A unit of work that must never run twice at once (a connector's sync scope) is named
//!   after that unit ([`TransactionalId::scoped`]), so opening it fences an earlier holder.
//!
//! Every id starts with the topic prefix, so deployments sharing a cluster never fence each
//! other.

use std::fmt;

/// A `transactional.id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransactionalId(String);

impl TransactionalId {
    /// `{topic_prefix}{base}-{host}-{pid}-{random}`: unique to this call, never reused.
    pub fn per_process(topic_prefix: &str, base: &str) -> Self {
        let random = uuid::Uuid::new_v4().simple().to_string();
        let host = host_name().map(|h| format!("{h}-")).unwrap_or_default();
        TransactionalId(format!(
            "{topic_prefix}{base}-{host}{}-{}",
            std::process::id(),
            &random[..12]
        ))
    }

    /// `{topic_prefix}{base}-{instance}`: the same for every start of this instance.
    pub fn stable(topic_prefix: &str, base: &str, instance: &str) -> Self {
        TransactionalId(format!("{topic_prefix}{base}-{}", sanitize(instance)))
    }

    /// `{topic_prefix}{base}-{scope}`: one per unit of work.
    pub fn scoped(topic_prefix: &str, base: &str, scope: &str) -> Self {
        TransactionalId(format!("{topic_prefix}{base}-{}", sanitize(scope)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TransactionalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// This machine's (container's) host name, cut to what a Kafka id shows well; for people
/// reading `kafka-transactions --list`, never relied on for uniqueness.
fn host_name() -> Option<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let name: String = sanitize(raw.trim()).chars().take(40).collect();
    (!name.is_empty()).then_some(name)
}

/// Keeps the characters Kafka ids and logs show plainly (`[A-Za-z0-9._-]`), others become `_`.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_process_ids_differ_and_carry_the_prefix() {
        let a = TransactionalId::per_process("prod.", "callsync-processor");
        let b = TransactionalId::per_process("prod.", "callsync-processor");
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("prod.callsync-processor-"), "{a}");
        assert!(
            a.as_str().contains(&format!("-{}-", std::process::id())),
            "{a}"
        );
    }

    #[test]
    fn stable_and_scoped_ids_are_the_same_every_time() {
        assert_eq!(
            TransactionalId::stable("prod.", "callsync-processor", "p-2").as_str(),
            "prod.callsync-processor-p-2"
        );
        assert_eq!(
            TransactionalId::scoped("", "callsync-connector", "retreaver-a b-full").as_str(),
            "callsync-connector-retreaver-a_b-full"
        );
    }
}
