//! Streams and their consumer groups as `petrel streams` and the admin API
//! show them.

use serde::Serialize;

use super::BrokerState;

/// A stream as `petrel streams` and the admin API show it.
#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    pub name: String,
    pub filters: Vec<String>,
    pub key: String,
    pub partitions: Vec<PartitionReport>,
    pub groups: Vec<GroupReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    pub partition: u32,
    /// The first offset retention kept.
    pub start: u64,
    /// The next offset appended.
    pub end: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    pub name: String,
    /// Connected members' client ids, sorted.
    pub members: Vec<String>,
    pub partitions: Vec<GroupPartitionReport>,
    /// Messages lost to retention before the group read them.
    pub skipped: u64,
    /// Messages the group gave up on, kept in its dead-letter queue.
    pub dead_letters: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupPartitionReport {
    pub partition: u32,
    /// The next offset the group reads.
    pub committed: u64,
    /// Offsets appended and not yet committed.
    pub lag: u64,
    /// Handed out and not yet settled.
    pub inflight: usize,
    /// Failed messages waiting for their retry (`ordering = "relaxed"`).
    pub retrying: usize,
    pub owner: Option<String>,
}

impl BrokerState {
    /// Every stream with its partitions and groups, groups by name.
    pub fn stream_reports(&self) -> Vec<StreamReport> {
        self.streams
            .iter()
            .enumerate()
            .map(|(index, _)| self.report_stream(index))
            .collect()
    }

    /// The stream called `name`, if it is configured.
    pub fn stream_report(&self, name: &str) -> Option<StreamReport> {
        let (index, _) = self.streams.find(name)?;
        Some(self.report_stream(index))
    }

    fn report_stream(&self, index: usize) -> StreamReport {
        let stream = self.streams.get(index);
        let partitions: Vec<PartitionReport> = (0..stream.partition_count())
            .map(|partition| PartitionReport {
                partition,
                start: stream.bounds(partition).start,
                end: stream.end(partition),
            })
            .collect();
        let mut groups: Vec<GroupReport> = self
            .consumers
            .of_stream(index)
            .iter()
            .map(|cell| {
                let state = cell.lock();
                let group = &state.group;
                // By id, the order partitions are dealt in.
                let mut members: Vec<String> =
                    group.members().map(|m| m.client_id.to_string()).collect();
                members.sort_unstable();
                GroupReport {
                    name: group.name.to_string(),
                    members,
                    skipped: group.skipped(),
                    dead_letters: self.dead_letters_of(&group.name, index),
                    partitions: group
                        .report()
                        .into_iter()
                        .map(|cursor| GroupPartitionReport {
                            partition: cursor.partition,
                            committed: cursor.committed,
                            lag: partitions
                                .get(cursor.partition as usize)
                                .map_or(0, |p| p.end.saturating_sub(cursor.committed)),
                            inflight: cursor.inflight,
                            retrying: cursor.retrying,
                            owner: cursor.owner.map(|o| o.to_string()),
                        })
                        .collect(),
                }
            })
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        StreamReport {
            name: stream.name.to_string(),
            filters: stream.spec.filters.clone(),
            key: stream.spec.key.to_string(),
            partitions,
            groups,
        }
    }
}
