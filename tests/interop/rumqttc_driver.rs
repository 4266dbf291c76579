//! rumqttc (the Rust client library) as an interop client: each job runs in
//! a task and prints the same lines as the paho and MQTT.js scripts
//! (`CONNECTED`, `SUBSCRIBED`, `PROPS`, `MSG`, `PUBLISHED`, `DISCONNECTED`),
//! so the scenarios treat it like any other client program. Failures end the
//! task with an `Err` instead of a panic, like a script's non-zero exit.
//!
//! Messages are acknowledged after they are printed, as the paho and
//! MQTT.js scripts do, so a frozen client has acknowledged nothing it did
//! not print.

use std::net::SocketAddr;

use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::common::WAIT;
use crate::common::mqtt::{Message, forward_events, v4api, v5api};
use crate::process::{Frozen, Lines, Proc};

/// Session expiry a persistent v5 session asks for.
const SESSION_EXPIRY_SECS: u32 = 300;

/// What one rumqttc client does.
#[derive(Clone, Debug)]
pub enum Job {
    /// Subscribe to `filters` at `qos` and print every message. No filters:
    /// only connect (to resume a session) and print messages.
    Subscribe {
        filters: Vec<String>,
        qos: u8,
        /// Disconnect once subscribed and this many messages are printed
        /// (0: as soon as subscribed).
        exit_after: Option<usize>,
        /// Print each message's v5 properties on a `PROPS` line before it,
        /// in the form `paho_sub.py --show-properties` prints them.
        show_properties: bool,
        /// v5 SUBSCRIBE user properties.
        user_properties: Vec<(String, String)>,
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
        Proc::spawn_task(name, move |lines, frozen| v5::run(spec, lines, frozen))
    } else {
        Proc::spawn_task(name, move |lines, frozen| v4::run(spec, lines, frozen))
    }
}

/// Returns once the test freezes the client.
async fn freeze_requested(frozen: &mut Frozen) {
    if frozen.wait_for(|frozen| *frozen).await.is_err() {
        // The test let go of the client, which aborts this task.
        std::future::pending::<()>().await;
    }
}

/// The `PROPS` line of a message without properties.
const NO_PROPERTIES: &str = "PROPS ct=|rt=|cd=|pf=|ex=|up=";

/// The calls that differ between the versions, for 3.1.1 (which has no
/// properties).
mod v4ext {
    use crate::common::mqtt::v4api::{AsyncClient, Publish, QoS};

    pub async fn subscribe(
        client: &AsyncClient,
        filter: &str,
        qos: QoS,
        user_properties: &[(String, String)],
    ) -> Result<(), String> {
        if !user_properties.is_empty() {
            return Err("a 3.1.1 SUBSCRIBE has no user properties".to_string());
        }
        client
            .subscribe(filter, qos)
            .await
            .map_err(|e| format!("subscribe: {e:?}"))
    }

    pub fn properties_line(_: &Publish) -> String {
        super::NO_PROPERTIES.to_string()
    }
}

/// The same for 5.0.
mod v5ext {
    use rumqttc::v5::mqttbytes::v5::SubscribeProperties;

    use crate::common::mqtt::v5api::{AsyncClient, Publish, QoS};

    pub async fn subscribe(
        client: &AsyncClient,
        filter: &str,
        qos: QoS,
        user_properties: &[(String, String)],
    ) -> Result<(), String> {
        let subscribed = if user_properties.is_empty() {
            client.subscribe(filter, qos).await
        } else {
            let properties = SubscribeProperties {
                id: None,
                user_properties: user_properties.to_vec(),
            };
            client
                .subscribe_with_properties(filter, qos, properties)
                .await
        };
        subscribed.map_err(|e| format!("subscribe: {e:?}"))
    }

