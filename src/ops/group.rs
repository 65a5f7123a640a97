//! Consumer group descriptions (the classic DescribeGroups API, through librdkafka's
//! `rd_kafka_list_groups`): state, members, and which partitions each member holds.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;

use super::OpsError;

/// One member of a consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupMember {
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    /// Partitions assigned to the member, per topic (empty while a rebalance runs or when the
    /// assignment is not in the consumer protocol's format).
    pub assignment: BTreeMap<String, Vec<i32>>,
}

impl GroupMember {
    /// `client_id@host` (the host without the broker's leading `/`).
    pub fn client(&self) -> String {
        format!(
            "{}@{}",
            self.client_id,
            self.client_host.trim_start_matches('/')
        )
    }

    /// The member's partitions as text, e.g. `calls: 0,1,2; calls.raw: 3` (`-` for none).
    pub fn assignment_text(&self) -> String {
        let parts: Vec<String> = self
            .assignment
            .iter()
            .filter(|(_, partitions)| !partitions.is_empty())
            .map(|(topic, partitions)| {
                let list: Vec<String> = partitions.iter().map(i32::to_string).collect();
                format!("{topic}: {}", list.join(","))
            })
            .collect();
        if parts.is_empty() {
            "-".to_string()
        } else {
            parts.join("; ")
        }
    }
}

/// The member holding a partition: its member id (unique in the group) and its client id and
/// host (which several members may share, e.g. two instances on one machine with the default
/// client id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionOwner {
    pub member_id: String,
    pub client_id: String,
    pub host: String,
}

/// What the group coordinator says about a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupDescription {
    pub group: String,
    /// `Empty`, `Stable`, `PreparingRebalance`, `CompletingRebalance`, `Dead` (no such group).
    pub state: String,
    pub members: Vec<GroupMember>,
}

impl GroupDescription {
    /// True when the group has members or is rebalancing: its offsets must not be moved.
    pub fn is_active(&self) -> bool {
        !self.members.is_empty()
            || matches!(
                self.state.as_str(),
                "Stable" | "PreparingRebalance" | "CompletingRebalance"
            )
    }

    /// The member holding `topic`/`partition` (None when no member does, e.g. while the group
    /// rebalances or is empty).
    pub fn owner_of(&self, topic: &str, partition: i32) -> Option<PartitionOwner> {
        self.members
            .iter()
            .find(|m| {
                m.assignment
                    .get(topic)
                    .is_some_and(|parts| parts.contains(&partition))
            })
            .map(|m| PartitionOwner {
                member_id: m.member_id.clone(),
                client_id: m.client_id.clone(),
                host: m.client_host.trim_start_matches('/').to_string(),
            })
    }

