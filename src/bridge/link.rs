//! One connection of a bridge, without I/O: between the packets of the
//! bridge's local session (a `Client` of this broker) and the remote's.
//!
//! The local session hands out PUBLISHes with its own packet ids; they go
//! to the remote under the same ids, so the local session's durable state
//! (what was sent, PUBREC received, PUBREL sent) is the bridge's state with
//! the remote too, across reconnects and restarts of either side. The
//! other way, the remote's packet ids are the local client's: the broker's
//! inbound QoS 2 state answers a repeated PUBLISH or PUBREL.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::BytesMut;

use super::spec::BridgeSpec;
use super::status::BridgeStatus;
use super::wire::{self, AckType, ConnAck, Inbound, Outgoing, WireError};
use crate::protocol::{Ack, Deliver, Packet, Publish, QoS, ReasonCode, Version};
use crate::topic::{self, TopicLimits};

/// Why a connection to the remote ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("the remote disconnected with reason 0x{0:02x}")]
    Disconnected(u8),
    #[error("the remote sent {0} unasked")]
    Unexpected(&'static str),
    #[error("no PINGRESP within the keep alive")]
    KeepAlive,
    #[error(
        "the local broker refused a message from the remote (0x{0:02x}); it stays with the remote"
    )]
    LocalRefusal(u8),
    #[error("the local session ended: {0}")]
    LocalClosed(String),
}

/// What the local session must be told.
#[derive(Debug, Clone, PartialEq)]
pub enum ToLocal {
    /// A packet for `Client::handle`.
    Handle(Packet),
    /// A delivery the remote cannot take (too large, or no rule maps its
    /// topic any more): given up for the bridge (`Client::skip_oversized`).
    Skip(u16),
}

pub struct Link {
    spec: Arc<BridgeSpec>,
    status: Arc<BridgeStatus>,
    version: Version,
    topic_limits: TopicLimits,
    max_qos: QoS,
    max_packet_size: usize,
    keep_alive_ms: u64,
    last_sent_ms: u64,
    ping_sent_ms: Option<u64>,
    /// Deliveries sent at a lower QoS than the local session sent them
    /// (the remote's Maximum QoS): their acknowledgement is finished here.
    downgraded: HashMap<u16, QoS>,
    /// QoS 2 deliveries whose PUBREL the local session sends to the bridge
    /// only: answered here.
    released_here: HashSet<u16>,
    /// QoS 2 messages from the remote no rule maps: acknowledged here.
    unmapped_qos2: HashSet<u16>,
    /// The SUBSCRIBE waiting for its SUBACK, and its filters.
    subscribing: Option<(u16, Vec<String>)>,
}

impl Link {
    /// A link over a connection the remote accepted with `connack`.
    pub fn new(
        spec: Arc<BridgeSpec>,
        status: Arc<BridgeStatus>,
        version: Version,
        connack: &ConnAck,
        topic_limits: TopicLimits,
        now_ms: u64,
    ) -> Link {
        let keep_alive = connack.server_keep_alive.unwrap_or(spec.keepalive);
        Link {
            max_qos: connack
                .maximum_qos
                .and_then(QoS::from_bits)
                .unwrap_or(QoS::ExactlyOnce),
            max_packet_size: connack
                .maximum_packet_size
                .map_or(usize::MAX, |size| size as usize),
            keep_alive_ms: u64::from(keep_alive) * 1000,
            last_sent_ms: now_ms,
            ping_sent_ms: None,
            downgraded: HashMap::new(),
            released_here: HashSet::new(),
            unmapped_qos2: HashSet::new(),
            subscribing: None,
            spec,
            status,
            version,
            topic_limits,
        }
    }

    /// The protocol spoken with the remote.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Subscribes on the remote to every `in` rule, with packet id
    /// `packet_id` (one the local session has not in flight). `false` when
    /// there is nothing to subscribe to.
    pub fn subscribe(&mut self, packet_id: u16, out: &mut BytesMut) -> Result<bool, LinkError> {
        let filters: Vec<(String, QoS)> = self
            .spec
            .rules
            .iter()
            .filter(|rule| rule.comes_in())
            .map(|rule| (rule.remote_filter(), rule.qos))
            .collect();
        if filters.is_empty() {
            return Ok(false);
        }
        wire::encode_subscribe(self.version, packet_id, &filters, out)?;
        self.subscribing = Some((packet_id, filters.into_iter().map(|(f, _)| f).collect()));
        Ok(true)
    }

