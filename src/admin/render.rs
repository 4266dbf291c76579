//! The admin API's answers as the aligned text tables `petrel streams`
//! prints.
//!
//! The answers are read into types of their own rather than the broker's
//! report types: they describe the JSON a broker sends, which is the
//! contract between the command and a broker that may be of another build.

use serde::Deserialize;

use crate::broker::inspect::{ClientDetail, SessionDetail, SubscriptionView};

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

/// Renders the body of `GET /v1/clients`.
pub fn clients(json: &[u8]) -> Result<String, serde_json::Error> {
    let list: super::clients::ClientList = serde_json::from_slice(json)?;
    if list.clients.is_empty() {
        return Ok(none_of("clients", list.total));
    }
    let shown = list.clients.len();
    let rows = list
        .clients
        .into_iter()
        .map(|c| {
            vec![
                c.client_id,
                state(c.online).into(),
                c.username.unwrap_or_else(|| "-".into()),
                c.subscriptions.to_string(),
                c.queued.to_string(),
                c.inflight.to_string(),
                c.disconnected_at.map_or_else(|| "-".into(), utc),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "CLIENT",
            "STATE",
            "USER",
            "SUBSCRIPTIONS",
            "QUEUED",
            "INFLIGHT",
            "DISCONNECTED",
        ],
        rows,
    );
    out += &more(shown, list.total);
    Ok(out)
}

/// Renders the body of `GET /v1/clients/{id}`.
pub fn client(json: &[u8]) -> Result<String, serde_json::Error> {
    let detail: ClientDetail = serde_json::from_slice(json)?;
    let c = &detail.client;
    let mut out = format!("client {}\n\n", c.client_id);
    out += &fields(&[
        ("state", state(c.online).into()),
        ("user", c.username.clone().unwrap_or_else(|| "-".into())),
        ("queued", c.queued.to_string()),
        ("inflight", c.inflight.to_string()),
        (
            "disconnected",
            c.disconnected_at.map_or_else(|| "-".into(), utc),
        ),
    ]);
    out += "\n";
    out += &subscription_table(detail.subscriptions, false);
    Ok(out)
}

/// Renders the body of `GET /v1/sessions`.
pub fn sessions(json: &[u8]) -> Result<String, serde_json::Error> {
    let list: super::sessions::SessionList = serde_json::from_slice(json)?;
    if list.sessions.is_empty() {
        return Ok(none_of("sessions", list.total));
    }
    let shown = list.sessions.len();
    let rows = list
        .sessions
        .into_iter()
        .map(|s| {
            vec![
                s.client_id,
                state(s.online).into(),
                expiry(s.expiry_secs),
                s.expires_at.map_or_else(|| "-".into(), utc),
                s.subscriptions.to_string(),
                s.queued.to_string(),
                s.inflight.to_string(),
                s.dropped.to_string(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "CLIENT",
            "STATE",
            "EXPIRY",
            "EXPIRES",
            "SUBSCRIPTIONS",
            "QUEUED",
            "INFLIGHT",
            "DROPPED",
        ],
        rows,
    );
    out += &more(shown, list.total);
    Ok(out)
}

/// Renders the body of `GET /v1/sessions/{id}`.
pub fn session(json: &[u8]) -> Result<String, serde_json::Error> {
    let detail: SessionDetail = serde_json::from_slice(json)?;
    let s = &detail.session;
    let mut out = format!("session {}\n\n", s.client_id);
    let mut pairs = vec![
        ("state", state(s.online).to_string()),
        ("user", s.username.clone().unwrap_or_else(|| "-".into())),
        ("expiry", expiry(s.expiry_secs)),
        ("expires", s.expires_at.map_or_else(|| "-".into(), utc)),
        ("queued", s.queued.to_string()),
        ("dropped", s.dropped.to_string()),
        ("awaiting PUBREL", s.awaiting_pubrel.to_string()),
    ];
    if let Some(will) = &detail.will {
        let retained = if will.retain { ", retained" } else { "" };
        pairs.push((
            "will",
            format!(
                "{} (QoS {}{retained}, {} bytes, delay {}s)",
                will.topic, will.qos, will.payload_bytes, will.delay_secs
            ),
        ));
    }
    out += &fields(&pairs);
    out += "\n";
    out += &subscription_table(detail.subscriptions, false);
    if !detail.inflight.is_empty() {
        let rows = detail
            .inflight
            .into_iter()
            .map(|i| {
                vec![
                    i.packet_id.to_string(),
                    i.qos.to_string(),
                    i.awaiting,
                    i.topic,
                ]
            })
            .collect();
        out += "\n";
        out += &table(&["PACKET ID", "QOS", "AWAITING", "TOPIC"], rows);
    }
    Ok(out)
}

/// Renders the body of `GET /v1/subscriptions`.
pub fn subscriptions(json: &[u8]) -> Result<String, serde_json::Error> {
    let list: super::sessions::SubscriptionList = serde_json::from_slice(json)?;
    let (shown, total) = (list.subscriptions.len(), list.total);
    if shown == 0 {
        return Ok(none_of("subscriptions", total));
    }
    Ok(subscription_table(list.subscriptions, true) + &more(shown, total))
}

fn subscription_table(subscriptions: Vec<SubscriptionView>, with_client: bool) -> String {
    if subscriptions.is_empty() {
        return "  no subscriptions\n".into();
    }
    let rows = subscriptions
        .into_iter()
        .map(|s| {
            let mut row = if with_client {
                vec![s.client_id]
            } else {
                Vec::new()
            };
            row.extend([
                s.filter,
                s.qos.to_string(),
                yes_no(s.no_local).into(),
                yes_no(s.retain_as_published).into(),
                s.retain_handling.to_string(),
                s.subscription_id
                    .map_or_else(|| "-".into(), |id| id.to_string()),
            ]);
            row
        })
        .collect();
    let mut headers = if with_client {
        vec!["CLIENT"]
    } else {
        Vec::new()
    };
    headers.extend([
        "FILTER",
        "QOS",
        "NO LOCAL",
        "RETAIN AS PUBLISHED",
        "RETAIN HANDLING",
        "ID",
    ]);
    table(&headers, rows)
}

/// Renders the body of `GET /v1/retained`, payloads cut to a line.
pub fn retained(json: &[u8]) -> Result<String, serde_json::Error> {
    let list: super::retained::RetainedList = serde_json::from_slice(json)?;
    if list.retained.is_empty() {
        return Ok(none_of("retained messages", list.total));
    }
    let shown = list.retained.len();
    let rows = list
        .retained
        .into_iter()
        .map(|m| {
            vec![
                m.topic,
                m.qos.to_string(),
                m.payload_bytes.to_string(),
                m.expires_at.map_or_else(|| "-".into(), utc),
                one_line(&m.payload, 40, m.payload_truncated),
            ]
        })
        .collect();
    let mut out = table(&["TOPIC", "QOS", "BYTES", "EXPIRES", "PAYLOAD"], rows);
    out += &more(shown, list.total);
    Ok(out)
}

/// Renders the body of `GET /v1/overview`.
pub fn overview(json: &[u8]) -> Result<String, serde_json::Error> {
    let o: super::status::Overview = serde_json::from_slice(json)?;
    let mut out = format!("petrel {}, up {}\n\n", o.version, duration(o.uptime_secs));
    out += &fields(&[
        ("connections", o.connections.to_string()),
        (
            "sessions",
            format!(
                "{} online, {} offline",
                o.sessions_online, o.sessions_offline
            ),
        ),
        ("subscriptions", o.subscriptions.to_string()),
        ("retained", o.retained.to_string()),
        (
            "messages",
            format!(
                "{} received, {} sent, {} dropped",
                o.messages_received, o.messages_sent, o.messages_dropped
            ),
        ),
    ]);
    if !o.top_subscriptions.is_empty() {
        let rows = o
            .top_subscriptions
            .into_iter()
            .map(|f| vec![f.filter, f.subscribers.to_string()])
            .collect();
        out += "\n";
        out += &table(&["FILTER", "SUBSCRIBERS"], rows);
    }
    let rows: Vec<Vec<String>> = o
        .streams
        .iter()
        .flat_map(|stream| {
            stream.groups.iter().map(|g| {
                vec![
                    stream.name.clone(),
                    g.name.clone(),
                    g.members.to_string(),
                    g.lag.to_string(),
                    g.inflight.to_string(),
                    g.dead_letters.to_string(),
                ]
            })
        })
        .collect();
    if !rows.is_empty() {
        out += "\n";
        out += &table(
            &[
                "STREAM",
                "GROUP",
                "MEMBERS",
                "LAG",
                "INFLIGHT",
                "DEAD LETTERS",
            ],
            rows,
        );
    }
    if !o.bridges.is_empty() {
        let rows = o
            .bridges
            .into_iter()
            .map(|b| {
                vec![
                    b.name,
                    link(b.connected).into(),
                    b.queued_messages.to_string(),
                    b.sent.to_string(),
                    b.received.to_string(),
                    b.dropped.to_string(),
                ]
            })
            .collect();
        out += "\n";
        out += &table(
            &["BRIDGE", "STATE", "QUEUED", "SENT", "RECEIVED", "DROPPED"],
            rows,
        );
    }
    Ok(out)
}

/// A bridge as `GET /v1/bridges` sends it.
#[derive(Deserialize)]
struct Bridge {
    name: String,
    connected: bool,
    address: Option<String>,
    last_error: Option<String>,
    reconnects: u64,
    queued_messages: u64,
    queued_bytes: u64,
    sent: u64,
    received: u64,
    dropped: u64,
}

#[derive(Deserialize)]
struct BridgeList {
    bridges: Vec<Bridge>,
}

/// Renders the body of `GET /v1/bridges`.
pub fn bridges(json: &[u8]) -> Result<String, serde_json::Error> {
    let list: BridgeList = serde_json::from_slice(json)?;
    if list.bridges.is_empty() {
        return Ok("no bridges configured\n".into());
    }
    let rows = list
        .bridges
        .into_iter()
        .map(|b| {
            vec![
                b.name,
                link(b.connected).into(),
                b.address.unwrap_or_else(|| "-".into()),
                b.reconnects.to_string(),
                b.queued_messages.to_string(),
                b.queued_bytes.to_string(),
                b.sent.to_string(),
                b.received.to_string(),
                b.dropped.to_string(),
                b.last_error
                    .map_or_else(|| "-".into(), |error| one_line(&error, 80, false)),
            ]
        })
        .collect();
    Ok(table(
        &[
            "BRIDGE",
            "STATE",
            "ADDRESS",
            "RECONNECTS",
            "QUEUED",
            "QUEUED BYTES",
            "SENT",
            "RECEIVED",
            "DROPPED",
            "LAST ERROR",
        ],
        rows,
    ))
}

/// Renders the body of `GET /v1/bridges/{name}`.
pub fn bridge(json: &[u8]) -> Result<String, serde_json::Error> {
    let b: Bridge = serde_json::from_slice(json)?;
    let mut out = format!("bridge {}\n\n", b.name);
    out += &fields(&[
        ("state", link(b.connected).into()),
        ("address", b.address.unwrap_or_else(|| "-".into())),
        ("last error", b.last_error.unwrap_or_else(|| "-".into())),
        ("reconnects", b.reconnects.to_string()),
        (
            "queued",
            format!("{} messages, {} bytes", b.queued_messages, b.queued_bytes),
        ),
        (
            "messages",
            format!(
                "{} sent, {} received, {} dropped",
                b.sent, b.received, b.dropped
            ),
        ),
    ]);
    Ok(out)
}

/// Renders the answer of `POST /v1/clients/{id}/disconnect`.
pub fn disconnected(json: &[u8]) -> Result<String, serde_json::Error> {
    let done: super::clients::Disconnected = serde_json::from_slice(json)?;
    Ok(format!("disconnected {}\n", done.client_id))
}

/// Renders the answer of `DELETE /v1/sessions/{id}`.
pub fn session_deleted(json: &[u8]) -> Result<String, serde_json::Error> {
    let done: super::sessions::Deleted = serde_json::from_slice(json)?;
    Ok(format!("deleted the session of {}\n", done.client_id))
}

/// Renders the answer of `DELETE /v1/retained?topic=`.
pub fn retained_deleted(json: &[u8]) -> Result<String, serde_json::Error> {
    let done: super::retained::RetainedDeleted = serde_json::from_slice(json)?;
    Ok(format!("deleted the retained message on {}\n", done.topic))
}

fn state(online: bool) -> &'static str {
    if online { "online" } else { "offline" }
}

fn link(connected: bool) -> &'static str {
    if connected {
        "connected"
    } else {
        "disconnected"
    }
}

fn yes_no(flag: bool) -> &'static str {
    if flag { "yes" } else { "no" }
}

