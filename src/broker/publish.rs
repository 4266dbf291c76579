//! Inbound PUBLISH: topic aliases, validation, the receiver side of QoS 1
//! and QoS 2, retained messages, and routing.

use std::sync::Arc;

use bytes::Bytes;

use super::client::{Client, Close};
use super::consume::DEAD_LETTER_PREFIX;
use crate::delay::{DelayError, delayed_topic};
use crate::protocol::{Ack, Message, Packet, Publish, QoS, ReasonCode, Version};
use crate::store::Ticket;
use crate::topic;

/// Payloads below this size are copied out of the read buffer, so a small
/// message kept in a queue does not keep a whole buffer alive.
const COPY_PAYLOAD_BELOW: usize = 64 * 1024;

impl Client {
    pub(super) fn on_publish(&mut self, mut publish: Publish, now_ms: u64) -> Result<(), Close> {
        let topic = self.resolve_topic_alias(&mut publish)?;
        self.count_against_publish_limits(&topic, &publish, now_ms)?;
        if topic::validate_name(&topic, self.broker.topic_limits()).is_err() {
            return Err(Close::ByServer(ReasonCode::TOPIC_NAME_INVALID));
        }
        if let Some(response_topic) = &publish.properties.response_topic
            && topic::validate_name(response_topic, self.broker.topic_limits()).is_err()
        {
            return Err(Close::ByServer(ReasonCode::PROTOCOL_ERROR));
        }
        self.broker.metrics.message_received(publish.qos);

        // A payload announced as UTF-8 that is not is refused [MQTT-3.3.2-4
        // allows PUBACK/PUBREC 0x99 or DISCONNECT 0x99].
        if publish.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&publish.payload).is_err()
        {
            return match publish.qos {
                QoS::AtMostOnce => Err(Close::ByServer(ReasonCode::PAYLOAD_FORMAT_INVALID)),
                QoS::AtLeastOnce | QoS::ExactlyOnce => {
                    let reason_string = self.reason_string("payload is not valid UTF-8");
                    self.acknowledge(&publish, ReasonCode::PAYLOAD_FORMAT_INVALID, reason_string);
                    Ok(())
                }
            };
        }

