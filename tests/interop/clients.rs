//! How to make each client program connect, subscribe, publish, keep a
//! session and carry a will, for both protocol versions.
//!
//! The paho-mqtt and MQTT.js scripts take the same arguments and print the
//! same lines, and the rumqttc driver prints them too, so those three share
//! most of the code here; mosquitto_pub/mosquitto_sub have their own.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::process::Command;

use crate::process::Proc;
use crate::rumqttc_driver::{self, Job, Spec};

#[derive(Clone, Copy, Debug)]
pub enum Family {
    /// mosquitto_pub / mosquitto_sub.
    Mosquitto,
    /// The paho-mqtt scripts in tests/interop/.
    Paho,
    /// The MQTT.js (npm `mqtt` 5.x) scripts in tests/interop/node/.
    MqttJs,
    /// rumqttc, in process (tests/interop/rumqttc_driver.rs).
    Rumqttc,
}

#[derive(Clone, Copy, Debug)]
pub enum Version {
    V311,
    V5,
}

/// One client family speaking one protocol version.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    pub family: Family,
    pub version: Version,
}

/// Session expiry the persistent-session tests ask for (v5 only).
const SESSION_EXPIRY_SECS: &str = "300";

/// Line format for mosquitto_sub, the same as the paho scripts' MSG lines.
const MOSQUITTO_SUB_FORMAT: &str = "MSG %t %q %r %p";

/// The same with a line of v5 PUBLISH properties first, in the form
/// `paho_sub.py --show-properties` prints them (see `parse_properties`).
const MOSQUITTO_SUB_FORMAT_WITH_PROPERTIES: &str =
    "PROPS ct=%C|rt=%R|cd=%D|pf=%F|ex=%E|up=%P\\nMSG %t %q %r %p";

/// How a subscriber differs from the default one. Every client can show
/// properties, leave after a number of messages and send SUBSCRIBE user
/// properties; only paho and mosquitto_sub can set the keep alive; the rest
/// is paho's alone.
#[derive(Clone, Debug, Default)]
pub struct SubscribeExtras {
    /// Keep alive in seconds; paho then also prints its ping traffic.
    pub keepalive: Option<u16>,
    /// Print each message's v5 properties on a `PROPS` line before it (a
    /// 3.1.1 client prints the line with every field empty).
    pub show_properties: bool,
    /// Disconnect normally once this many messages have arrived.
    pub exit_after_messages: Option<usize>,
    /// v5 SUBSCRIBE user properties, in order.
    pub user_properties: Vec<(String, String)>,
    /// v5 subscription options (paho only: mosquitto_sub 2.0 cannot set
    /// them).
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    /// Subscribe to the same filters a second time on the same connection
    /// (paho only); returns once both SUBACKs are in.
    pub resubscribe: bool,
    /// Once subscribed, publish this (topic, payload) at QoS 1 on the same
    /// connection (paho only); returns once it is acknowledged.
    pub publish_after_subscribe: Option<(String, String)>,
    /// Answer the first this many QoS 1 messages with PUBACK 0x80, printing
    /// `REFUSED <topic> <payload>` (MQTT.js v5 only).
    pub refuse_first: usize,
}

impl SubscribeExtras {
    fn paho_only(&self) -> bool {
        self.no_local
            || self.retain_as_published
            || self.retain_handling != 0
            || self.resubscribe
            || self.publish_after_subscribe.is_some()
    }
}

/// v5 PUBLISH properties a test sends, all strings as UTF-8.
#[derive(Clone, Debug)]
pub struct PublishProperties {
    /// In order; a name may repeat.
    pub user: Vec<(String, String)>,
    pub content_type: String,
    pub response_topic: String,
    pub correlation_data: String,
    pub payload_format_indicator: u8,
    pub message_expiry_secs: u32,
}