    pub fn properties_line(publish: &Publish) -> String {
        let Some(p) = &publish.properties else {
            return super::NO_PROPERTIES.to_string();
        };
        let text = |value: &Option<String>| value.clone().unwrap_or_default();
        let number = |value: Option<u32>| value.map(|n| n.to_string()).unwrap_or_default();
        let users: Vec<String> = p
            .user_properties
            .iter()
            .map(|(name, value)| format!("{name}:{value}"))
            .collect();
        format!(
            "PROPS ct={}|rt={}|cd={}|pf={}|ex={}|up={}",
            text(&p.content_type),
            text(&p.response_topic),
            p.correlation_data
                .as_ref()
                .map(|data| String::from_utf8_lossy(data).into_owned())
                .unwrap_or_default(),
            number(p.payload_format_indicator.map(u32::from)),
            number(p.message_expiry_interval),
            users.join(" ")
        )
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
    ($module:ident, $api:ident, $ext:ident, $eventloop:ty, $configure:expr) => {
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

            /// Prints and acknowledges the messages that arrive.
            struct Reader<'a> {
                client: &'a AsyncClient,
                lines: &'a Lines,
                show_properties: bool,
                printed: usize,
            }

            impl Reader<'_> {
                async fn take(&mut self, publish: &$api::Publish) -> Result<(), String> {
                    if self.show_properties {
                        emit(self.lines, $ext::properties_line(publish)).await?;
                    }
                    let line = format!(
                        "MSG {} {} {} {}",
                        publish.topic_text(),
                        publish.qos as u8,
                        u8::from(publish.retain),
                        publish.payload_text()
                    );
                    emit(self.lines, line).await?;
                    self.printed += 1;
                    self.client
                        .ack(publish)
                        .await
                        .map_err(|e| format!("acknowledge: {e:?}"))
                }
            }

            /// Waits for the event `want` picks, taking any message that
            /// arrives meanwhile.
            async fn until(
                events: &mut Events,
                reader: &mut Reader<'_>,
                what: &str,
                want: impl Fn(&Event) -> bool,
            ) -> Result<Event, String> {
                loop {
                    let event = next(events, what).await?;
                    if want(&event) {
                        return Ok(event);
                    }
                    if let Event::Incoming(Packet::Publish(publish)) = &event {
                        reader.take(publish).await?;
                    }
                }
            }

            async fn disconnect(
                events: &mut Events,
                reader: &mut Reader<'_>,
            ) -> Result<(), String> {
                reader
                    .client
                    .disconnect()
                    .await
                    .map_err(|e| format!("disconnect: {e:?}"))?;
                until(events, reader, "DISCONNECT to be written", |e| {
                    matches!(e, Event::Outgoing(Outgoing::Disconnect))
                })
                .await?;
                Ok(())
            }

            pub async fn run(spec: Spec, lines: Lines, mut frozen: Frozen) -> Result<(), String> {
                let mut options =
                    $api::MqttOptions::new(&spec.id, spec.addr.ip().to_string(), spec.addr.port());
                options.set_manual_acks(true);
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

                let show_properties = matches!(
                    spec.job,
                    Job::Subscribe {
                        show_properties: true,
                        ..
                    }
                );
                let mut reader = Reader {
                    client: &client,
                    lines: &lines,
                    show_properties,
                    printed: 0,
                };
                match spec.job {
                    Job::Subscribe {
                        filters,
                        qos: level,
                        exit_after,
                        user_properties,
                        ..
                    } => {
                        let mut codes = Vec::new();
                        for filter in &filters {
                            $ext::subscribe(&client, filter, qos(level), &user_properties).await?;
                            let suback = until(&mut events, &mut reader, "SUBACK", |e| {
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
                        loop {
                            if exit_after.is_some_and(|count| reader.printed >= count) {
                                return disconnect(&mut events, &mut reader).await;
                            }
                            // Otherwise idle until the test has what it wants
                            // and drops (aborts) this task.
                            let event = tokio::select! {
                                event = events.recv() => event,
                                () = freeze_requested(&mut frozen) => {
                                    // Hung: the connection stays open, and
                                    // nothing is printed or acknowledged.
                                    return std::future::pending().await;
                                }
                            };
                            match event {
                                Some(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                                    reader.take(&publish).await?;
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
                            until(&mut events, &mut reader, &what, |e| match level {
                                0 => matches!(e, Event::Outgoing(Outgoing::Publish(_))),
                                1 => matches!(e, Event::Incoming(Packet::PubAck(_))),
                                _ => matches!(e, Event::Incoming(Packet::PubComp(_))),
                            })
                            .await?;
                        }
                        emit(&lines, format!("PUBLISHED {}", messages.len())).await?;
                        disconnect(&mut events, &mut reader).await
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
                        disconnect(&mut events, &mut reader).await?;
                        emit(&lines, "DISCONNECTED".to_string()).await
                    }
                }
            }
        }
    };
}

driver!(v4, v4api, v4ext, rumqttc::EventLoop, |options, spec| {
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

driver!(v5, v5api, v5ext, rumqttc::v5::EventLoop, |options, spec| {
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