    /// Whether the SUBSCRIBE is still waiting for its SUBACK.
    pub fn is_subscribing(&self) -> bool {
        self.subscribing.is_some()
    }

    /// Packets the local session handed out: what goes to the remote is
    /// written to `out`; what the local session must be told at once is
    /// returned.
    pub fn from_local(
        &mut self,
        packets: Vec<Packet>,
        out: &mut BytesMut,
    ) -> Result<Vec<ToLocal>, LinkError> {
        let mut to_local = Vec::new();
        for packet in packets {
            match packet {
                Packet::Deliver(deliver) => self.deliver(&deliver, out, &mut to_local)?,
                Packet::PubRel(ack) if self.released_here.remove(&ack.packet_id) => {
                    to_local.push(ToLocal::Handle(Packet::PubComp(Ack::new(
                        ack.packet_id,
                        ReasonCode::SUCCESS,
                    ))));
                }
                Packet::PubRel(ack) => wire::encode_ack(AckType::PubRel, ack.packet_id, out),
                // Answers to what came from the remote: a refusal leaves
                // the message with the remote, which sends it again.
                Packet::PubAck(ack) | Packet::PubRec(ack) if ack.reason.is_error() => {
                    return Err(LinkError::LocalRefusal(ack.reason.0));
                }
                Packet::PubAck(ack) => wire::encode_ack(AckType::PubAck, ack.packet_id, out),
                Packet::PubRec(ack) => wire::encode_ack(AckType::PubRec, ack.packet_id, out),
                Packet::PubComp(ack) => wire::encode_ack(AckType::PubComp, ack.packet_id, out),
                // The local session's answers to the bridge itself.
                Packet::ConnAck(_)
                | Packet::SubAck(_)
                | Packet::UnsubAck(_)
                | Packet::PingResp
                | Packet::Disconnect(_)
                | Packet::Auth(_) => {}
                Packet::Connect(_)
                | Packet::Publish(_)
                | Packet::Subscribe(_)
                | Packet::Unsubscribe(_)
                | Packet::PingReq => {}
            }
        }
        Ok(to_local)
    }

    fn deliver(
        &mut self,
        deliver: &Deliver,
        out: &mut BytesMut,
        to_local: &mut Vec<ToLocal>,
    ) -> Result<(), LinkError> {
        let id = deliver.packet_id;
        let Some(topic) = self.spec.remote_topic(&deliver.message.topic) else {
            tracing::warn!(bridge = %self.spec.name, topic = %deliver.message.topic, "no topic rule maps a queued message any more: dropped");
            self.give_up(id, to_local);
            return Ok(());
        };
        let qos = deliver.qos.min(self.max_qos);
        let publish = Outgoing {
            topic: &topic,
            qos,
            retain: deliver.retain,
            dup: deliver.dup && qos != QoS::AtMostOnce,
            packet_id: if qos == QoS::AtMostOnce { 0 } else { id },
            payload: &deliver.message.payload,
            properties: &deliver.message.properties,
            message_expiry: deliver.message_expiry,
        };
        let mark = out.len();
        wire::encode_publish(self.version, &publish, out)?;
        if out.len() - mark > self.max_packet_size {
            out.truncate(mark);
            tracing::warn!(bridge = %self.spec.name, %topic, "a message is larger than the remote's Maximum Packet Size: dropped");
            self.give_up(id, to_local);
            return Ok(());
        }
        match (deliver.qos, qos) {
            (QoS::AtMostOnce, _) => self.status.count_sent(1),
            (local, remote) if local == remote => {}
            // Sent at QoS 0: no acknowledgement will come.
            (local, QoS::AtMostOnce) => {
                self.status.count_sent(1);
                to_local.extend(self.finish_here(id, local));
            }
            (local, _) => {
                self.downgraded.insert(id, local);
            }
        }
        Ok(())
    }

