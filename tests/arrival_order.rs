//! Arrival order across connections, measured in a test binary of its own:
//! it runs alone, so other tests' load does not distort the scheduling it
//! measures.

mod common;
mod raw;

use raw::{PUBACK, SUBACK, publish_v311, subscribe, unique_id};

/// Client B sends SUBSCRIBE and client A publishes to that topic right
/// after, without waiting for B's SUBACK: the SUBSCRIBE reached the broker
/// first, so it should take effect first. Two sockets served by two threads
/// give no hard guarantee; petrel serves sockets that became readable
/// together in that order and holds a PUBLISH back for a SUBSCRIBE read
/// before it. The first 20 trials warm the broker up and are not counted.
/// Measured with this test on a 2-core machine: 60-95 of 100, median 85,
/// over twenty quiet runs at commit 6e547d3; 73-93, median 83, at 0ffd5f2
/// (round 1: 31); Mosquitto 2.0.11 gets 1-4 of 100 with this fast
/// in-process client (it serves the later socket first when both arrive
/// during one poll). docs/BENCHMARKS.md has both against a separate client
/// process.
#[tokio::test]
#[ignore = "a scheduling measurement, not a pass/fail property: below its 80% bar in 3 of 20 quiet runs \
            at commit 6e547d3 and 6 of 20 at 0ffd5f2 (docs/BENCHMARKS.md, What ordering costs); \
            run it with --ignored"]
async fn a_subscribe_that_arrived_before_a_publish_takes_effect_first() {
    let broker = common::IsolatedBroker::start(|_| {});
    let mut received = 0;
    const WARM_UP: usize = 20;
    const TRIALS: usize = 100;
    for trial in 0..WARM_UP + TRIALS {
        let topic = format!("order/{}/{trial}", unique_id("t"));
        let mut b = raw::connect_v311(broker.addr, &unique_id("b")).await;
        let mut a = raw::connect_v311(broker.addr, &unique_id("a")).await;
        b.send(&subscribe(1, None, &[(topic.as_bytes(), 1)])).await;
        a.send(&publish_v311(&topic, 1, 1, b"first")).await;
        a.expect_kind(PUBACK).await;
        b.expect_kind(SUBACK).await;
        // A marker published after the SUBACK always arrives; whatever
        // arrives before it tells whether "first" made it.
        a.send(&publish_v311(&topic, 1, 2, b"marker")).await;
        a.expect_kind(PUBACK).await;
        let before = b.payloads_before_marker(&topic, b"marker").await;
        if before.iter().any(|payload| payload == b"first") {
            received += usize::from(trial >= WARM_UP);
        }
    }
    println!("B received the first message {received} of {TRIALS} times");
    assert!(
        received >= TRIALS * 80 / 100,
        "B received the first message {received} of {TRIALS} times"
    );
}
