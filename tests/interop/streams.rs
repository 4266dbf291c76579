//! Real clients as members of stream consumer groups
//! (`$share/{group}/$stream/{stream}`, and `$stream/{stream}` for a reader
//! of its own), each test on a petrel of its own with one stream, fed 100
//! keys at a time by rumqttc (see `stream_group.rs`).

use super::{
    MOSQUITTO_V5, MOSQUITTO_V311, MQTTJS_V5, MQTTJS_V311, PAHO_V5, PAHO_V311, RUMQTTC_V5,
    RUMQTTC_V311,
};
use crate::clients::{Client, Ctx, PublishProperties, SubscribeExtras};
use crate::common;
use crate::stream_group::{
    Feed, KEYS, STREAM, check_group, group_filter, interop_stream, join, owners, read_until,
};

const ROLES: [&str; 4] = ["a", "b", "c", "d"];

/// 2 to 4 members (`clients`, in join order) subscribed at `qos` before
/// anything is published read three rounds: every message once, each key
/// in order, each at the member that owns its partition.
async fn group_reads_every_message_once_in_key_order(ctx: &Ctx, clients: &[Client], qos: u8) {
    let filter = group_filter(ctx, "g");
    let mut members = Vec::new();
    for (client, role) in clients.iter().zip(ROLES) {
        members.push(join(ctx, *client, role, &filter, qos, SubscribeExtras::default()).await);
    }
    let mut feed = Feed::new(ctx, KEYS);
    let read = feed.publish(ctx, 0..3).await;
    let everyone: Vec<usize> = (0..members.len()).collect();
    let wanted = &feed.published[read.clone()];
    read_until(&mut members, "every message", |ms| {
        feed.all_seen(ms, &everyone, wanted)
    })
    .await;
    let labels: Vec<String> = clients.iter().map(Client::label).collect();
    let scenario = format!("group of {labels:?} at QoS {qos}, {KEYS} keys x 3 messages");
    check_group(&feed, &mut members, &[&everyone], read, qos, &scenario);
}

/// A reader of its own (`$stream/{stream}`) gets the messages as published
/// by mosquitto_pub v5, properties and all, plus (v5 only) their place in
/// the stream; a 3.1.1 reader gets the plain messages.
async fn reader_of_its_own_gets_messages_and_their_place(ctx: &Ctx, reader: Client) {
    let filter = format!("$stream/{STREAM}");
    let extras = SubscribeExtras::default();
    let mut members = vec![join(ctx, reader, "a", &filter, 1, extras).await];
    let mut feed = Feed::new(ctx, 6);
    let properties = PublishProperties {
        user: vec![
            ("origin".into(), "mosquitto_pub".into()),
            ("trace".into(), "t-1".into()),
        ],
        content_type: "text/plain".into(),
        response_topic: ctx.topic("reply"),
        correlation_data: "corr-1".into(),
        payload_format_indicator: 1,
        message_expiry_secs: 300,
    };
    let read = feed
        .publish_with_properties(ctx, MOSQUITTO_V5, 0..2, properties)
        .await;
    let wanted = &feed.published[read.clone()];
    read_until(&mut members, "every message", |ms| {
        feed.all_seen(ms, &[0], wanted)
    })
    .await;
    let scenario = format!("{} reading $stream/{STREAM} at QoS 1", reader.label());
    check_group(&feed, &mut members, &[&[0]], read, 1, &scenario);
}