    /// Drops a delivery for the bridge, counted.
    fn give_up(&mut self, packet_id: u16, to_local: &mut Vec<ToLocal>) {
        self.status.count_refused();
        if packet_id != 0 {
            to_local.push(ToLocal::Skip(packet_id));
        }
    }

    /// The acknowledgement a delivery of `local` QoS waits for, given here.
    fn finish_here(&mut self, packet_id: u16, local: QoS) -> Option<ToLocal> {
        let ack = Ack::new(packet_id, ReasonCode::SUCCESS);
        match local {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(ToLocal::Handle(Packet::PubAck(ack))),
            QoS::ExactlyOnce => {
                self.released_here.insert(packet_id);
                Some(ToLocal::Handle(Packet::PubRec(ack)))
            }
        }
    }

    /// A packet from the remote: what the local session must be told, and
    /// anything answered here is written to `out`.
    pub fn from_remote(
        &mut self,
        packet: Inbound,
        out: &mut BytesMut,
    ) -> Result<Vec<ToLocal>, LinkError> {
        let handle = |packet| Ok(vec![ToLocal::Handle(packet)]);
        match packet {
            Inbound::Publish(publish) => self.publish_here(publish, out),
            Inbound::PubAck { packet_id, reason } => {
                self.remote_acknowledged(packet_id, reason);
                match self.downgraded.remove(&packet_id) {
                    Some(local) => Ok(self.finish_here(packet_id, local).into_iter().collect()),
                    None => handle(Packet::PubAck(Ack::new(packet_id, ReasonCode::SUCCESS))),
                }
            }
            Inbound::PubRec { packet_id, reason } => {
                if reason >= 0x80 {
                    self.remote_acknowledged(packet_id, reason);
                }
                handle(Packet::PubRec(Ack::new(packet_id, ReasonCode(reason))))
            }
            Inbound::PubComp { packet_id } => {
                self.status.count_sent(1);
                handle(Packet::PubComp(Ack::new(packet_id, ReasonCode::SUCCESS)))
            }
            Inbound::PubRel { packet_id } => {
                if self.unmapped_qos2.remove(&packet_id) {
                    wire::encode_ack(AckType::PubComp, packet_id, out);
                    return Ok(Vec::new());
                }
                handle(Packet::PubRel(Ack::new(packet_id, ReasonCode::SUCCESS)))
            }
            Inbound::SubAck { packet_id, codes } => {
                match self.subscribing.take() {
                    Some((id, filters)) if id == packet_id => {
                        for (filter, code) in filters.iter().zip(codes) {
                            if code >= 0x80 {
                                tracing::warn!(bridge = %self.spec.name, %filter, code = format_args!("0x{code:02x}"), "the remote refused a subscription");
                                self.status.failed(format!(
                                    "the remote refused the subscription to `{filter}` (0x{code:02x})"
                                ));
                            }
                        }
                    }
                    _ => return Err(LinkError::Unexpected("a SUBACK")),
                }
                Ok(Vec::new())
            }
            Inbound::PingResp => {
                self.ping_sent_ms = None;
                Ok(Vec::new())
            }
            Inbound::UnsubAck => Err(LinkError::Unexpected("an UNSUBACK")),
            Inbound::ConnAck(_) => Err(LinkError::Unexpected("a second CONNACK")),
            Inbound::Disconnect { reason } => Err(LinkError::Disconnected(reason)),
        }
    }

    fn remote_acknowledged(&self, packet_id: u16, reason: u8) {
        if reason >= 0x80 {
            self.status.count_refused();
            tracing::warn!(bridge = %self.spec.name, packet_id, reason = format_args!("0x{reason:02x}"), "the remote refused a message");
        } else {
            self.status.count_sent(1);
        }
    }