/// Reads a `PROPS ct=..|rt=..|cd=..|pf=..|ex=..|up=k:v k:v` line into its
/// fields (absent properties are empty).
pub fn parse_properties(line: &str) -> BTreeMap<String, String> {
    line.trim_start_matches("PROPS ")
        .split('|')
        .filter_map(|field| field.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

impl Client {
    pub fn label(&self) -> String {
        let family = match self.family {
            Family::Mosquitto => "mosquitto",
            Family::Paho => "paho",
            Family::MqttJs => "mqtt.js",
            Family::Rumqttc => "rumqttc",
        };
        let version = match self.version {
            Version::V311 => "v3.1.1",
            Version::V5 => "v5",
        };
        format!("{family} {version}")
    }

    /// A subscriber to `filters` at `qos`, returned once its SUBACK is in
    /// and every filter was granted `qos`.
    pub async fn subscribe(&self, ctx: &Ctx, filters: &[&str], qos: u8) -> Proc {
        self.subscribe_with(ctx, filters, qos, SubscribeExtras::default())
            .await
    }

    /// `subscribe`, with `extras`.
    pub async fn subscribe_with(
        &self,
        ctx: &Ctx,
        filters: &[&str],
        qos: u8,
        extras: SubscribeExtras,
    ) -> Proc {
        self.subscribe_as(ctx, &ctx.client_id("sub"), filters, qos, extras)
            .await
    }

    /// `subscribe_with`, connecting as `id`.
    pub async fn subscribe_as(
        &self,
        ctx: &Ctx,
        id: &str,
        filters: &[&str],
        qos: u8,
        extras: SubscribeExtras,
    ) -> Proc {
        let v311_with_properties =
            matches!(self.version, Version::V311) && !extras.user_properties.is_empty();
        assert!(
            !v311_with_properties,
            "a 3.1.1 SUBSCRIBE has no user properties"
        );
        match self.family {
            _ if extras.refuse_first > 0
                && !matches!((self.family, self.version), (Family::MqttJs, Version::V5)) =>
            {
                panic!(
                    "only MQTT.js v5 refuses messages here, not {}",
                    self.label()
                )
            }
            Family::Mosquitto => {
                assert!(!extras.paho_only(), "mosquitto_sub cannot do {extras:?}");
                let format = if extras.show_properties {
                    MOSQUITTO_SUB_FORMAT_WITH_PROPERTIES
                } else {
                    MOSQUITTO_SUB_FORMAT
                };
                let mut cmd = self.mosquitto_sub_with_format(ctx, id, format);
                cmd.args(["-q", &qos.to_string()]);
                if let Some(secs) = extras.keepalive {
                    cmd.args(["-k", &secs.to_string()]);
                }
                if let Some(count) = extras.exit_after_messages {
                    cmd.args(["-C", &count.to_string()]);
                }
                for (name, value) in &extras.user_properties {
                    cmd.args(["-D", "subscribe", "user-property", name, value]);
                }
                for filter in filters {
                    cmd.args(["-t", filter]);
                }
                let mut sub = Proc::spawn(format!("mosquitto_sub {id}"), cmd, None);
                expect_mosquitto_suback(&mut sub, filters, qos).await;
                sub
            }
            Family::MqttJs | Family::Rumqttc
                if extras.paho_only() || extras.keepalive.is_some() =>
            {
                panic!("{} subscribers cannot do {extras:?}", self.label())
            }
            Family::Rumqttc => {
                let job = Job::Subscribe {
                    filters: filters.iter().map(|f| f.to_string()).collect(),
                    qos,
                    exit_after: extras.exit_after_messages,
                    show_properties: extras.show_properties,
                    user_properties: extras.user_properties,
                };
                let mut sub = self.rumqttc(ctx, id, false, job);
                self.expect_subscribed(&mut sub, filters, qos).await;
                sub
            }
            Family::Paho | Family::MqttJs => {
                let (name, mut cmd) = self.script("sub", ctx, id);
                cmd.args(["--qos", &qos.to_string()]);
                if let Some(secs) = extras.keepalive {
                    cmd.args(["--keepalive", &secs.to_string(), "--log-pings"]);
                }
                if extras.show_properties {
                    cmd.arg("--show-properties");
                }
                if let Some(count) = extras.exit_after_messages {
                    cmd.args(["--exit-after-messages", &count.to_string()]);
                }
                if extras.refuse_first > 0 {
                    cmd.args(["--refuse-first", &extras.refuse_first.to_string()]);
                }
                for (name, value) in &extras.user_properties {
                    cmd.args(["--subscribe-user-property", name, value]);
                }
                if extras.no_local {
                    cmd.arg("--no-local");
                }
                if extras.retain_as_published {
                    cmd.arg("--retain-as-published");
                }
                if extras.retain_handling != 0 {
                    cmd.args(["--retain-handling", &extras.retain_handling.to_string()]);
                }
                if extras.resubscribe {
                    cmd.arg("--resubscribe");
                }
                if let Some((topic, payload)) = &extras.publish_after_subscribe {
                    cmd.args(["--publish-after-subscribe", topic, payload]);
                }
                for filter in filters {
                    cmd.args(["--topic", filter]);
                }
                let mut sub = Proc::spawn(name, cmd, None);
                let subacks = if extras.resubscribe { 2 } else { 1 };
                for _ in 0..subacks {
                    self.expect_subscribed(&mut sub, filters, qos).await;
                }
                if extras.publish_after_subscribe.is_some() {
                    sub.wait_for("the PUBACK for its own message", |l| l == "PUBLISHED 1")
                        .await;
                }
                sub
            }
        }
    }

    /// Publishes `messages` in order at `qos` and returns once the client has
    /// finished (for QoS 1/2 that is after every acknowledgement).
    pub async fn publish(&self, ctx: &Ctx, qos: u8, retain: bool, messages: &[(&str, &str)]) {
        let id = ctx.client_id("pub");
        match self.family {
            Family::Mosquitto => {
                let one_topic = messages.iter().all(|(t, _)| *t == messages[0].0);
                let no_empty = messages.iter().all(|(_, p)| !p.is_empty());
                if messages.len() > 1 && one_topic && no_empty {
                    // `-l`: one message per stdin line, over one connection.
                    let mut cmd = self.mosquitto_pub(ctx, &id, qos, retain, messages[0].0);
                    cmd.arg("-l");
                    let input: String = messages.iter().map(|(_, p)| format!("{p}\n")).collect();
                    Proc::spawn(format!("mosquitto_pub -l {id}"), cmd, Some(input))
                        .finish()
                        .await;
                } else {
                    for (n, (topic, payload)) in messages.iter().enumerate() {
                        let id = format!("{id}-{n}");
                        let mut cmd = self.mosquitto_pub(ctx, &id, qos, retain, topic);
                        if payload.is_empty() {
                            cmd.arg("-n");
                        } else {
                            cmd.args(["-m", payload]);
                        }
                        Proc::spawn(format!("mosquitto_pub {id}"), cmd, None)
                            .finish()
                            .await;
                    }
                }
            }
            Family::Paho | Family::MqttJs | Family::Rumqttc => {
                let publisher = if let Family::Rumqttc = self.family {
                    let job = Job::Publish {
                        messages: messages
                            .iter()
                            .map(|(t, p)| (t.to_string(), p.to_string()))
                            .collect(),
                        qos,
                        retain,
                    };
                    self.rumqttc(ctx, &id, false, job)
                } else {
                    let (name, mut cmd) = self.script("pub", ctx, &id);
                    cmd.args(["--qos", &qos.to_string()]);
                    if retain {
                        cmd.arg("--retain");
                    }
                    for (topic, payload) in messages {
                        cmd.args(["--msg", topic, payload]);
                    }
                    Proc::spawn(name, cmd, None)
                };
                let name = publisher.name().to_string();
                let output = publisher.finish().await;
                let done = format!("PUBLISHED {}", messages.len());
                assert!(
                    output.contains(&done),
                    "{name} did not report `{done}`: {output:?}"
                );
            }
        }
    }

    /// Publishes one v5 message carrying `properties`.
    pub async fn publish_with_properties(
        &self,
        ctx: &Ctx,
        qos: u8,
        topic: &str,
        payload: &str,
        properties: &PublishProperties,
    ) {
        let id = ctx.client_id("pub");
        let pfi = properties.payload_format_indicator.to_string();
        let expiry = properties.message_expiry_secs.to_string();
        match self.family {
            Family::Mosquitto => {
                let mut cmd = self.mosquitto_pub(ctx, &id, qos, false, topic);
                cmd.args(["-m", payload]);
                for (name, value) in &properties.user {
                    cmd.args(["-D", "publish", "user-property", name, value]);
                }
                cmd.args(["-D", "publish", "content-type", &properties.content_type]);
                cmd.args([
                    "-D",
                    "publish",
                    "response-topic",
                    &properties.response_topic,
                ]);
                cmd.args([
                    "-D",
                    "publish",
                    "correlation-data",
                    &properties.correlation_data,
                ]);
                cmd.args(["-D", "publish", "payload-format-indicator", &pfi]);
                cmd.args(["-D", "publish", "message-expiry-interval", &expiry]);
                Proc::spawn(format!("mosquitto_pub -D {id}"), cmd, None)
                    .finish()
                    .await;
            }
            Family::MqttJs | Family::Rumqttc => {
                panic!("{} is not driven to publish v5 properties", self.label())
            }
            Family::Paho => {
                let (name, mut cmd) = self.script("pub", ctx, &id);
                cmd.args(["--qos", &qos.to_string(), "--msg", topic, payload]);
                for (name, value) in &properties.user {
                    cmd.args(["--user-property", name, value]);
                }
                cmd.args(["--content-type", &properties.content_type]);
                cmd.args(["--response-topic", &properties.response_topic]);
                cmd.args(["--correlation-data", &properties.correlation_data]);
                cmd.args(["--payload-format-indicator", &pfi]);
                cmd.args(["--message-expiry", &expiry]);
                let output = Proc::spawn(name.clone(), cmd, None).finish().await;
                assert!(
                    output.iter().any(|l| l == "PUBLISHED 1"),
                    "{name} did not report `PUBLISHED 1`: {output:?}"
                );
            }
        }
    }

    /// Publishes one message read from the client's stdin (mosquitto_pub
    /// `-s`), for payloads too large for a command line.
    pub async fn publish_stdin(&self, ctx: &Ctx, qos: u8, topic: &str, payload: &str) {
        let Family::Mosquitto = self.family else {
            panic!("publishing from stdin is done with mosquitto_pub only");
        };
        let id = ctx.client_id("pub");
        let mut cmd = self.mosquitto_pub(ctx, &id, qos, false, topic);
        cmd.arg("-s");
        Proc::spawn(
            format!("mosquitto_pub -s {id}"),
            cmd,
            Some(payload.to_string()),
        )
        .finish()
        .await;
    }

    /// Connects `id` with a persistent session, subscribes to `topic` at QoS
    /// 1 and disconnects normally.
    pub async fn leave_persistent_session(&self, ctx: &Ctx, id: &str, topic: &str) {
        match self.family {
            Family::Mosquitto => {
                let mut cmd = self.mosquitto_sub(ctx, id);
                self.mosquitto_persistent_args(&mut cmd);
                // -E: disconnect once the subscription is acknowledged.
                cmd.args(["-q", "1", "-t", topic, "-E"]);
                Proc::spawn(format!("mosquitto_sub -E {id}"), cmd, None)
                    .finish()
                    .await;
            }
            Family::Paho | Family::MqttJs | Family::Rumqttc => {
                let sub = if let Family::Rumqttc = self.family {
                    let job = Job::Subscribe {
                        filters: vec![topic.to_string()],
                        qos: 1,
                        exit_after: Some(0),
                        show_properties: false,
                        user_properties: Vec::new(),
                    };
                    self.rumqttc(ctx, id, true, job)
                } else {
                    let (name, mut cmd) = self.script("sub", ctx, id);
                    cmd.args(["--no-clean", "--session-expiry", SESSION_EXPIRY_SECS]);
                    cmd.args(["--qos", "1", "--topic", topic, "--exit-after-subscribe"]);
                    Proc::spawn(name, cmd, None)
                };
                let name = sub.name().to_string();
                let output = sub.finish().await;
                assert!(
                    output.iter().any(|l| l == "SUBSCRIBED 1"),
                    "{name} subscribing to {topic} at QoS 1: {output:?}"
                );
            }
        }
    }

    /// Reconnects `id` to its persistent session. paho, MQTT.js and rumqttc
    /// do not subscribe again and check Session Present; mosquitto_sub
    /// always subscribes again (which cannot bring back messages published
    /// while it was away) and does not print Session Present.
    pub async fn resume_persistent_session(&self, ctx: &Ctx, id: &str, topic: &str) -> Proc {
        match self.family {
            Family::Mosquitto => {
                let mut cmd = self.mosquitto_sub(ctx, id);
                self.mosquitto_persistent_args(&mut cmd);
                cmd.args(["-q", "1", "-t", topic]);
                Proc::spawn(format!("mosquitto_sub {id} (resumed)"), cmd, None)
            }
            Family::Paho | Family::MqttJs | Family::Rumqttc => {
                let mut sub = if let Family::Rumqttc = self.family {
                    let job = Job::Subscribe {
                        filters: Vec::new(),
                        qos: 1,
                        exit_after: None,
                        show_properties: false,
                        user_properties: Vec::new(),
                    };
                    self.rumqttc(ctx, id, true, job)
                } else {
                    let (name, mut cmd) = self.script("sub", ctx, id);
                    cmd.args(["--no-clean", "--session-expiry", SESSION_EXPIRY_SECS]);
                    cmd.arg("--no-subscribe");
                    Proc::spawn(format!("{name} (resumed)"), cmd, None)
                };
                let connack = sub
                    .wait_for("CONNACK", |l| l.starts_with("CONNECTED "))
                    .await;
                assert_eq!(
                    connack,
                    "CONNECTED session_present=1",
                    "{} reconnecting {id} without a clean start must find its session",
                    self.label()
                );
                sub
            }
        }
    }

    /// A connected client whose will is `payload` on `topic` at `qos`.
    pub async fn connect_with_will(&self, ctx: &Ctx, topic: &str, payload: &str, qos: u8) -> Proc {
        let id = ctx.client_id("will");
        match self.family {
            Family::Mosquitto => {
                let cmd = self.mosquitto_will_client(ctx, &id, topic, payload, qos);
                let mut client = Proc::spawn(format!("mosquitto_sub {id} (will)"), cmd, None);
                client
                    .wait_for("its SUBACK", |l| l.starts_with("Subscribed (mid:"))
                    .await;
                client
            }
            Family::Paho | Family::MqttJs | Family::Rumqttc => {
                let mut client = self.will_client(ctx, &id, topic, payload, qos, false);
                client
                    .wait_for("CONNACK", |l| l.starts_with("CONNECTED "))
                    .await;
                client
            }
        }
    }

    /// Connects with a will on `topic` and disconnects normally.
    pub async fn connect_with_will_then_disconnect(
        &self,
        ctx: &Ctx,
        topic: &str,
        payload: &str,
        qos: u8,
    ) {
        let id = ctx.client_id("will");
        match self.family {
            Family::Mosquitto => {
                let mut cmd = self.mosquitto_will_client(ctx, &id, topic, payload, qos);
                cmd.arg("-E");
                Proc::spawn(format!("mosquitto_sub -E {id} (will)"), cmd, None)
                    .finish()
                    .await;
            }
            Family::Paho | Family::MqttJs | Family::Rumqttc => {
                let client = self.will_client(ctx, &id, topic, payload, qos, true);
                let name = client.name().to_string();
                let output = client.finish().await;
                assert!(
                    output.iter().any(|l| l == "DISCONNECTED"),
                    "{name} should disconnect normally: {output:?}"
                );
            }
        }
    }

    fn mosquitto_will_client(
        &self,
        ctx: &Ctx,
        id: &str,
        topic: &str,
        payload: &str,
        qos: u8,
    ) -> Command {
        let mut cmd = self.mosquitto_sub(ctx, id);
        cmd.args(["--will-topic", topic, "--will-payload", payload]);
        cmd.args(["--will-qos", &qos.to_string()]);
        cmd.args(["-t", &ctx.topic("idle")]);
        cmd
    }

    /// A paho, MQTT.js or rumqttc client with a will; with `disconnect` it
    /// disconnects normally at once and prints DISCONNECTED.
    fn will_client(
        &self,
        ctx: &Ctx,
        id: &str,
        topic: &str,
        payload: &str,
        qos: u8,
        disconnect: bool,
    ) -> Proc {
        if let Family::Rumqttc = self.family {
            let job = Job::Will {
                topic: topic.to_string(),
                payload: payload.to_string(),
                qos,
                disconnect,
            };
            return self.rumqttc(ctx, id, false, job);
        }
        let (name, mut cmd) = self.script("will", ctx, id);
        cmd.args(["--will-topic", topic, "--will-payload", payload]);
        cmd.args(["--will-qos", &qos.to_string()]);
        if disconnect {
            cmd.arg("--disconnect");
        }
        Proc::spawn(name, cmd, None)
    }

    /// Waits for the `SUBSCRIBED q,q` line of a paho, MQTT.js or rumqttc
    /// subscriber and checks every filter was granted `qos`.
    async fn expect_subscribed(&self, sub: &mut Proc, filters: &[&str], qos: u8) {
        let line = sub
            .wait_for("SUBSCRIBED", |l| l.starts_with("SUBSCRIBED "))
            .await;
        let granted = line.trim_start_matches("SUBSCRIBED ");
        let wanted = vec![qos.to_string(); filters.len()].join(",");
        assert_eq!(
            granted,
            wanted,
            "{} subscribing to {filters:?} at QoS {qos}: SUBACK codes",
            self.label()
        );
    }

    /// A rumqttc client doing `job` as `id`.
    fn rumqttc(&self, ctx: &Ctx, id: &str, persistent: bool, job: Job) -> Proc {
        let spec = Spec {
            addr: ctx.addr,
            v5: matches!(self.version, Version::V5),
            id: id.to_string(),
            persistent,
            job,
        };
        rumqttc_driver::spawn(format!("rumqttc {} {id}", self.label()), spec)
    }

    fn mosquitto_persistent_args(&self, cmd: &mut Command) {
        cmd.arg("-c");
        if let Version::V5 = self.version {
            cmd.args(["-x", SESSION_EXPIRY_SECS]);
        }
    }

    fn mosquitto_common(&self, cmd: &mut Command, ctx: &Ctx, id: &str) {
        let version = match self.version {
            Version::V311 => "mqttv311",
            Version::V5 => "mqttv5",
        };
        cmd.args(["-V", version, "-i", id]);
        cmd.args(["-h", &ctx.addr.ip().to_string()]);
        cmd.args(["-p", &ctx.addr.port().to_string()]);
    }

    /// mosquitto_sub printing debug lines (for the SUBACK) and MSG lines,
    /// with line-buffered stdout.
    fn mosquitto_sub(&self, ctx: &Ctx, id: &str) -> Command {
        self.mosquitto_sub_with_format(ctx, id, MOSQUITTO_SUB_FORMAT)
    }

    fn mosquitto_sub_with_format(&self, ctx: &Ctx, id: &str, format: &str) -> Command {
        let program = require_tool(
            "mosquitto_sub",
            "install the Debian package mosquitto-clients",
        );
        let stdbuf = require_tool("stdbuf", "install the Debian package coreutils");
        let mut cmd = Command::new(stdbuf);
        cmd.arg("-oL").arg(program);
        self.mosquitto_common(&mut cmd, ctx, id);
        cmd.args(["-d", "-F", format]);
        cmd
    }

    fn mosquitto_pub(&self, ctx: &Ctx, id: &str, qos: u8, retain: bool, topic: &str) -> Command {
        let program = require_tool(
            "mosquitto_pub",
            "install the Debian package mosquitto-clients",
        );
        let mut cmd = Command::new(program);
        self.mosquitto_common(&mut cmd, ctx, id);
        cmd.args(["-q", &qos.to_string(), "-t", topic]);
        if retain {
            cmd.arg("-r");
        }
        cmd
    }

    /// The paho (`paho_<role>.py`) or MQTT.js (`node/mqttjs_<role>.js`)
    /// script for `role` (sub, pub, will), with the connection arguments
    /// both take; returns a name for reports and the command.
    fn script(&self, role: &str, ctx: &Ctx, id: &str) -> (String, Command) {
        self.script_to(role, ctx.addr, id)
    }

    /// `script` for a broker at `addr`: other modules add their own
    /// arguments (transports) to the command.
    pub fn script_to(&self, role: &str, addr: SocketAddr, id: &str) -> (String, Command) {
        let version = match self.version {
            Version::V311 => "3.1.1",
            Version::V5 => "5",
        };
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
        let (file, mut cmd) = match self.family {
            Family::Paho => {
                let file = format!("paho_{role}.py");
                let mut cmd = Command::new(python());
                // No __pycache__ left in the source tree.
                cmd.env("PYTHONDONTWRITEBYTECODE", "1");
                cmd.arg(dir.join(&file));
                (file, cmd)
            }
            Family::MqttJs => {
                let file = format!("mqttjs_{role}.js");
                let mut cmd = Command::new(node());
                cmd.arg(dir.join("node").join(&file));
                (file, cmd)
            }
            Family::Mosquitto | Family::Rumqttc => {
                unreachable!("{} is not driven by a script", self.label())
            }
        };
        cmd.args(["--host", &addr.ip().to_string()]);
        cmd.args(["--port", &addr.port().to_string()]);
        cmd.args(["--version", version, "--client-id", id]);
        (format!("{file} {id}"), cmd)
    }
}

/// Waits for mosquitto_sub's `Subscribed (mid: N): q, q` line and checks
/// every filter was granted `qos`.
async fn expect_mosquitto_suback(sub: &mut Proc, filters: &[&str], qos: u8) {
    let line = sub
        .wait_for("its SUBACK", |l| l.starts_with("Subscribed (mid:"))
        .await;
    let codes = line.split("): ").nth(1).unwrap_or("");
    let wanted = vec![qos.to_string(); filters.len()].join(", ");
    assert_eq!(
        codes,
        wanted,
        "{} subscribing to {filters:?} at QoS {qos}: SUBACK codes",
        sub.name()
    );
}

/// The Python interpreter that `python3` on PATH runs. Version managers such
/// as pyenv put a shell shim there that costs a good part of a second per
/// start, so the shim is asked once for the real interpreter.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let shim = require_tool("python3", "install python3, then `pip install paho-mqtt`");
        let output = std::process::Command::new(&shim)
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", shim.display()));
        let real = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if output.status.success() && !real.is_empty() {
            PathBuf::from(real)
        } else {
            shim
        }
    })
}

