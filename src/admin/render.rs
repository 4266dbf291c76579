//! The admin API's answers as the aligned text tables `petrel streams`
//! prints.
//!
//! The answers are read into types of their own rather than the broker's
//! report types: they describe the JSON a broker sends, which is the
//! contract between the command and a broker that may be of another build.

use serde::Deserialize;

#[derive(Deserialize)]
struct Stream {
    name: String,
    filters: Vec<String>,
    key: String,
    partitions: Vec<Partition>,
    groups: Vec<Group>,
}

#[derive(Deserialize)]
struct Partition {
    partition: u32,
    start: u64,
    end: u64,
}

#[derive(Deserialize)]
struct Group {
    name: String,
    members: Vec<String>,
    partitions: Vec<GroupPartition>,
    skipped: u64,
    #[serde(default)]
    dead_letters: usize,
}

#[derive(Deserialize)]
struct GroupPartition {
    partition: u32,
    committed: u64,
    lag: u64,
    inflight: usize,
    #[serde(default)]
    retrying: usize,
    owner: Option<String>,
}

/// Renders the body of `GET /v1/streams`: per stream a header line, its
/// partitions, then its groups' partitions and members.
pub fn streams(json: &[u8]) -> Result<String, serde_json::Error> {
    let streams: Vec<Stream> = serde_json::from_slice(json)?;
    if streams.is_empty() {
        return Ok("no streams configured\n".into());
    }
    let blocks: Vec<String> = streams.iter().map(stream).collect();
    Ok(blocks.join("\n"))
}

fn stream(stream: &Stream) -> String {
    let mut out = format!(
        "stream {}  filters: {}  key: {}\n\n",
        stream.name,
        stream.filters.join(", "),
        stream.key
    );
    let partitions = stream
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.partition.to_string(),
                p.start.to_string(),
                p.end.to_string(),
            ]
        })
        .collect();
    out += &table(&["PARTITION", "START", "END"], partitions);
    if stream.groups.is_empty() {
        out += "\n  no consumer groups\n";
    }
    for group in &stream.groups {
        let rows = group
            .partitions
            .iter()
            .map(|p| {
                vec![
                    group.name.clone(),
                    p.partition.to_string(),
                    p.committed.to_string(),
                    p.lag.to_string(),
                    p.inflight.to_string(),
                    p.retrying.to_string(),
                    p.owner.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        out += "\n";
        out += &table(
            &[
                "GROUP",
                "PARTITION",
                "COMMITTED",
                "LAG",
                "INFLIGHT",
                "RETRYING",
                "OWNER",
            ],
            rows,
        );
        let members = match group.members.as_slice() {
            [] => "none".to_string(),
            members => members.join(", "),
        };
        out += &format!("  members of {}: {members}\n", group.name);
        if group.dead_letters > 0 {
            out += &format!(
                "  {} dead letters (petrel dlq {} {})\n",
                group.dead_letters, group.name, stream.name
            );
        }
        if group.skipped > 0 {
            out += &format!(
                "  {} messages lost to retention before {} read them\n",
                group.skipped, group.name
            );
        }
    }
    out
}

/// Left-aligned columns two spaces apart, indented under the stream's line.
/// Renders the body of `GET /v1/dlq`: the groups with dead letters.
pub fn dead_letter_queues(json: &[u8]) -> Result<String, serde_json::Error> {
    let queues: Vec<super::dlq::DeadLetterQueue> = serde_json::from_slice(json)?;
    if queues.is_empty() {
        return Ok("no dead letters\n".into());
    }
    let rows = queues
        .into_iter()
        .map(|q| vec![q.group, q.stream, q.count.to_string()])
        .collect();
    Ok(table(&["GROUP", "STREAM", "DEAD LETTERS"], rows))
}

/// Renders the body of `GET /v1/dlq/{group}/{stream}`: its dead letters,
/// payloads cut to a line.
pub fn dead_letters(json: &[u8]) -> Result<String, serde_json::Error> {
    let letters: Vec<super::dlq::DeadLetter> = serde_json::from_slice(json)?;
    if letters.is_empty() {
        return Ok("no dead letters\n".into());
    }
    let rows = letters
        .into_iter()
        .map(|letter| {
            let mut payload: String = letter.payload.chars().take(40).collect();
            if letter.payload.chars().count() > 40 {
                payload.push('…');
            }
            vec![
                letter.partition.to_string(),
                letter.offset.to_string(),
                letter.key,
                letter.attempts.to_string(),
                letter.reason,
                letter.topic,
                payload.replace('\n', " "),
            ]
        })
        .collect();
    Ok(table(
        &[
            "PARTITION",
            "OFFSET",
            "KEY",
            "ATTEMPTS",
            "REASON",
            "TOPIC",
            "PAYLOAD",
        ],
        rows,
    ))
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("  {}\n", padded.join("  ").trim_end())
    };
    let mut out = line(headers.to_vec());
    for row in &rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{GroupPartitionReport, GroupReport, PartitionReport, StreamReport};

    /// What the broker sends, serialised from its own report types, so the
    /// two sides cannot drift apart unnoticed.
    fn sent() -> Vec<u8> {
        let report = StreamReport {
            name: "orders".into(),
            filters: vec!["orders/#".into()],
            key: "topic:1".into(),
            partitions: vec![
                PartitionReport {
                    partition: 0,
                    start: 0,
                    end: 0,
                },
                PartitionReport {
                    partition: 1,
                    start: 1024,
                    end: 20_480,
                },
            ],
            groups: vec![GroupReport {
                name: "billing".into(),
                members: vec!["worker-1".into()],
                partitions: vec![
                    GroupPartitionReport {
                        partition: 0,
                        committed: 0,
                        lag: 0,
                        inflight: 0,
                        retrying: 0,
                        owner: None,
                    },
                    GroupPartitionReport {
                        partition: 1,
                        committed: 20_000,
                        lag: 480,
                        inflight: 1,
                        retrying: 2,
                        owner: Some("worker-1".into()),
                    },
                ],
                skipped: 0,
                dead_letters: 0,
            }],
        };
        serde_json::to_vec(&vec![report]).unwrap()
    }

    #[test]
    fn a_stream_renders_as_aligned_partition_and_group_tables() {
        let text = streams(&sent()).unwrap();
        let expected = "\
stream orders  filters: orders/#  key: topic:1

  PARTITION  START  END
  0          0      0
  1          1024   20480

  GROUP    PARTITION  COMMITTED  LAG  INFLIGHT  RETRYING  OWNER
  billing  0          0          0    0         0         -
  billing  1          20000      480  1         2         worker-1
  members of billing: worker-1
";
        assert_eq!(text, expected);
    }

    #[test]
    fn no_streams_and_no_groups_are_said_so() {
        assert_eq!(streams(b"[]").unwrap(), "no streams configured\n");
        let json = r#"[{"name":"s","filters":["a/#"],"key":"client_id",
            "partitions":[{"partition":0,"start":0,"end":2}],"groups":[]}]"#;
        assert!(
            streams(json.as_bytes())
                .unwrap()
                .ends_with("\n  no consumer groups\n")
        );
    }

    #[test]
    fn json_of_another_shape_is_an_error() {
        assert!(streams(br#"{"error":"nope"}"#).is_err());
    }
}