    /// `Err(GroupActive)` when the group is active.
    pub fn ensure_inactive(&self) -> Result<(), OpsError> {
        if !self.is_active() {
            return Ok(());
        }
        let member_list = if self.members.is_empty() {
            "none listed yet".to_string()
        } else {
            self.members
                .iter()
                .map(GroupMember::client)
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(OpsError::GroupActive {
            group: self.group.clone(),
            state: self.state.clone(),
            members: self.members.len(),
            member_list,
        })
    }
}

/// Describes `group` with a client that is not a member (a `BaseConsumer` that never
/// subscribes). Blocking: call from a blocking thread.
pub fn describe_group(
    consumer: &BaseConsumer,
    group: &str,
    timeout: Duration,
) -> Result<GroupDescription, OpsError> {
    let list = consumer
        .fetch_group_list(Some(group), timeout)
        .map_err(|e| OpsError::kafka(format!("describing consumer group {group:?}"), e))?;
    let Some(info) = list.groups().iter().find(|g| g.name() == group) else {
        return Ok(GroupDescription {
            group: group.to_string(),
            state: "Dead".to_string(),
            members: Vec::new(),
        });
    };
    let members = info
        .members()
        .iter()
        .map(|m| GroupMember {
            member_id: m.id().to_string(),
            client_id: m.client_id().to_string(),
            client_host: m.client_host().to_string(),
            assignment: m
                .assignment()
                .and_then(decode_consumer_assignment)
                .unwrap_or_default(),
        })
        .collect();
    Ok(GroupDescription {
        group: group.to_string(),
        state: info.state().to_string(),
        members,
    })
}

/// Decodes a classic consumer protocol assignment (`ConsumerProtocolAssignment`, any version:
/// int16 version, then an array of (topic string, int32 partitions array), then user data).
/// `None` when the bytes are not in that format.
pub fn decode_consumer_assignment(bytes: &[u8]) -> Option<BTreeMap<String, Vec<i32>>> {
    let mut reader = ByteReader { bytes, at: 0 };
    let _version = reader.i16()?;
    let topics = reader.i32()?;
    let mut out = BTreeMap::new();
    for _ in 0..usize::try_from(topics).ok()? {
        let name_len = usize::try_from(reader.i16()?).ok()?;
        let name = std::str::from_utf8(reader.take(name_len)?)
            .ok()?
            .to_string();
        let count = usize::try_from(reader.i32()?).ok()?;
        // each partition takes 4 bytes: a count beyond the input is corrupt
        if count > reader.remaining() / 4 {
            return None;
        }
        let mut partitions = Vec::with_capacity(count);
        for _ in 0..count {
            partitions.push(reader.i32()?);
        }
        partitions.sort_unstable();
        out.insert(name, partitions);
    }
    Some(out)
}

struct ByteReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> ByteReader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }

    fn i16(&mut self) -> Option<i16> {
        let b = self.take(2)?;
        Some(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Option<i32> {
        let b = self.take(4)?;
        Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&(topics.len() as i32).to_be_bytes());
        for (name, parts) in topics {
            b.extend_from_slice(&(name.len() as i16).to_be_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&(parts.len() as i32).to_be_bytes());
            for p in *parts {
                b.extend_from_slice(&p.to_be_bytes());
            }
        }
        b.extend_from_slice(&(-1i32).to_be_bytes()); // null user data
        b
    }

    #[test]
    fn decodes_the_consumer_protocol_assignment() {
        let bytes = assignment(&[("calls", &[3, 1]), ("calls.raw", &[0])]);
        let decoded = decode_consumer_assignment(&bytes).unwrap();
        assert_eq!(decoded["calls"], vec![1, 3]);
        assert_eq!(decoded["calls.raw"], vec![0]);
    }

    #[test]
    fn corrupt_assignments_are_none_not_panics() {
        assert_eq!(decode_consumer_assignment(&[0, 1, 0]), None);
        let mut huge = assignment(&[("t", &[1])]);
        huge[2..6].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(decode_consumer_assignment(&huge), None);
        let mut many_parts = assignment(&[("t", &[1])]);
        // partition count of topic "t" (after version, topic count, name len, name)
        many_parts[9..13].copy_from_slice(&1_000_000i32.to_be_bytes());
        assert_eq!(decode_consumer_assignment(&many_parts), None);
    }

    #[test]
    fn active_means_members_or_rebalancing() {
        let mut d = GroupDescription {
            group: "g".into(),
            state: "Empty".into(),
            members: vec![],
        };
        assert!(d.ensure_inactive().is_ok());
        d.state = "PreparingRebalance".into();
        assert!(d.is_active());
        d.state = "Stable".into();
        d.members.push(GroupMember {
            member_id: "m".into(),
            client_id: "rdkafka".into(),
            client_host: "/127.0.0.1".into(),
            assignment: BTreeMap::from([("calls".to_string(), vec![0, 2])]),
        });
        let msg = d.ensure_inactive().unwrap_err().to_string();
        assert!(
            msg.contains("\"g\" is active") && msg.contains("rdkafka@127.0.0.1"),
            "{msg}"
        );
        let owner = d.owner_of("calls", 2).unwrap();
        assert_eq!(
            (
                owner.member_id.as_str(),
                owner.client_id.as_str(),
                owner.host.as_str()
            ),
            ("m", "rdkafka", "127.0.0.1")
        );
        assert_eq!(d.owner_of("calls", 1), None);
        assert_eq!(d.members[0].assignment_text(), "calls: 0,2");
    }
}