/// Rebalancing loses nothing: `leaving` leaves normally halfway through
/// its share; `killed`, frozen with its deliveries unacknowledged, sees
/// `joining` take half its partitions, then is killed with SIGKILL (or its
/// task aborted). Everything published reaches the group, each key in order
/// across the hand-overs; only a delivery unacknowledged at a hand-over
/// comes twice.
async fn group_loses_nothing_as_members_join_leave_and_die(
    ctx: &Ctx,
    leaving: Client,
    killed: Client,
    joining: Client,
) {
    const LEAVE_AFTER: usize = 20;
    let (a, b, c) = (0, 1, 2);
    let filter = group_filter(ctx, "g");
    let leaves = SubscribeExtras {
        exit_after_messages: Some(LEAVE_AFTER),
        ..SubscribeExtras::default()
    };
    let mut members = vec![
        join(ctx, leaving, "a", &filter, 1, leaves).await,
        join(ctx, killed, "b", &filter, 1, SubscribeExtras::default()).await,
    ];
    let mut feed = Feed::new(ctx, KEYS);

    let first = feed.publish(ctx, 0..2).await;
    let share_of_a = owners(&members, &[&[a, b]]);
    let for_a = feed.published[first.clone()]
        .iter()
        .filter(|&&(key, _)| share_of_a[feed.partition(key) as usize] == [a])
        .count();
    assert!(
        for_a > LEAVE_AFTER,
        "a must leave with messages of its partitions still unread ({for_a} are for it)"
    );
    // The rest of a's share can only reach b once petrel has seen a leave.
    let wanted = &feed.published[first.clone()];
    let what = format!("a to leave after {LEAVE_AFTER} messages and b to read the rest");
    read_until(&mut members, &what, |ms| {
        ms[a].ended && feed.all_seen(ms, &[a, b], wanted)
    })
    .await;
    members[a].proc.wait_for_exit().await;

    members[b].proc.freeze();
    let second = feed.publish(ctx, 2..4).await;
    members.push(join(ctx, joining, "c", &filter, 1, SubscribeExtras::default()).await);
    // b, frozen, holds the second round; c's half of it comes to c.
    let share_of_c = owners(&members, &[&[b, c]]);
    let for_c: Vec<(usize, u32)> = feed.published[second]
        .iter()
        .copied()
        .filter(|&(key, _)| share_of_c[feed.partition(key) as usize] == [c])
        .collect();
    read_until(
        &mut members,
        "c to read its half of the second round",
        |ms| feed.all_seen(ms, &[c], &for_c),
    )
    .await;

    members[b].proc.kill().await;
    feed.publish(ctx, 4..5).await;
    let everything = feed.published.clone();
    read_until(&mut members, "every message, and b's last lines", |ms| {
        ms[b].ended && feed.all_seen(ms, &[a, b, c], &everything)
    })
    .await;

    let stages: [&[usize]; 4] = [&[a, b], &[b], &[b, c], &[c]];
    let scenario = format!(
        "{} left after {LEAVE_AFTER} messages, {} froze, {} joined, then {1} was killed",
        leaving.label(),
        killed.label(),
        joining.label()
    );
    let all = 0..feed.published.len();
    check_group(&feed, &mut members, &stages, all, 1, &scenario);
}

/// Two groups of two read the same three rounds: each gets everything.
async fn two_groups_each_read_every_message(ctx: &Ctx, first: [Client; 2], second: [Client; 2]) {
    let one = group_filter(ctx, "one");
    let two = group_filter(ctx, "two");
    let mut members = Vec::new();
    let joins = [
        (first[0], &one),
        (first[1], &one),
        (second[0], &two),
        (second[1], &two),
    ];
    for ((client, filter), role) in joins.into_iter().zip(ROLES) {
        members.push(join(ctx, client, role, filter, 1, SubscribeExtras::default()).await);
    }
    let mut feed = Feed::new(ctx, KEYS);
    let read = feed.publish(ctx, 0..3).await;
    let wanted = &feed.published[read.clone()];
    read_until(&mut members, "every message in both groups", |ms| {
        feed.all_seen(ms, &[0, 1], wanted) && feed.all_seen(ms, &[2, 3], wanted)
    })
    .await;
    for group in [[0, 1], [2, 3]] {
        let labels: Vec<String> = group.iter().map(|&i| members[i].client.label()).collect();
        let scenario = format!("group {labels:?}, next to another");
        check_group(&feed, &mut members, &[&group], read.clone(), 1, &scenario);
    }
}

