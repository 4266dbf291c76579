//! rumqttc (the Rust client library) as an interop client: each job runs in
//! a task and prints the same lines as the paho and MQTT.js scripts
//! (`CONNECTED`, `SUBSCRIBED`, `MSG`, `PUBLISHED`, `DISCONNECTED`), so the
//! scenarios treat it like any other client program. Failures end the task
//! with an `Err` instead of a panic, like a script's non-zero exit.

use std::net::SocketAddr;

use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::common::WAIT;
use crate::common::mqtt::{Message, forward_events, v4api, v5api};
use crate::process::{Lines, Proc};

/// Session expiry a persistent v5 session asks for.
const SESSION_EXPIRY_SECS: u32 = 300;

/// What one rumqttc client does.
#[derive(Clone, Debug)]
pub enum Job {
    /// Subscribe to `filters` at `qos` and print every message; with `exit`,
    /// disconnect once subscribed. No filters: only connect (to resume a
    /// session) and print messages.
    Subscribe {
        filters: Vec<String>,
        qos: u8,
        exit: bool,
    },
    /// Publish in order, each acknowledged before the next, then disconnect.
    Publish {
        messages: Vec<(String, String)>,
        qos: u8,
        retain: bool,
    },
    /// Connect with a will and stay connected; with `disconnect`, disconnect
    /// normally at once.
    Will {
        topic: String,
        payload: String,
        qos: u8,
        disconnect: bool,
    },
}

/// One rumqttc client: where, which protocol version, which id, whether
/// its session persists (clean session 0 / clean start 0 with an expiry).
#[derive(Clone, Debug)]
pub struct Spec {
    pub addr: SocketAddr,
    pub v5: bool,
    pub id: String,
    pub persistent: bool,
    pub job: Job,
}

/// Starts the client; its lines arrive through the returned `Proc`.
pub fn spawn(name: String, spec: Spec) -> Proc {
    if spec.v5 {
        Proc::spawn_task(name, move |lines| v5::run(spec, lines))
    } else {
        Proc::spawn_task(name, move |lines| v4::run(spec, lines))
    }
}

/// Aborts the event-loop task when the job ends or is aborted itself, so a
/// killed job's socket closes without DISCONNECT.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn emit(lines: &Lines, line: String) -> Result<(), String> {
    lines
        .send(line)
        .await
        .map_err(|_| "the test stopped reading".to_string())
}