fn expiry(secs: Option<u32>) -> String {
    match secs {
        None => "never".into(),
        Some(0) => "with connection".into(),
        Some(secs) => duration(u64::from(secs)),
    }
}

/// `90061` -> `1d1h1m1s`; units that are zero are left out.
fn duration(secs: u64) -> String {
    let parts = [
        (secs / 86_400, "d"),
        (secs / 3600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
    ];
    let text: String = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if text.is_empty() { "0s".into() } else { text }
}

/// Unix milliseconds as a UTC time, `2024-03-01 12:00:05Z`.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Text cut to `chars` characters on one line, marked when cut here or
/// before.
fn one_line(text: &str, chars: usize, cut: bool) -> String {
    let mut line: String = text.chars().take(chars).collect();
    if cut || text.chars().count() > chars {
        line.push('…');
    }
    line.replace(['\n', '\r'], " ")
}

/// `key  value` lines with the values aligned.
fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(key, value)| format!("  {key:<width$}  {value}\n"))
        .collect()
}

fn none_of(what: &str, total: usize) -> String {
    if total == 0 {
        format!("no {what}\n")
    } else {
        format!("none of the {total} {what} shown (--limit)\n")
    }
}

/// The line under a page cut short by its limit.
fn more(shown: usize, total: usize) -> String {
    if shown < total {
        format!("  ({shown} of {total} shown; --limit shows more)\n")
    } else {
        String::new()
    }
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
    fn clients_render_as_a_table_noting_a_page_cut_short() {
        use crate::admin::clients::ClientList;
        use crate::broker::inspect::ClientView;
        let list = ClientList {
            total: 3,
            clients: vec![
                ClientView {
                    client_id: "dev/1".into(),
                    online: true,
                    username: Some("alice".into()),
                    disconnected_at: None,
                    subscriptions: 2,
                    queued: 0,
                    inflight: 1,
                },
                ClientView {
                    client_id: "dev/2".into(),
                    online: false,
                    username: None,
                    disconnected_at: Some(1_709_294_405_000),
                    subscriptions: 0,
                    queued: 12,
                    inflight: 0,
                },
            ],
        };
        let text = clients(&serde_json::to_vec(&list).unwrap()).unwrap();
        let expected = "  CLIENT  STATE    USER   SUBSCRIPTIONS  QUEUED  INFLIGHT  DISCONNECTED
  dev/1   online   alice  2              0       1         -
  dev/2   offline  -      0              12      0         2024-03-01 12:00:05Z
  (2 of 3 shown; --limit shows more)
";
        assert_eq!(text, expected);
        assert_eq!(
            clients(br#"{"total":0,"clients":[]}"#).unwrap(),
            "no clients\n"
        );
    }

    #[test]
    fn times_and_durations_read_as_people_write_them() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_825_600_000), "2000-02-29 12:00:00Z");
        assert_eq!(utc(4_102_444_799_999), "2099-12-31 23:59:59Z");
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(3600), "1h");
        assert_eq!(duration(90_061), "1d1h1m1s");
        assert_eq!(expiry(None), "never");
        assert_eq!(expiry(Some(0)), "with connection");
    }

    #[test]
    fn bridges_render_as_a_table_and_one_bridge_as_fields() {
        use crate::bridge::BridgeReport;
        let up = BridgeReport {
            name: "uplink".into(),
            connected: true,
            address: Some("10.0.0.2:1883".into()),
            last_error: None,
            reconnects: 2,
            queued_messages: 3,
            queued_bytes: 120,
            sent: 40,
            received: 7,
            dropped: 1,
        };
        let down = BridgeReport {
            name: "backup".into(),
            connected: false,
            address: None,
            last_error: Some("connection refused\n(os error 111)".into()),
            reconnects: 0,
            queued_messages: 0,
            queued_bytes: 0,
            sent: 0,
            received: 0,
            dropped: 0,
        };
        // What the broker sends, from its own types.
        let list = crate::admin::bridges::BridgeList {
            bridges: vec![up.clone(), down],
        };
        let text = bridges(&serde_json::to_vec(&list).unwrap()).unwrap();
        let expected = "  BRIDGE  STATE         ADDRESS        RECONNECTS  QUEUED  QUEUED BYTES  SENT  RECEIVED  DROPPED  LAST ERROR
  uplink  connected     10.0.0.2:1883  2           3       120           40    7         1        -
  backup  disconnected  -              0           0       0             0     0         0        connection refused (os error 111)
";
        assert_eq!(text, expected);
        assert_eq!(
            bridges(br#"{"bridges":[]}"#).unwrap(),
            "no bridges configured\n"
        );
        let one = bridge(&serde_json::to_vec(&up).unwrap()).unwrap();
        assert!(one.starts_with("bridge uplink\n\n"), "{one}");
        assert!(
            one.contains("  queued      3 messages, 120 bytes\n"),
            "{one}"
        );
    }

    #[test]
    fn json_of_another_shape_is_an_error() {
        assert!(streams(br#"{"error":"nope"}"#).is_err());
    }
}