/// A new group starts at the stream's end (`start = "latest"`), unless its
/// SUBSCRIBE carries the v5 user property `stream-offset: earliest`: a
/// group joined that way reads what was published before it existed, a
/// group joined without it only what came after.
async fn stream_offset_earliest_reads_what_came_before_the_group(ctx: &Ctx, client: Client) {
    let mut feed = Feed::new(ctx, KEYS);
    let before = feed.publish(ctx, 0..2).await;
    let earliest = SubscribeExtras {
        user_properties: vec![("stream-offset".into(), "earliest".into())],
        ..SubscribeExtras::default()
    };
    let filter = group_filter(ctx, "early");
    let mut members = vec![join(ctx, client, "a", &filter, 1, earliest).await];
    let wanted = &feed.published[before.clone()];
    read_until(&mut members, "what was published before", |ms| {
        feed.all_seen(ms, &[0], wanted)
    })
    .await;

    let filter = group_filter(ctx, "late");
    members.push(join(ctx, client, "b", &filter, 1, SubscribeExtras::default()).await);
    let after = feed.publish(ctx, 2..3).await;
    let wanted = &feed.published[after.clone()];
    let everything = &feed.published[..];
    read_until(
        &mut members,
        "every message at a, the last round at b",
        |ms| feed.all_seen(ms, &[0], everything) && feed.all_seen(ms, &[1], wanted),
    )
    .await;
    let label = client.label();
    let scenario = format!("{label} joined with stream-offset earliest");
    let all = 0..feed.published.len();
    check_group(&feed, &mut members, &[&[0]], all, 1, &scenario);
    let scenario = format!("{label} joined a new group without stream-offset");
    check_group(&feed, &mut members, &[&[1]], after, 1, &scenario);
}

/// MQTT.js refuses its first delivery with PUBACK 0x80: the same message
/// comes again after the stream's first backoff step, marked as attempt 2,
/// before the key's next message.
async fn a_refused_message_comes_again_with_its_attempt_before_the_next(ctx: &Ctx, client: Client) {
    let filter = group_filter(ctx, "nack");
    let extras = SubscribeExtras {
        refuse_first: 1,
        ..SubscribeExtras::default()
    };
    let member = join(ctx, client, "a", &filter, 1, extras).await;
    let mut proc = member.proc;
    let mut feed = Feed::new(ctx, 1);
    feed.publish(ctx, 0..2).await;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let deliveries = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| {
                l.starts_with("REFUSED ") || l.starts_with("MSG ") || l.starts_with("PROPS ")
            })
            .cloned()
            .collect()
    };
    while deliveries(proc.lines())
        .iter()
        .filter(|l| l.starts_with("MSG "))
        .count()
        < 2
    {
        match proc.read_line(deadline).await {
            crate::process::Read::Line => {}
            _ => panic!(
                "the client ended or went quiet before two messages: {}",
                proc.report()
            ),
        }
    }
    let seen = deliveries(proc.lines());
    let payloads: Vec<&str> = seen
        .iter()
        .filter(|l| !l.starts_with("PROPS "))
        .map(|l| l.rsplit(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(payloads, ["k00/0", "k00/0", "k00/1"], "{seen:#?}");
    assert!(
        seen[0].starts_with("PROPS ") && !seen[0].contains("attempt:"),
        "{seen:#?}"
    );
    assert!(seen[1].starts_with("REFUSED "), "{seen:#?}");
    assert!(
        seen[2].contains("attempt:2") && seen[2].contains("offset:0"),
        "{seen:#?}"
    );
    assert!(seen[3].starts_with("MSG "), "{seen:#?}");
    assert!(!seen[4].contains("attempt:"), "{seen:#?}");
}

macro_rules! stream_tests {
    ($($name:ident: $scenario:ident($($arg:expr),*);)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let broker = common::start_broker_with(|settings| {
                settings.streams = vec![interop_stream()];
            })
            .await;
            let ctx = Ctx::new(broker.addr, stringify!($name));
            $scenario(&ctx, $($arg),*).await;
        }
    )*};
}