        {
            let mut state = self.current()?;
            if publish.qos == QoS::ExactlyOnce {
                match state.receive_qos2(publish.packet_id) {
                    Err(ticket) => {
                        // Re-sent before PUBREL: acknowledged again, routed
                        // nothing, and only once the first copy is durable.
                        drop(state);
                        self.wait_for(ticket);
                        self.acknowledge(&publish, ReasonCode::SUCCESS, None);
                        return Ok(());
                    }
                    Ok(()) => {
                        let receive_maximum =
                            usize::from(self.broker.settings.limits.receive_maximum);
                        if state.inbound_qos2_pending() > receive_maximum {
                            state.release_qos2(publish.packet_id);
                            return Err(Close::ByServer(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
                        }
                    }
                }
            }
        }

        // Only the broker writes `$SYS/...`: refused as the ACL refuses (v5
        // 0x87; 3.1.1 acknowledged and dropped), as in Mosquitto, where that
        // rule sits in front of every ACL check.
        if super::sys::reserved_for_the_broker(&topic) {
            self.broker
                .metrics
                .acl_publish_denied(self.client_id(), &topic);
            self.deny_publish(&publish);
            return Ok(());
        }
        // After the QoS 2 check: a re-sent PUBLISH the broker had accepted
        // before an ACL reload is acknowledged as it was the first time.
        if !self.may_publish(&topic) {
            self.deny_publish(&publish);
            return Ok(());
        }

        let payload = if publish.payload.len() < COPY_PAYLOAD_BELOW {
            Bytes::copy_from_slice(&publish.payload)
        } else {
            publish.payload.clone()
        };
        let message = Arc::new(Message {
            topic,
            payload,
            qos: publish.qos,
            retain: publish.retain,
            expires_at: publish
                .properties
                .message_expiry_interval
                .take()
                .map(|secs| now_ms + u64::from(secs) * 1000),
            properties: std::mem::take(&mut publish.properties),
            publisher: Some(self.session.client_id().clone()),
        });
        match self.store_and_route(&message, publish.packet_id, now_ms) {
            Ok((receivers, ticket)) => {
                if publish.qos == QoS::ExactlyOnce {
                    self.session
                        .lock()
                        .set_qos2_ticket(publish.packet_id, ticket);
                }
                self.wait_for(ticket);
                let reason = if receivers == 0 && self.version == Version::V5 {
                    ReasonCode::NO_MATCHING_SUBSCRIBERS
                } else {
                    ReasonCode::SUCCESS
                };
                self.acknowledge(&publish, reason, None);
                Ok(())
            }
            Err(refusal) => {
                if publish.qos == QoS::ExactlyOnce {
                    self.session.lock().release_qos2(publish.packet_id);
                }
                self.broker
                    .metrics
                    .publish_refused(self.client_id(), refusal.text);
                // 3.1.1 acks carry no failure: closing without one makes the
                // client send the message again later [MQTT-4.4.0-1].
                if self.version == Version::V311 && publish.qos != QoS::AtMostOnce {
                    return Err(Close::ByServer(refusal.reason));
                }
                let reason_string = self.reason_string(refusal.text);
                self.acknowledge(&publish, refusal.reason, reason_string);
                Ok(())
            }
        }
    }

    /// Counts a PUBLISH against the client's publish limits. Passing one
    /// ends the connection (v5: DISCONNECT 0x96 Message rate too high)
    /// before the message is routed or acknowledged, so a QoS 1/2 message
    /// comes again with the client's next connection. Disconnecting, not
    /// throttling: a client that keeps its rate is never slowed, and one
    /// that does not is told so in the one code the protocol has for it.
    fn count_against_publish_limits(
        &mut self,
        topic: &str,
        publish: &Publish,
        now_ms: u64,
    ) -> Result<(), Close> {
        let Some(extras) = self.extras.as_mut() else {
            return Ok(());
        };
        let Some(limits) = extras.publish_limits.as_mut() else {
            return Ok(());
        };
        let size = topic.len() + publish.payload.len() + publish.properties.size();
        limits.admit(size, now_ms).map_err(|exceeded| {
            self.broker.metrics.publish_rate_breach(
                exceeded,
                self.session.client_id(),
                extras.peer,
            );
            Close::ByServer(ReasonCode::MESSAGE_RATE_TOO_HIGH)
        })
    }

    /// A PUBLISH the ACL denies is dropped. v5 tells a QoS 1/2 publisher
    /// (0x87, which ends a QoS 2 flow at PUBREC); 3.1.1 has no way to, so
    /// its publisher is acknowledged as if the message had gone, as
    /// Mosquitto does (a QoS 2 packet id then waits for PUBREL as usual).
    fn deny_publish(&mut self, publish: &Publish) {
        match self.version {
            Version::V5 => {
                if publish.qos == QoS::ExactlyOnce {
                    self.session.lock().release_qos2(publish.packet_id);
                }
                let reason_string = self.reason_string("not authorized to publish to this topic");
                self.acknowledge(publish, ReasonCode::NOT_AUTHORIZED, reason_string);
            }
            Version::V311 => self.acknowledge(publish, ReasonCode::SUCCESS, None),
        }
    }

    /// PUBACK or PUBREC for a QoS 1/2 PUBLISH (nothing for QoS 0).
    fn acknowledge(
        &mut self,
        publish: &Publish,
        reason: ReasonCode,
        reason_string: Option<String>,
    ) {
        let ack = Ack {
            packet_id: publish.packet_id,
            reason,
            reason_string,
        };
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.outgoing.push(Packet::PubAck(ack)),
            QoS::ExactlyOnce => self.outgoing.push(Packet::PubRec(ack)),
        }
    }