/// `node`, once the MQTT.js module it needs is known to be installed
/// under tests/interop/node (`npm ci --prefix tests/interop/node`).
pub fn node() -> &'static Path {
    static NODE: OnceLock<PathBuf> = OnceLock::new();
    NODE.get_or_init(|| {
        let node = require_tool("node", "install Node.js (Debian packages nodejs and npm)");
        let module = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/interop/node/node_modules/mqtt/package.json");
        assert!(
            module.is_file(),
            "MQTT.js is not installed at {}: run `npm ci --prefix tests/interop/node`",
            module.display()
        );
        node
    })
}

/// The absolute path of `program` on PATH; panics with `hint` if absent, so
/// a machine without the tool fails the test instead of skipping it.
pub fn require_tool(program: &str, hint: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("`{program}` is not installed or not on PATH: {hint}"))
}

/// Names unique to one test run, and the broker's address.
pub struct Ctx {
    pub addr: SocketAddr,
    prefix: String,
    /// Eight hex digits unique to this test run.
    pub seed: String,
    next_id: AtomicU32,
}

impl Ctx {
    pub fn new(addr: SocketAddr, test: &str) -> Ctx {
        let mut hasher = DefaultHasher::new();
        test.hash(&mut hasher);
        std::process::id().hash(&mut hasher);
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .hash(&mut hasher);
        let seed = format!("{:08x}", hasher.finish() as u32);
        Ctx {
            addr,
            prefix: format!("petrel-interop/{test}/{seed}"),
            seed,
            next_id: AtomicU32::new(0),
        }
    }

    pub fn topic(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    /// At most 23 characters, the length every 3.1.1 broker must accept.
    pub fn client_id(&self, role: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{role}{n}-{}", self.seed)
    }
}
