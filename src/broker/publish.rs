//! Inbound PUBLISH: topic aliases, validation, the receiver side of QoS 1
//! and QoS 2, retained messages, and routing.

use std::sync::Arc;

use super::Routed;
use super::client::{Client, Close};
use crate::protocol::{Ack, Packet, Publish, QoS, ReasonCode, Version};
use crate::router::Message;
use crate::store::StoreError;
use crate::topic;

impl Client {
    pub(super) fn on_publish(&mut self, mut publish: Publish, now_ms: u64) -> Result<(), Close> {
        self.resolve_topic_alias(&mut publish)?;
        if topic::validate_name(&publish.topic, self.broker.topic_limits()).is_err() {
            return Err(Close::ByServer(ReasonCode::TOPIC_NAME_INVALID));
        }
        if let Some(response_topic) = &publish.properties.response_topic
            && topic::validate_name(response_topic, self.broker.topic_limits()).is_err()
        {
            return Err(Close::ByServer(ReasonCode::PROTOCOL_ERROR));
        }
        self.broker.metrics.message_received();

        // A payload announced as UTF-8 that is not is refused [MQTT-3.3.2-4
        // allows PUBACK/PUBREC 0x99 or DISCONNECT 0x99].
        if publish.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&publish.payload).is_err()
        {
            return match publish.qos {
                QoS::AtMostOnce => Err(Close::ByServer(ReasonCode::PAYLOAD_FORMAT_INVALID)),
                QoS::AtLeastOnce | QoS::ExactlyOnce => {
                    let mut ack = Ack::new(publish.packet_id, ReasonCode::PAYLOAD_FORMAT_INVALID);
                    ack.reason_string = self.reason_string("payload is not valid UTF-8");
                    self.outgoing.push(match publish.qos {
                        QoS::AtLeastOnce => Packet::PubAck(ack),
                        _ => Packet::PubRec(ack),
                    });
                    Ok(())
                }
            };
        }

        if publish.qos == QoS::ExactlyOnce {
            let mut state = self.session.lock();
            let receive_maximum = usize::from(self.broker.settings.limits.receive_maximum);
            let first_time = state.receive_qos2(publish.packet_id);
            if first_time && state.inbound_qos2_pending() > receive_maximum {
                state.release_qos2(publish.packet_id);
                return Err(Close::ByServer(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
            }
            drop(state);
            if !first_time {
                // Re-sent before PUBREL: acknowledge again, route nothing.
                self.outgoing.push(Packet::PubRec(Ack::new(
                    publish.packet_id,
                    ReasonCode::SUCCESS,
                )));
                return Ok(());
            }
        }

        let message = Arc::new(Message {
            topic: publish.topic.as_str().into(),
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            expires_at: publish
                .properties
                .message_expiry_interval
                .map(|secs| now_ms + u64::from(secs) * 1000),
            properties: publish.properties,
            publisher: Some(self.session.client_id().clone()),
        });
        let routed = self.store_and_route(&message, publish.qos, publish.packet_id);
        let reason = match routed {
            Ok(routed) => {
                self.wait_for(routed.durable_after);
                if routed.receivers == 0 && self.version == Version::V5 {
                    ReasonCode::NO_MATCHING_SUBSCRIBERS
                } else {
                    ReasonCode::SUCCESS
                }
            }
            Err(error) => {
                tracing::error!(%error, topic = %message.topic, "publish refused: cannot store it");
                if publish.qos == QoS::ExactlyOnce {
                    self.session.lock().release_qos2(publish.packet_id);
                }
                let reason = match error {
                    StoreError::Full(_) => ReasonCode::QUOTA_EXCEEDED,
                    _ => ReasonCode::UNSPECIFIED_ERROR,
                };
                // 3.1.1 acks carry no failure: closing without one makes the
                // client send the message again later [MQTT-4.4.0-1].
                if self.version == Version::V311 && publish.qos != QoS::AtMostOnce {
                    return Err(Close::ByServer(reason));
                }
                self.broker
                    .metrics
                    .message_dropped(self.session.client_id());
                reason
            }
        };
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self
                .outgoing
                .push(Packet::PubAck(Ack::new(publish.packet_id, reason))),
            QoS::ExactlyOnce => self
                .outgoing
                .push(Packet::PubRec(Ack::new(publish.packet_id, reason))),
        }
        Ok(())
    }

    /// Stores the message where it must survive (retained, copies for
    /// persistent subscribers, this session's QoS 2 packet id) and routes it.
    fn store_and_route(
        &mut self,
        message: &Arc<Message>,
        qos: QoS,
        packet_id: u16,
    ) -> Result<Routed, StoreError> {
        let mut retained_write = 0;
        if message.retain {
            retained_write = self.broker.retain(message)?;
        }
        let inbound_qos2 = (qos == QoS::ExactlyOnce
            && self.session.is_persistent()
            && self.broker.store.keeps_messages())
        .then(|| (&**self.session.client_id(), packet_id));
        let mut routed = self.broker.route(message, inbound_qos2)?;
        routed.durable_after = routed.durable_after.max(retained_write);
        Ok(routed)
    }

    /// Replaces a v5 topic alias with its topic, or records a new alias.
    fn resolve_topic_alias(&mut self, publish: &mut Publish) -> Result<(), Close> {
        let Some(alias) = publish.topic_alias.take() else {
            if publish.topic.is_empty() {
                return Err(Close::ByServer(match self.version {
                    Version::V5 => ReasonCode::PROTOCOL_ERROR,
                    Version::V311 => ReasonCode::TOPIC_NAME_INVALID,
                }));
            }
            return Ok(());
        };
        if alias == 0 || alias > self.broker.settings.limits.max_topic_alias {
            return Err(Close::ByServer(ReasonCode::TOPIC_ALIAS_INVALID));
        }
        if publish.topic.is_empty() {
            match self.topic_aliases.get(&alias) {
                Some(topic) => publish.topic = topic.clone(),
                None => return Err(Close::ByServer(ReasonCode::PROTOCOL_ERROR)),
            }
        } else {
            self.topic_aliases.insert(alias, publish.topic.clone());
        }
        Ok(())
    }
}
