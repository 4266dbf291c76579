//! Who publishes where and who listens to what, for each traffic
//! scenario: topics, filters, key ownership, and what every subscriber
//! expects to receive.

use std::sync::Arc;
use std::time::Duration;

use mqttbytes::QoS;

use crate::client::SessionMode;
use crate::flow::EndToEnd;
use crate::keyed::{KeyOwner, messages_per_key, run_tag};
use crate::publisher::{PublisherSpec, PublisherStats, Route};
use crate::refusing::RefusingSpec;
use crate::subscriber::{Expect, PERSISTENT_EXPIRY_SECS, SubscriberSpec};
use crate::{BenchArgs, Scenario};

/// Every publisher and subscriber of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub publishers: Vec<PublisherSpec>,
    pub subscribers: Vec<SubscriberSpec>,
    /// The subscribers are members of one group (a consumer group, or a
    /// shared subscription): each message is meant for one of them.
    pub group: bool,
    /// A second consumer group on the stream that refuses its deliveries.
    pub refusing: Option<RefusingSpec>,
}

fn qos_of(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Lays out topics and expectations for a traffic scenario. Topics live
/// under `bench/{run}/` so runs never see each other's messages; a stream
/// run's topics are `{stream}/k{key}/{run}` (the key at level 1), and its
/// payloads carry the run's tag, since a stream keeps what earlier runs
/// left in it.
pub fn plan(args: &BenchArgs, run: &str) -> Plan {
    let qos = qos_of(args.qos_level());
    let drain = Duration::from_secs_f64(args.drain);
    let session = if args.persistent {
        SessionMode::Persistent {
            expiry_secs: PERSISTENT_EXPIRY_SECS,
        }
    } else {
        SessionMode::Clean
    };
    let e2e = args.e2e_window.map(|limit| Arc::new(EndToEnd::new(limit)));
    let publisher = |id: u32, route: Route, count: u32| PublisherSpec {
        id,
        route,
        qos,
        messages: args.messages,
        payload: args.payload,
        max_inflight: args.max_inflight,
        rate: args.rate.map(|r| r as f64 / f64::from(count)),
        e2e: e2e.clone(),
    };
    let subscriber = |filter: String, expect: Expect| SubscriberSpec {
        filter,
        qos,
        expect,
        session,
        drain,
        e2e: e2e.clone(),
    };
    let from = |first: u32, count: u32| Expect::Publishers {
        first,
        count,
        per_publisher: args.messages,
    };
    match args.scenario {
        Scenario::FanIn => {
            let n = args.publishers;
            let wildcard = format!("bench/{run}/fanin/+");
            let members = args.group_members();
            let filter = match members {
                Some(_) => format!("$share/{}/{wildcard}", args.group),
                None => wildcard,
            };
            Plan {
                publishers: (0..n)
                    .map(|i| publisher(i, Route::Topic(format!("bench/{run}/fanin/{i}")), n))
                    .collect(),
                subscribers: (0..members.unwrap_or(1))
                    .map(|_| subscriber(filter.clone(), from(0, n)))
                    .collect(),
                group: members.is_some(),
                refusing: None,
            }
        }
        Scenario::FanOut => {
            let one = format!("bench/{run}/fanout");
            Plan {
                publishers: vec![publisher(0, Route::Topic(one.clone()), 1)],
                subscribers: (0..args.subscribers)
                    .map(|_| subscriber(one.clone(), from(0, 1)))
                    .collect(),
                group: false,
                refusing: None,
            }
        }
        Scenario::Pairs | Scenario::Idle => {
            let n = args.pairs;
            Plan {
                publishers: (0..n)
                    .map(|i| publisher(i, Route::Topic(format!("bench/{run}/pair/{i}")), n))
                    .collect(),
                subscribers: (0..n)
                    .map(|i| subscriber(format!("bench/{run}/pair/{i}"), from(i, 1)))
                    .collect(),
                group: false,
                refusing: None,
            }
        }
        Scenario::Stream => {
            let (n, keys, tag) = (args.publishers, args.keys, run_tag(run));
            let keyed = |i: u32| {
                let owner = KeyOwner {
                    publisher: i,
                    publishers: n,
                    keys,
                };
                let topics = (0..owner.owned())
                    .map(|local| format!("{}/k{}/{run}", args.stream, owner.key(local)))
                    .collect();
                Route::Keys {
                    topics,
                    owner,
                    run: tag,
                }
            };
            let expect = Expect::Keys {
                run: tag,
                publishers: n,
                per_key: messages_per_key(keys, n, args.messages).into(),
            };
            let filter = format!("$share/{}/$stream/{}", args.group, args.stream);
            let members = args.group_members().unwrap_or(1);
            let refusing = args.refusing_group.as_ref().map(|group| RefusingSpec {
                filter: format!("$share/{group}/$stream/{}", args.stream),
                dead_letters: format!("$dlq/{group}/{}", args.stream),
                group: group.clone(),
                members: args.refusing_members.unwrap_or(members),
                qos,
                expect: expect.clone(),
                every: args.refuse_every.unwrap_or(1),
            });
            Plan {
                publishers: (0..n).map(|i| publisher(i, keyed(i), n)).collect(),
                subscribers: (0..members)
                    .map(|_| subscriber(filter.clone(), expect.clone()))
                    .collect(),
                group: true,
                refusing,
            }
        }
    }
}

/// Deliveries the plan calls for, given how many messages each publisher
/// actually sent (a run cut short by the deadline sends fewer). A group's
/// members together expect each message once.
pub fn expected_deliveries(plan: &Plan, pubs: &[PublisherStats]) -> u64 {
    let mut sent = vec![0u64; plan.publishers.len()];
    for p in pubs {
        if let Some(slot) = sent.get_mut(p.id as usize) {
            *slot = p.sent;
        }
    }
    let expects = |s: &SubscriberSpec| match s.expect {
        Expect::Publishers { first, count, .. } => sent
            .iter()
            .skip(first as usize)
            .take(count as usize)
            .sum::<u64>(),
        Expect::Keys { .. } => sent.iter().sum(),
    };
    if plan.group {
        plan.subscribers.first().map_or(0, expects)
    } else {
        plan.subscribers.iter().map(expects).sum()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    pub(crate) fn args(extra: &[&str]) -> BenchArgs {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).bench
    }

    fn topic(spec: &PublisherSpec) -> &str {
        match &spec.route {
            Route::Topic(topic) => topic,
            Route::Keys { .. } => panic!("publisher {} publishes on keys", spec.id),
        }
    }

    fn publishers_of(spec: &SubscriberSpec) -> (u32, u32) {
        match spec.expect {
            Expect::Publishers { first, count, .. } => (first, count),
            Expect::Keys { .. } => panic!("a stream member"),
        }
    }

    #[test]
    fn fan_in_has_one_wildcard_subscriber_expecting_every_publisher() {
        let a = args(&[
            "--scenario",
            "fan-in",
            "--publishers",
            "4",
            "--messages",
            "10",
        ]);
        let p = plan(&a, "r");
        assert_eq!(p.publishers.len(), 4);
        assert_eq!(p.subscribers.len(), 1);
        assert_eq!(p.subscribers[0].filter, "bench/r/fanin/+");
        assert_eq!(publishers_of(&p.subscribers[0]), (0, 4));
        assert!(
            p.publishers
                .iter()
                .all(|s| topic(s).starts_with("bench/r/fanin/"))
        );
        assert!(!p.group);
    }

    #[test]
    fn fan_out_has_one_publisher_and_every_subscriber_on_its_topic() {
        let a = args(&["--scenario", "fan-out", "--subscribers", "3", "--qos", "2"]);
        let p = plan(&a, "r");
        assert_eq!(p.publishers.len(), 1);
        assert_eq!(p.subscribers.len(), 3);
        assert!(
            p.subscribers
                .iter()
                .all(|s| s.filter == topic(&p.publishers[0]))
        );
        assert!(p.subscribers.iter().all(|s| s.qos == QoS::ExactlyOnce));
    }

    #[test]
    fn pairs_give_each_subscriber_its_own_publisher() {
        let a = args(&["--scenario", "pairs", "--pairs", "5"]);
        let p = plan(&a, "r");
        assert_eq!(p.publishers.len(), 5);
        for (i, s) in p.subscribers.iter().enumerate() {
            assert_eq!(publishers_of(s), (i as u32, 1));
            assert_eq!(s.filter, topic(&p.publishers[i]));
        }
    }

    #[test]
    fn offered_rate_is_split_between_publishers() {
        let a = args(&[
            "--scenario",
            "fan-in",
            "--publishers",
            "4",
            "--rate",
            "1000",
        ]);
        let p = plan(&a, "r");
        assert!(p.publishers.iter().all(|s| s.rate == Some(250.0)));
    }

    #[test]
    fn fan_in_members_share_one_subscription_and_expect_each_message_once() {
        let a = args(&[
            "--scenario",
            "fan-in",
            "--publishers",
            "3",
            "--members",
            "4",
            "--group",
            "g",
            "--messages",
            "10",
        ]);
        let p = plan(&a, "r");
        assert!(p.group);
        assert_eq!(p.subscribers.len(), 4);
        assert!(
            p.subscribers
                .iter()
                .all(|s| s.filter == "$share/g/bench/r/fanin/+")
        );
        assert_eq!(
            expected_deliveries(&p, &[sent(0, 10), sent(1, 10), sent(2, 5)]),
            25
        );
    }

    #[test]
    fn stream_publishers_own_disjoint_keys_and_the_group_reads_the_stream() {
        let a = args(&[
            "--scenario",
            "stream",
            "--publishers",
            "3",
            "--keys",
            "7",
            "--stream",
            "orders",
            "--messages",
            "4",
        ]);
        assert_eq!(a.qos_level(), 1, "QoS 1 unless asked otherwise");
        let p = plan(&a, "r");
        assert!(p.group);
        assert_eq!(p.subscribers.len(), 4, "four members by default");
        assert!(
            p.subscribers
                .iter()
                .all(|s| s.filter == "$share/bench/$stream/orders" && s.qos == QoS::AtLeastOnce)
        );
        let mut topics: Vec<&str> = Vec::new();
        for spec in &p.publishers {
            let Route::Keys {
                topics: own, owner, ..
            } = &spec.route
            else {
                panic!("publisher {} has one topic", spec.id);
            };
            assert_eq!(owner.publisher, spec.id);
            for (local, t) in own.iter().enumerate() {
                assert_eq!(t, &format!("orders/k{}/r", owner.key(local as u32)));
            }
            topics.extend(own.iter().map(String::as_str));
        }
        topics.sort_unstable();
        topics.dedup();
        assert_eq!(topics.len(), 7, "every key published, by one publisher");
        let Expect::Keys { per_key, .. } = &p.subscribers[0].expect else {
            panic!("members expect keys");
        };
        assert_eq!(per_key.iter().sum::<u64>(), 12);
        assert_eq!(
            expected_deliveries(&p, &[sent(0, 4), sent(1, 4), sent(2, 1)]),
            9
        );
    }

    #[test]
    fn a_refusing_group_reads_the_same_stream_and_its_dead_letters_are_watched() {
        let a = args(&[
            "--scenario",
            "stream",
            "--protocol",
            "5",
            "--members",
            "3",
            "--refusing-group",
            "nack",
            "--refuse-every",
            "4",
        ]);
        assert!(a.check().is_ok());
        let p = plan(&a, "r");
        let Some(refusing) = &p.refusing else {
            panic!("no refusing group planned");
        };
        assert_eq!(refusing.filter, "$share/nack/$stream/bench");
        assert_eq!(refusing.dead_letters, "$dlq/nack/bench");
        assert_eq!((refusing.members, refusing.every), (3, 4));
        assert_eq!(p.subscribers.len(), 3, "the healthy group is unchanged");
        assert!(
            plan(&args(&["--scenario", "stream"]), "r")
                .refusing
                .is_none()
        );
    }

    #[test]
    fn options_that_cannot_run_as_asked_are_refused() {
        let refused = |extra: &[&str]| args(extra).check().is_err();
        assert!(refused(&[
            "--scenario",
            "stream",
            "--publishers",
            "8",
            "--keys",
            "7"
        ]));
        assert!(!refused(&[
            "--scenario",
            "stream",
            "--publishers",
            "8",
            "--keys",
            "8"
        ]));
        assert!(refused(&["--scenario", "stream", "--payload", "27"]));
        assert!(refused(&["--scenario", "pairs", "--members", "2"]));
        assert!(refused(&["--scenario", "stream", "--stream", "a/b"]));
        assert!(refused(&[
            "--scenario",
            "fan-in",
            "--members",
            "2",
            "--group",
            ""
        ]));
        fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
            let mut all = vec!["--scenario", "stream", "--protocol", "5"];
            all.extend_from_slice(extra);
            all
        }
        assert!(!refused(&with(&["--refusing-group", "nack"])));
        assert!(refused(&[
            "--scenario",
            "stream",
            "--refusing-group",
            "nack"
        ]));
        assert!(refused(&with(&["--refusing-group", "nack", "--qos", "0"])));
        assert!(refused(&with(&["--refusing-group", "bench"])));
        assert!(refused(&with(&["--refusing-group", "a/b"])));
        assert!(refused(&with(&["--refuse-every", "2"])));
        assert!(refused(&[
            "--scenario",
            "fan-in",
            "--protocol",
            "5",
            "--refusing-group",
            "nack"
        ]));
    }

    pub(crate) fn sent(id: u32, count: u64) -> PublisherStats {
        let mut p = PublisherStats::new(id);
        p.sent = count;
        p
    }

    #[test]
    fn expected_deliveries_follow_what_was_actually_sent() {
        let a = args(&[
            "--scenario",
            "fan-in",
            "--publishers",
            "3",
            "--messages",
            "10",
        ]);
        let p = plan(&a, "r");
        assert_eq!(
            expected_deliveries(&p, &[sent(0, 10), sent(1, 4), sent(2, 0)]),
            14
        );
        let a = args(&["--scenario", "pairs", "--pairs", "2", "--messages", "10"]);
        let p = plan(&a, "r");
        assert_eq!(expected_deliveries(&p, &[sent(0, 10), sent(1, 7)]), 17);
        let a = args(&[
            "--scenario",
            "fan-out",
            "--subscribers",
            "3",
            "--messages",
            "10",
        ]);
        let p = plan(&a, "r");
        assert_eq!(expected_deliveries(&p, &[sent(0, 5)]), 15);
    }
}
