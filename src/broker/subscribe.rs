//! SUBSCRIBE and UNSUBSCRIBE, including retained messages sent on subscribe.

use super::client::{Client, Close};
use crate::protocol::{
    Packet, ReasonCode, RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe, Version,
};
use crate::router::Subscriber;
use crate::session::{Delivery, SubscriptionEntry};
use crate::topic;

impl Client {
    pub(super) fn on_subscribe(&mut self, subscribe: Subscribe, now_ms: u64) -> Result<(), Close> {
        let limits = self.broker.topic_limits();
        let max_subscriptions = self.broker.settings.limits.max_subscriptions_per_client;
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        let mut reason_string = None;
        for (raw, options) in subscribe.filters {
            let parsed = match topic::parse_filter(&raw, limits) {
                Ok(parsed) => parsed,
                Err(error) => {
                    tracing::debug!(client_id = %self.client_id(), filter = %raw, %error, "filter refused");
                    reason_string = self.reason_string(&format!("topic filter {error}"));
                    reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                    continue;
                }
            };
            if parsed.share_group.is_some() && options.no_local {
                // [MQTT-3.8.3-4]
                return Err(Close::ByServer(ReasonCode::PROTOCOL_ERROR));
            }
            let entry = SubscriptionEntry {
                options,
                id: subscribe.subscription_id,
            };
            let existed = {
                let mut state = self.session.lock();
                let existed = state.subscriptions.contains_key(&raw);
                if !existed && state.subscriptions.len() >= max_subscriptions {
                    None
                } else {
                    state.subscriptions.insert(raw.clone(), entry);
                    Some(existed)
                }
            };
            let Some(existed) = existed else {
                tracing::warn!(client_id = %self.client_id(), "subscription limit reached");
                reason_string = self.reason_string("too many subscriptions");
                reasons.push(ReasonCode::QUOTA_EXCEEDED);
                continue;
            };
            self.broker.index.subscribe(
                parsed.filter,
                parsed.share_group,
                Subscriber {
                    session: self.session.clone(),
                    options,
                    id: subscribe.subscription_id,
                },
            );
            reasons.push(ReasonCode(options.qos as u8));

            // Shared subscriptions get no retained messages on subscribe.
            let send_retained = parsed.share_group.is_none()
                && match options.retain_handling {
                    RetainHandling::OnSubscribe => true,
                    RetainHandling::OnNewSubscription => !existed,
                    RetainHandling::Never => false,
                };
            if send_retained {
                for message in self.broker.retained.matching(parsed.filter, now_ms) {
                    retained.push(Delivery {
                        qos: message.qos.min(options.qos),
                        retain: true,
                        subscription_ids: subscribe.subscription_id.into_iter().collect(),
                        message,
                        // Not stored: a retained message is sent again on
                        // the next subscribe, not resumed.
                        seq: None,
                    });
                }
            }
        }
        let written = self
            .broker
            .persist_session(&self.session, None, self.will.as_ref());
        self.wait_for(written);
        self.outgoing.push(Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            reasons,
            reason_string: reason_string.filter(|_| self.version == Version::V5),
        }));
        for delivery in retained {
            self.broker.deliver(&self.session, delivery);
        }
        Ok(())
    }

    pub(super) fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let limits = self.broker.topic_limits();
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        for raw in unsubscribe.filters {
            let Ok(parsed) = topic::parse_filter(&raw, limits) else {
                reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            };
            let existed = self.session.lock().subscriptions.remove(&raw).is_some();
            if existed {
                self.broker
                    .index
                    .unsubscribe(parsed.filter, parsed.share_group, self.client_id());
                reasons.push(ReasonCode::SUCCESS);
            } else {
                reasons.push(ReasonCode::NO_SUBSCRIPTION_EXISTED);
            }
        }
        let written = self
            .broker
            .persist_session(&self.session, None, self.will.as_ref());
        self.wait_for(written);
        self.outgoing.push(Packet::UnsubAck(UnsubAck {
            packet_id: unsubscribe.packet_id,
            reasons,
        }));
    }
}