    /// Retains (when asked) and routes an accepted message, journalling what
    /// must survive: the retained message, copies for persistent
    /// subscribers, and this session's QoS 2 packet id. Checks every limit
    /// first, so a refused publish changes nothing. Returns the receivers
    /// and the ticket the acknowledgement waits for.
    fn store_and_route(
        &mut self,
        message: &Arc<Message>,
        packet_id: u16,
        now_ms: u64,
    ) -> Result<(usize, Ticket), Refused> {
        let broker = &self.broker;
        if message.retain || message.qos != QoS::AtMostOnce {
            broker.journal.accepting().map_err(|_| Refused {
                reason: ReasonCode::QUOTA_EXCEEDED,
                text: "the broker's storage is full",
            })?;
        }
        if message.qos != QoS::AtMostOnce
            && broker.some_queue_refuses
            && broker.a_queue_is_full(message)
        {
            return Err(Refused {
                reason: ReasonCode::QUOTA_EXCEEDED,
                text: "a subscriber's queue is full",
            });
        }
        let inbound_qos2 = (message.qos == QoS::ExactlyOnce && broker.stores_for(&self.session))
            .then(|| (self.session.client_id(), packet_id));
        if message.topic.starts_with(DEAD_LETTER_PREFIX) {
            return Err(Refused {
                reason: ReasonCode::NOT_AUTHORIZED,
                text: "only the broker publishes dead letters to $dlq/...",
            });
        }
        match delayed_topic(&message.topic) {
            Ok(None) => {}
            Ok(Some(delayed)) => {
                // Stored now, published (and retained) when due.
                return broker
                    .delay(message, delayed, inbound_qos2, now_ms)
                    .map(|ticket| (1, ticket))
                    .map_err(|refused| Refused {
                        reason: refused.reason,
                        text: refused.text,
                    });
            }
            Err(DelayError::BadSeconds(_)) => {
                return Err(Refused {
                    reason: ReasonCode::TOPIC_NAME_INVALID,
                    text: "$delayed/{seconds}/{topic}: the delay is not a whole number of seconds",
                });
            }
            Err(DelayError::NoTopic) => {
                return Err(Refused {
                    reason: ReasonCode::TOPIC_NAME_INVALID,
                    text: "$delayed/{seconds}/{topic}: no topic to publish to",
                });
            }
        }
        if !message.retain {
            let routed = broker.route(message, inbound_qos2, now_ms);
            return Ok((routed.receivers, routed.ticket));
        }
        // The retained store stays write-locked while the message is routed:
        // a concurrent SUBSCRIBE sees it either as retained or as live.
        let mut trie = broker.retained.write();
        if !broker.retained_fits(&trie, message) {
            return Err(Refused {
                reason: ReasonCode::QUOTA_EXCEEDED,
                text: "retained message limit reached",
            });
        }
        let retained = broker.retain(&mut trie, message);
        let routed = broker.route(message, inbound_qos2, now_ms);
        drop(trie);
        Ok((routed.receivers, routed.ticket.max(retained)))
    }

    /// The topic of a PUBLISH, after its v5 topic alias: replaced by the
    /// alias's topic, or recorded as the alias's new topic.
    fn resolve_topic_alias(&mut self, publish: &mut Publish) -> Result<Arc<str>, Close> {
        let Some(alias) = publish.topic_alias.take() else {
            if publish.topic.is_empty() {
                return Err(Close::ByServer(match self.version {
                    Version::V5 => ReasonCode::PROTOCOL_ERROR,
                    Version::V311 => ReasonCode::TOPIC_NAME_INVALID,
                }));
            }
            return Ok(std::mem::take(&mut publish.topic).into());
        };
        if alias == 0 || alias > self.broker.settings.limits.max_topic_alias {
            return Err(Close::ByServer(ReasonCode::TOPIC_ALIAS_INVALID));
        }
        let aliases = &mut self.extras.get_or_insert_default().topic_aliases;
        let known = aliases.iter_mut().find(|(a, _)| *a == alias);
        if publish.topic.is_empty() {
            return match known {
                Some((_, topic)) => Ok(topic.clone()),
                None => Err(Close::ByServer(ReasonCode::PROTOCOL_ERROR)),
            };
        }
        let topic: Arc<str> = std::mem::take(&mut publish.topic).into();
        match known {
            Some((_, existing)) => *existing = topic.clone(),
            None => aliases.push((alias, topic.clone())),
        }
        Ok(topic)
    }
}

/// Why an otherwise valid publish was not accepted.
struct Refused {
    reason: ReasonCode,
    text: &'static str,
}