macro_rules! driver {
    ($module:ident, $api:ident, $eventloop:ty, $configure:expr) => {
        mod $module {
            use super::*;
            use $api::{AsyncClient, ConnectReturnCode, Event, Outgoing, Packet, QoS};

            fn qos(n: u8) -> QoS {
                match n {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => QoS::ExactlyOnce,
                }
            }

            type Events = crate::common::mqtt::Events<$eventloop>;

            /// The next event the event loop reports, within `WAIT`.
            async fn next(events: &mut Events, what: &str) -> Result<Event, String> {
                match timeout(WAIT, events.recv()).await {
                    Ok(Some(Ok(event))) => Ok(event),
                    Ok(Some(Err(error))) => {
                        Err(format!("connection lost waiting for {what}: {error:?}"))
                    }
                    Ok(None) => Err(format!("event loop ended waiting for {what}")),
                    Err(_) => Err(format!("no {what} within {WAIT:?}")),
                }
            }

            /// Waits for the event `want` picks, printing any message that
            /// arrives meanwhile.
            async fn until(
                events: &mut Events,
                lines: &Lines,
                what: &str,
                want: impl Fn(&Event) -> bool,
            ) -> Result<Event, String> {
                loop {
                    let event = next(events, what).await?;
                    if want(&event) {
                        return Ok(event);
                    }
                    if let Event::Incoming(Packet::Publish(publish)) = &event {
                        print_message(lines, publish).await?;
                    }
                }
            }

            async fn print_message(lines: &Lines, publish: &$api::Publish) -> Result<(), String> {
                let line = format!(
                    "MSG {} {} {} {}",
                    publish.topic_text(),
                    publish.qos as u8,
                    u8::from(publish.retain),
                    publish.payload_text()
                );
                emit(lines, line).await
            }

            async fn disconnect(
                client: &AsyncClient,
                events: &mut Events,
                lines: &Lines,
            ) -> Result<(), String> {
                client
                    .disconnect()
                    .await
                    .map_err(|e| format!("disconnect: {e:?}"))?;
                until(events, lines, "DISCONNECT to be written", |e| {
                    matches!(e, Event::Outgoing(Outgoing::Disconnect))
                })
                .await?;
                Ok(())
            }

            pub async fn run(spec: Spec, lines: Lines) -> Result<(), String> {
                let mut options =
                    $api::MqttOptions::new(&spec.id, spec.addr.ip().to_string(), spec.addr.port());
                let configure: fn(&mut $api::MqttOptions, &Spec) = $configure;
                configure(&mut options, &spec);
                let (client, eventloop) = AsyncClient::new(options, 64);
                let (mut events, task) = forward_events(eventloop);
                let _event_loop = AbortOnDrop(task);

                match next(&mut events, "CONNACK").await? {
                    Event::Incoming(Packet::ConnAck(connack))
                        if connack.code == ConnectReturnCode::Success =>
                    {
                        let present = u8::from(connack.session_present);
                        emit(&lines, format!("CONNECTED session_present={present}")).await?;
                    }
                    other => return Err(format!("expected a successful CONNACK, got {other:?}")),
                }

                match spec.job {
                    Job::Subscribe {
                        filters,
                        qos: level,
                        exit,
                    } => {
                        let mut codes = Vec::new();
                        for filter in &filters {
                            client
                                .subscribe(filter.as_str(), qos(level))
                                .await
                                .map_err(|e| format!("subscribe: {e:?}"))?;
                            let suback = until(&mut events, &lines, "SUBACK", |e| {
                                matches!(e, Event::Incoming(Packet::SubAck(_)))
                            })
                            .await?;
                            let Event::Incoming(Packet::SubAck(suback)) = suback else {
                                unreachable!("`until` returns what it was asked for")
                            };
                            for code in suback.return_codes {
                                codes.push(match code {
                                    $api::SubscribeReasonCode::Success(granted) => {
                                        (granted as u8).to_string()
                                    }
                                    refused => format!("{refused:?}"),
                                });
                            }
                        }
                        if !filters.is_empty() {
                            emit(&lines, format!("SUBSCRIBED {}", codes.join(","))).await?;
                        }
                        if exit {
                            return disconnect(&client, &mut events, &lines).await;
                        }
                        loop {
                            // Idle until the test has what it wants and
                            // drops (aborts) this task.
                            match events.recv().await {
                                Some(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                                    print_message(&lines, &publish).await?;
                                }
                                Some(Ok(_)) => {}
                                Some(Err(error)) => {
                                    return Err(format!("connection lost: {error:?}"));
                                }
                                None => return Err("event loop ended".to_string()),
                            }
                        }
                    }
                    Job::Publish {
                        messages,
                        qos: level,
                        retain,
                    } => {
                        for (topic, payload) in &messages {
                            client
                                .publish(
                                    topic.as_str(),
                                    qos(level),
                                    retain,
                                    payload.clone().into_bytes(),
                                )
                                .await
                                .map_err(|e| format!("publish: {e:?}"))?;
                            let what = format!("the end of the QoS {level} flow for {topic}");
                            until(&mut events, &lines, &what, |e| match level {
                                0 => matches!(e, Event::Outgoing(Outgoing::Publish(_))),
                                1 => matches!(e, Event::Incoming(Packet::PubAck(_))),
                                _ => matches!(e, Event::Incoming(Packet::PubComp(_))),
                            })
                            .await?;
                        }
                        emit(&lines, format!("PUBLISHED {}", messages.len())).await?;
                        disconnect(&client, &mut events, &lines).await
                    }
                    Job::Will {
                        disconnect: false, ..
                    } => loop {
                        match events.recv().await {
                            Some(Ok(_)) => {}
                            Some(Err(error)) => return Err(format!("connection lost: {error:?}")),
                            None => return Err("event loop ended".to_string()),
                        }
                    },
                    Job::Will {
                        disconnect: true, ..
                    } => {
                        disconnect(&client, &mut events, &lines).await?;
                        emit(&lines, "DISCONNECTED".to_string()).await
                    }
                }
            }
        }
    };
}

driver!(v4, v4api, rumqttc::EventLoop, |options, spec| {
    options.set_clean_session(!spec.persistent);
    if let Job::Will {
        topic,
        payload,
        qos: level,
        ..
    } = &spec.job
    {
        let will = v4api::LastWill::new(topic, payload.as_bytes(), qos(*level), false);
        options.set_last_will(will);
    }
});

driver!(v5, v5api, rumqttc::v5::EventLoop, |options, spec| {
    options.set_clean_start(!spec.persistent);
    if spec.persistent {
        options.set_session_expiry_interval(Some(SESSION_EXPIRY_SECS));
    }
    if let Job::Will {
        topic,
        payload,
        qos: level,
        ..
    } = &spec.job
    {
        let will = v5api::LastWill::new(topic, payload.as_bytes(), qos(*level), false, None);
        options.set_last_will(will);
    }
});