    /// A message from the remote, under its local name, for the local
    /// session to publish.
    fn publish_here(
        &mut self,
        mut publish: Publish,
        out: &mut BytesMut,
    ) -> Result<Vec<ToLocal>, LinkError> {
        if publish.topic_alias.is_some() {
            // The bridge allows no topic aliases (it sends no maximum).
            return Err(LinkError::Unexpected("a topic alias"));
        }
        let local = self
            .spec
            .local_topic(&publish.topic)
            .filter(|local| topic::validate_name(local, self.topic_limits).is_ok());
        let Some(local) = local else {
            // Acknowledged, or the remote would send it again for ever.
            tracing::warn!(bridge = %self.spec.name, topic = %publish.topic, "a message from the remote has no valid local topic: not published");
            self.status.count_refused();
            match publish.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => wire::encode_ack(AckType::PubAck, publish.packet_id, out),
                QoS::ExactlyOnce => {
                    self.unmapped_qos2.insert(publish.packet_id);
                    wire::encode_ack(AckType::PubRec, publish.packet_id, out);
                }
            }
            return Ok(Vec::new());
        };
        self.status.count_received();
        publish.topic = local;
        Ok(vec![ToLocal::Handle(Packet::Publish(publish))])
    }

    /// Bytes went to the remote at `now_ms`.
    pub fn wrote(&mut self, now_ms: u64) {
        self.last_sent_ms = now_ms;
    }

    /// Sends PINGREQ once nothing went to the remote for the keep alive;
    /// an error when the last one had no answer within it. Returns when to
    /// look again (none: no keep alive).
    pub fn keep_alive(
        &mut self,
        now_ms: u64,
        out: &mut BytesMut,
    ) -> Result<Option<u64>, LinkError> {
        if self.keep_alive_ms == 0 {
            return Ok(None);
        }
        match self.ping_sent_ms {
            Some(sent) if now_ms >= sent + self.keep_alive_ms => return Err(LinkError::KeepAlive),
            Some(_) => {}
            None if now_ms >= self.last_sent_ms + self.keep_alive_ms => {
                wire::encode_pingreq(out);
                self.ping_sent_ms = Some(now_ms);
            }
            None => {}
        }
        Ok(Some(match self.ping_sent_ms {
            Some(sent) => sent + self.keep_alive_ms,
            None => self.last_sent_ms + self.keep_alive_ms,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Message, MessageProperties};
    use bytes::Bytes;

    const LIMITS: TopicLimits = TopicLimits {
        max_length: 4096,
        max_levels: 128,
    };

    fn spec() -> Arc<BridgeSpec> {
        let text = "name = \"up\"\naddress = \"127.0.0.1:1884\"\nkeepalive = 10\ntopics = [\n\
            { pattern = \"sensors/#\", direction = \"out\", qos = 2, local_prefix = \"site/\", remote_prefix = \"edge1/\" },\n\
            { pattern = \"cmd/#\", direction = \"in\", qos = 2, local_prefix = \"remote/\", remote_prefix = \"hq/\" },\n]";
        let config: super::super::BridgeConfig = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(|built| built.try_deserialize())
            .unwrap();
        Arc::new(config.check(0, LIMITS).unwrap())
    }

    fn link_with(connack: ConnAck) -> (Link, Arc<BridgeStatus>) {
        let status = Arc::new(BridgeStatus::new("up"));
        let link = Link::new(spec(), status.clone(), Version::V5, &connack, LIMITS, 0);
        (link, status)
    }

    fn deliver(topic: &str, qos: QoS, packet_id: u16) -> Packet {
        Packet::Deliver(Deliver {
            message: Arc::new(Message {
                topic: topic.into(),
                payload: Bytes::from_static(b"21.5"),
                qos,
                retain: true,
                properties: MessageProperties::default(),
                expires_at: None,
                publisher: None,
            }),
            qos,
            retain: true,
            dup: false,
            packet_id,
            subscription_ids: Vec::new(),
            message_expiry: None,
        })
    }

    /// The packets in `out`, as the remote reads them (a server reads what
    /// a client sends with the same framing; PUBLISH is decoded as if it
    /// came the other way, which has the same shape).
    fn written(out: &mut BytesMut) -> Vec<Inbound> {
        let mut packets = Vec::new();
        while let Some((first, body)) = wire::split_frame(out, 1 << 20).unwrap() {
            packets.push(wire::decode(Version::V5, first, body).unwrap());
        }
        packets
    }

    fn handled(packet: Packet) -> Vec<ToLocal> {
        vec![ToLocal::Handle(packet)]
    }

    #[test]
    fn a_qos2_message_goes_out_under_its_local_packet_id_and_every_step_reaches_the_local_session()
    {
        let (mut link, status) = link_with(ConnAck::default());
        let mut out = BytesMut::new();
        let told = link
            .from_local(
                vec![deliver("site/sensors/a", QoS::ExactlyOnce, 42)],
                &mut out,
            )
            .unwrap();
        assert!(told.is_empty());
        let Some(Inbound::Publish(sent)) = written(&mut out).pop() else {
            panic!("no PUBLISH");
        };
        assert_eq!(sent.topic, "edge1/sensors/a");
        assert_eq!(
            (sent.qos, sent.packet_id, sent.retain),
            (QoS::ExactlyOnce, 42, true)
        );

        let told = link
            .from_remote(
                Inbound::PubRec {
                    packet_id: 42,
                    reason: 0,
                },
                &mut out,
            )
            .unwrap();
        assert_eq!(
            told,
            handled(Packet::PubRec(Ack::new(42, ReasonCode::SUCCESS)))
        );
        // The local session answers with PUBREL, which goes to the remote.
        link.from_local(
            vec![Packet::PubRel(Ack::new(42, ReasonCode::SUCCESS))],
            &mut out,
        )
        .unwrap();
        assert_eq!(written(&mut out), [Inbound::PubRel { packet_id: 42 }]);
        let told = link
            .from_remote(Inbound::PubComp { packet_id: 42 }, &mut out)
            .unwrap();
        assert_eq!(
            told,
            handled(Packet::PubComp(Ack::new(42, ReasonCode::SUCCESS)))
        );
        assert_eq!(status.report(Default::default()).sent, 1);
    }

    #[test]
    fn below_the_remotes_maximum_qos_the_bridge_finishes_the_local_flow_itself() {
        let (mut link, _) = link_with(ConnAck {
            maximum_qos: Some(1),
            ..ConnAck::default()
        });
        let mut out = BytesMut::new();
        link.from_local(
            vec![deliver("site/sensors/a", QoS::ExactlyOnce, 7)],
            &mut out,
        )
        .unwrap();
        let Some(Inbound::Publish(sent)) = written(&mut out).pop() else {
            panic!("no PUBLISH");
        };
        assert_eq!(sent.qos, QoS::AtLeastOnce);
        let told = link
            .from_remote(
                Inbound::PubAck {
                    packet_id: 7,
                    reason: 0,
                },
                &mut out,
            )
            .unwrap();
        assert_eq!(
            told,
            handled(Packet::PubRec(Ack::new(7, ReasonCode::SUCCESS)))
        );
        // Its PUBREL is answered here, not sent to a remote that never saw
        // a QoS 2 flow.
        let told = link
            .from_local(
                vec![Packet::PubRel(Ack::new(7, ReasonCode::SUCCESS))],
                &mut out,
            )
            .unwrap();
        assert_eq!(
            told,
            handled(Packet::PubComp(Ack::new(7, ReasonCode::SUCCESS)))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn a_message_the_remote_cannot_take_is_given_up_and_counted() {
        let (mut link, status) = link_with(ConnAck {
            maximum_packet_size: Some(16),
            ..ConnAck::default()
        });
        let mut out = BytesMut::new();
        let told = link
            .from_local(
                vec![deliver("site/sensors/a/long", QoS::AtLeastOnce, 3)],
                &mut out,
            )
            .unwrap();
        assert_eq!(told, [ToLocal::Skip(3)]);
        assert!(out.is_empty());
        // No rule maps it (a rule removed while it waited).
        let told = link
            .from_local(vec![deliver("elsewhere/x", QoS::AtLeastOnce, 4)], &mut out)
            .unwrap();
        assert_eq!(told, [ToLocal::Skip(4)]);
        // A refusal by the remote.
        link.from_remote(
            Inbound::PubAck {
                packet_id: 5,
                reason: 0x87,
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(status.report(Default::default()).dropped, 3);
    }

    #[test]
    fn a_remote_message_is_published_under_its_local_name_and_an_unmapped_one_is_acknowledged_here()
    {
        let (mut link, status) = link_with(ConnAck::default());
        let mut out = BytesMut::new();
        let publish = |topic: &str, packet_id| Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: topic.into(),
            packet_id,
            topic_alias: None,
            properties: MessageProperties::default(),
            payload: Bytes::from_static(b"now"),
        };
        let told = link
            .from_remote(Inbound::Publish(publish("hq/cmd/reboot", 9)), &mut out)
            .unwrap();
        assert_eq!(
            told,
            handled(Packet::Publish(publish("remote/cmd/reboot", 9)))
        );
        assert_eq!(status.report(Default::default()).received, 1);
        // The local session's answers go back under the remote's id.
        link.from_local(
            vec![Packet::PubRec(Ack::new(9, ReasonCode::SUCCESS))],
            &mut out,
        )
        .unwrap();
        assert_eq!(
            written(&mut out),
            [Inbound::PubRec {
                packet_id: 9,
                reason: 0
            }]
        );

        let told = link
            .from_remote(Inbound::Publish(publish("hq/other", 10)), &mut out)
            .unwrap();
        assert!(told.is_empty());
        let told = link
            .from_remote(Inbound::PubRel { packet_id: 10 }, &mut out)
            .unwrap();
        assert!(told.is_empty());
        assert_eq!(
            written(&mut out),
            [
                Inbound::PubRec {
                    packet_id: 10,
                    reason: 0
                },
                Inbound::PubComp { packet_id: 10 }
            ]
        );
    }

    #[test]
    fn a_local_refusal_of_a_remote_message_ends_the_connection_so_the_remote_keeps_it() {
        let (mut link, _) = link_with(ConnAck::default());
        let mut out = BytesMut::new();
        let refused = link.from_local(
            vec![Packet::PubAck(Ack::new(9, ReasonCode::QUOTA_EXCEEDED))],
            &mut out,
        );
        assert_eq!(refused, Err(LinkError::LocalRefusal(0x97)));
        assert!(out.is_empty());
    }

    #[test]
    fn pingreq_goes_after_a_silent_keep_alive_and_no_answer_ends_the_link() {
        let (mut link, _) = link_with(ConnAck::default());
        let mut out = BytesMut::new();
        assert_eq!(link.keep_alive(9_999, &mut out), Ok(Some(10_000)));
        assert!(out.is_empty());
        link.wrote(5_000);
        assert_eq!(link.keep_alive(10_000, &mut out), Ok(Some(15_000)));
        assert_eq!(link.keep_alive(15_000, &mut out), Ok(Some(25_000)));
        assert_eq!(out.as_ref(), [0xc0, 0x00]);
        out.clear();
        link.wrote(15_000);
        link.from_remote(Inbound::PingResp, &mut out).unwrap();
        assert_eq!(link.keep_alive(16_000, &mut out), Ok(Some(25_000)));
        assert!(out.is_empty());
        assert_eq!(link.keep_alive(25_000, &mut out), Ok(Some(35_000)));
        link.wrote(25_000);
        assert_eq!(link.keep_alive(35_000, &mut out), Err(LinkError::KeepAlive));
    }

    #[test]
    fn a_refused_remote_subscription_is_reported() {
        let (mut link, status) = link_with(ConnAck::default());
        let mut out = BytesMut::new();
        assert!(link.subscribe(65_535, &mut out).unwrap());
        assert!(link.is_subscribing());
        link.from_remote(
            Inbound::SubAck {
                packet_id: 65_535,
                codes: vec![0x80],
            },
            &mut out,
        )
        .unwrap();
        assert!(!link.is_subscribing());
        let error = status.report(Default::default()).last_error.unwrap();
        assert!(error.contains("hq/cmd/#"), "{error}");
        assert_eq!(
            link.from_remote(
                Inbound::SubAck {
                    packet_id: 1,
                    codes: vec![0]
                },
                &mut out
            ),
            Err(LinkError::Unexpected("a SUBACK"))
        );
    }
}