stream_tests! {
    mosquitto_clients_v311_stream_group_of_three_reads_every_message_once_in_key_order:
        group_reads_every_message_once_in_key_order(&[MOSQUITTO_V311; 3], 1);
    mosquitto_clients_v5_stream_group_of_three_reads_every_message_once_in_key_order:
        group_reads_every_message_once_in_key_order(&[MOSQUITTO_V5; 3], 1);
    paho_v311_stream_group_of_three_reads_every_message_once_in_key_order:
        group_reads_every_message_once_in_key_order(&[PAHO_V311; 3], 1);
    paho_v5_stream_group_of_three_reads_every_message_once_in_key_order:
        group_reads_every_message_once_in_key_order(&[PAHO_V5; 3], 1);
    mqttjs_v311_stream_group_of_three_reads_every_message_once_in_key_order:
        group_reads_every_message_once_in_key_order(&[MQTTJS_V311; 3], 1);
    mqttjs_v5_stream_group_of_three_reads_every_message_once_in_key_order:
        group_reads_every_message_once_in_key_order(&[MQTTJS_V5; 3], 1);
    rumqttc_v311_stream_group_of_three_reads_every_message_once_in_key_order:
        group_reads_every_message_once_in_key_order(&[RUMQTTC_V311; 3], 1);
    rumqttc_v5_stream_group_of_three_reads_every_message_once_in_key_order:
        group_reads_every_message_once_in_key_order(&[RUMQTTC_V5; 3], 1);
    mixed_clients_stream_group_of_four_reads_every_message_once_in_key_order:
        group_reads_every_message_once_in_key_order(
            &[PAHO_V311, MQTTJS_V5, MOSQUITTO_V5, RUMQTTC_V311], 1);
    mosquitto_clients_v5_stream_group_of_two_at_qos0_reads_every_message_once_in_key_order:
        group_reads_every_message_once_in_key_order(&[MOSQUITTO_V5; 2], 0);
    paho_v5_stream_group_of_two_at_qos2_reads_every_message_once_in_key_order:
        group_reads_every_message_once_in_key_order(&[PAHO_V5; 2], 2);
    mqttjs_v311_stream_group_of_two_at_qos2_reads_every_message_once_in_key_order:
        group_reads_every_message_once_in_key_order(&[MQTTJS_V311; 2], 2);
    rumqttc_v5_stream_group_of_two_at_qos2_reads_every_message_once_in_key_order:
        group_reads_every_message_once_in_key_order(&[RUMQTTC_V5; 2], 2);
    mosquitto_clients_v311_stream_group_of_two_at_qos2_reads_every_message_once_in_key_order:
        group_reads_every_message_once_in_key_order(&[MOSQUITTO_V311; 2], 2);
    paho_v311_stream_group_of_two_at_qos0_reads_every_message_once_in_key_order:
        group_reads_every_message_once_in_key_order(&[PAHO_V311; 2], 0);
    mqttjs_v5_stream_group_of_two_at_qos0_reads_every_message_once_in_key_order:
        group_reads_every_message_once_in_key_order(&[MQTTJS_V5; 2], 0);
    rumqttc_v311_stream_group_of_two_at_qos0_reads_every_message_once_in_key_order:
        group_reads_every_message_once_in_key_order(&[RUMQTTC_V311; 2], 0);

    mosquitto_clients_v311_stream_reader_gets_plain_messages:
        reader_of_its_own_gets_messages_and_their_place(MOSQUITTO_V311);
    mosquitto_clients_v5_stream_reader_gets_properties_and_stream_partition_offset_key:
        reader_of_its_own_gets_messages_and_their_place(MOSQUITTO_V5);
    paho_v311_stream_reader_gets_plain_messages:
        reader_of_its_own_gets_messages_and_their_place(PAHO_V311);
    paho_v5_stream_reader_gets_properties_and_stream_partition_offset_key:
        reader_of_its_own_gets_messages_and_their_place(PAHO_V5);
    mqttjs_v311_stream_reader_gets_plain_messages:
        reader_of_its_own_gets_messages_and_their_place(MQTTJS_V311);
    mqttjs_v5_stream_reader_gets_properties_and_stream_partition_offset_key:
        reader_of_its_own_gets_messages_and_their_place(MQTTJS_V5);
    rumqttc_v311_stream_reader_gets_plain_messages:
        reader_of_its_own_gets_messages_and_their_place(RUMQTTC_V311);
    rumqttc_v5_stream_reader_gets_properties_and_stream_partition_offset_key:
        reader_of_its_own_gets_messages_and_their_place(RUMQTTC_V5);

    mosquitto_clients_v311_stream_group_loses_nothing_as_members_join_leave_and_die:
        group_loses_nothing_as_members_join_leave_and_die(
            MOSQUITTO_V311, MOSQUITTO_V311, MOSQUITTO_V311);
    mosquitto_clients_v5_stream_group_loses_nothing_as_members_join_leave_and_die:
        group_loses_nothing_as_members_join_leave_and_die(MOSQUITTO_V5, MOSQUITTO_V5, MOSQUITTO_V5);
    paho_v311_stream_group_loses_nothing_as_members_join_leave_and_die:
        group_loses_nothing_as_members_join_leave_and_die(PAHO_V311, PAHO_V311, PAHO_V311);
    paho_v5_stream_group_loses_nothing_as_members_join_leave_and_die:
        group_loses_nothing_as_members_join_leave_and_die(PAHO_V5, PAHO_V5, PAHO_V5);
    mqttjs_v311_stream_group_loses_nothing_as_members_join_leave_and_die:
        group_loses_nothing_as_members_join_leave_and_die(MQTTJS_V311, MQTTJS_V311, MQTTJS_V311);
    mqttjs_v5_stream_group_loses_nothing_as_members_join_leave_and_die:
        group_loses_nothing_as_members_join_leave_and_die(MQTTJS_V5, MQTTJS_V5, MQTTJS_V5);
    rumqttc_v311_stream_group_loses_nothing_as_members_join_leave_and_die:
        group_loses_nothing_as_members_join_leave_and_die(
            RUMQTTC_V311, RUMQTTC_V311, RUMQTTC_V311);
    rumqttc_v5_stream_group_loses_nothing_as_members_join_leave_and_die:
        group_loses_nothing_as_members_join_leave_and_die(RUMQTTC_V5, RUMQTTC_V5, RUMQTTC_V5);
    mixed_clients_stream_group_loses_nothing_as_members_join_leave_and_die:
        group_loses_nothing_as_members_join_leave_and_die(MQTTJS_V5, PAHO_V311, MOSQUITTO_V5);

    mosquitto_clients_v311_two_stream_groups_each_read_every_message:
        two_groups_each_read_every_message([MOSQUITTO_V311; 2], [MOSQUITTO_V311; 2]);
    mosquitto_clients_v5_two_stream_groups_each_read_every_message:
        two_groups_each_read_every_message([MOSQUITTO_V5; 2], [MOSQUITTO_V5; 2]);
    paho_v311_two_stream_groups_each_read_every_message:
        two_groups_each_read_every_message([PAHO_V311; 2], [PAHO_V311; 2]);
    paho_v5_two_stream_groups_each_read_every_message:
        two_groups_each_read_every_message([PAHO_V5; 2], [PAHO_V5; 2]);
    mqttjs_v311_two_stream_groups_each_read_every_message:
        two_groups_each_read_every_message([MQTTJS_V311; 2], [MQTTJS_V311; 2]);
    mqttjs_v5_two_stream_groups_each_read_every_message:
        two_groups_each_read_every_message([MQTTJS_V5; 2], [MQTTJS_V5; 2]);
    rumqttc_v311_two_stream_groups_each_read_every_message:
        two_groups_each_read_every_message([RUMQTTC_V311; 2], [RUMQTTC_V311; 2]);
    rumqttc_v5_two_stream_groups_each_read_every_message:
        two_groups_each_read_every_message([RUMQTTC_V5; 2], [RUMQTTC_V5; 2]);
    mixed_clients_two_stream_groups_each_read_every_message:
        two_groups_each_read_every_message([PAHO_V5, MOSQUITTO_V311], [MQTTJS_V311, RUMQTTC_V5]);

    mosquitto_clients_v5_stream_offset_earliest_reads_what_came_before_the_group:
        stream_offset_earliest_reads_what_came_before_the_group(MOSQUITTO_V5);
    paho_v5_stream_offset_earliest_reads_what_came_before_the_group:
        stream_offset_earliest_reads_what_came_before_the_group(PAHO_V5);
    mqttjs_v5_stream_offset_earliest_reads_what_came_before_the_group:
        stream_offset_earliest_reads_what_came_before_the_group(MQTTJS_V5);
    rumqttc_v5_stream_offset_earliest_reads_what_came_before_the_group:
        stream_offset_earliest_reads_what_came_before_the_group(RUMQTTC_V5);

    mqttjs_v5_a_refused_stream_message_comes_again_with_its_attempt_before_the_next:
        a_refused_message_comes_again_with_its_attempt_before_the_next(MQTTJS_V5);
}
