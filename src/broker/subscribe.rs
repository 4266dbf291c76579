//! SUBSCRIBE and UNSUBSCRIBE, including retained messages sent on subscribe.

use super::client::{Client, Close};
use crate::protocol::{
    Packet, ReasonCode, RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe, Version,
};
use crate::router::Subscriber;
use crate::session::{Delivery, SubscriptionEntry};
use crate::store::Ticket;
use crate::stream::subscription::{OFFSET_PROPERTY, StreamOffset, stream_subscription};
use crate::topic;

impl Client {
    /// Registers each filter and queues the retained messages it matches,
    /// with the retained store read-locked and the session locked
    /// throughout: a retained publish to a matching topic either happened
    /// before (and is in the snapshot) or happens after (and is queued
    /// live, behind the snapshot), and a live publish that finds the new
    /// subscription queues behind the snapshot too.
    ///
    /// A stream filter (`$stream/...`, `$share/{group}/$stream/...`) is
    /// kept with the session but joins a consumer group instead of the
    /// index, once the locks are released; the v5 user property
    /// `stream-offset` moves the group first.
    pub(super) fn on_subscribe(
        &mut self,
        mut subscribe: Subscribe,
        now_ms: u64,
    ) -> Result<(), Close> {
        if self
            .extras
            .as_ref()
            .is_some_and(|extras| extras.remote_bridge)
        {
            // What Mosquitto's bridge bit asks for: nothing the bridge
            // publishes comes back to it, and retained stays retained.
            for (_, options) in &mut subscribe.filters {
                options.no_local = true;
                options.retain_as_published = true;
            }
        }
        let reset = match subscribe
            .user_properties
            .iter()
            .find(|(name, _)| name == OFFSET_PROPERTY)
            .map(|(_, value)| StreamOffset::parse(value))
            .transpose()
        {
            Ok(reset) => reset,
            Err(problem) => {
                return self.refuse_all(
                    &subscribe,
                    ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
                    &problem,
                );
            }
        };
        let broker = self.broker.clone();
        let limits = broker.topic_limits();
        let max_subscriptions = broker.settings.limits.max_subscriptions_per_client;
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut reason_string = None;
        let retained = broker.retained.read();
        let mut state = self.current()?;
        let mut ticket = Ticket::NONE;
        let mut joins = Vec::new();
        for (raw, options) in &subscribe.filters {
            let parsed = match topic::parse_filter(raw, limits) {
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
            let stream = match stream_subscription(&parsed) {
                Ok(Some(read)) if broker.streams().find(read.stream).is_none() => {
                    Err(format!("no stream is called `{}`", read.stream))
                }
                Ok(read) => Ok(read.map(|read| read.stream)),
                Err(problem) => Err(problem),
            };
            let stream = match stream {
                Ok(stream) => stream,
                Err(problem) => {
                    tracing::debug!(client_id = %self.client_id(), filter = %raw, %problem, "stream subscription refused");
                    reason_string = self.reason_string(&problem);
                    reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                    continue;
                }
            };
            let reads_stream = stream.is_some();
            // On the inner filter of `$share/{group}/...`, or on every
            // filter of a stream (3.1.1 encodes the refusal as 0x80).
            if !self.may_subscribe(parsed.filter, stream) {
                reason_string = self.reason_string("not authorized to read this filter");
                reasons.push(ReasonCode::NOT_AUTHORIZED);
                continue;
            }
            if state.subscription_count() >= max_subscriptions && !state.has_subscription(raw) {
                tracing::warn!(client_id = %self.client_id(), "subscription limit reached");
                reason_string = self.reason_string("too many subscriptions");
                reasons.push(ReasonCode::QUOTA_EXCEEDED);
                continue;
            }
            let entry = SubscriptionEntry {
                options: *options,
                id: subscribe.subscription_id,
            };
            let existed = state.subscribe(raw, entry);
            ticket = broker.persist_subscription(&self.session, &state, raw);
            reasons.push(ReasonCode(options.qos as u8));
            if reads_stream {
                joins.push((raw.as_str(), options.qos));
                continue;
            }
            broker.index.subscribe(
                parsed.filter,
                parsed.share_group,
                Subscriber {
                    session: self.session.clone(),
                    options: *options,
                    id: subscribe.subscription_id,
                },
            );

            // Shared subscriptions get no retained messages on subscribe.
            let send_retained = parsed.share_group.is_none()
                && match options.retain_handling {
                    RetainHandling::OnSubscribe => true,
                    RetainHandling::OnNewSubscription => !existed,
                    RetainHandling::Never => false,
                };
            if send_retained {
                for message in retained.matching(parsed.filter, now_ms) {
                    if !self.may_receive(&message.topic) {
                        continue;
                    }
                    let delivery = Delivery {
                        qos: message.qos.min(options.qos),
                        retain: true,
                        subscription_ids: subscribe.subscription_id.into_iter().collect(),
                        message,
                        // Not stored: a retained message is sent again on
                        // the next subscribe, not resumed.
                        seq: None,
                        stream: None,
                    };
                    broker.enqueue(&self.session, &mut state, delivery);
                }
            }
        }
        drop(retained);
        drop(state);
        self.wait_for(ticket);
        self.outgoing.push(Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            reasons,
            reason_string: reason_string.filter(|_| self.version == Version::V5),
        }));
        for (raw, qos) in joins {
            broker.with_stream_subscription(raw, |read| {
                broker.join_stream(&self.session, self.connection_id, read, qos, reset, now_ms);
            });
        }
        Ok(())
    }

    /// Answers a SUBSCRIBE with `reason` for every filter.
    fn refuse_all(
        &mut self,
        subscribe: &Subscribe,
        reason: ReasonCode,
        problem: &str,
    ) -> Result<(), Close> {
        tracing::debug!(client_id = %self.client_id(), %problem, "SUBSCRIBE refused");
        let reason_string = self.reason_string(problem);
        self.outgoing.push(Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            reasons: vec![reason; subscribe.filters.len()],
            reason_string: reason_string.filter(|_| self.version == Version::V5),
        }));
        Ok(())
    }

    pub(super) fn on_unsubscribe(
        &mut self,
        unsubscribe: Unsubscribe,
        now_ms: u64,
    ) -> Result<(), Close> {
        let broker = self.broker.clone();
        let limits = broker.topic_limits();
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        let mut state = self.current()?;
        let mut ticket = Ticket::NONE;
        let mut leaves = Vec::new();
        for raw in &unsubscribe.filters {
            let Ok(parsed) = topic::parse_filter(raw, limits) else {
                reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            };
            if state.unsubscribe(raw) {
                ticket = broker.persist_subscription(&self.session, &state, raw);
                match stream_subscription(&parsed) {
                    Ok(Some(_)) => leaves.push(raw.as_str()),
                    _ => {
                        broker
                            .index
                            .unsubscribe(parsed.filter, parsed.share_group, &self.session);
                    }
                }
                reasons.push(ReasonCode::SUCCESS);
            } else {
                reasons.push(ReasonCode::NO_SUBSCRIPTION_EXISTED);
            }
        }
        drop(state);
        self.wait_for(ticket);
        self.outgoing.push(Packet::UnsubAck(UnsubAck {
            packet_id: unsubscribe.packet_id,
            reasons,
        }));
        if !leaves.is_empty() {
            // What was acknowledged before the UNSUBSCRIBE still commits.
            self.settle_streamed(now_ms);
        }
        for raw in leaves {
            broker.with_stream_subscription(raw, |read| {
                broker.leave_stream(&self.session, self.connection_id, read, now_ms);
            });
        }
        Ok(())
    }
}

impl Client {
    /// Makes a bridge's local subscriptions those of its `out` rules: each
    /// with the rule's QoS, No Local (what the bridge brought in never goes
    /// back), Retain As Published (the remote sees the retain flag), and
    /// retained messages only for a rule that is new; the filters of rules
    /// no longer configured are dropped.
    pub fn subscribe_bridge(
        &mut self,
        rules: &[crate::bridge::spec::TopicRule],
        now_ms: u64,
    ) -> Result<(), Close> {
        let mut wanted: Vec<(String, crate::protocol::SubscriptionOptions)> = Vec::new();
        for rule in rules.iter().filter(|rule| rule.goes_out()) {
            let filter = rule.local_filter();
            match wanted.iter_mut().find(|(known, _)| *known == filter) {
                Some((_, options)) => options.qos = options.qos.max(rule.qos),
                None => wanted.push((
                    filter,
                    crate::protocol::SubscriptionOptions {
                        qos: rule.qos,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::OnNewSubscription,
                    },
                )),
            }
        }
        let stale: Vec<String> = {
            let state = self.current()?;
            state
                .subscriptions()
                .map(|(filter, _)| filter)
                .filter(|filter| !wanted.iter().any(|(known, _)| known == filter))
                .map(str::to_string)
                .collect()
        };
        if !stale.is_empty() {
            self.on_unsubscribe(
                Unsubscribe {
                    packet_id: 1,
                    filters: stale,
                    user_properties: Vec::new(),
                },
                now_ms,
            )?;
        }
        if !wanted.is_empty() {
            self.on_subscribe(
                Subscribe {
                    packet_id: 1,
                    filters: wanted,
                    subscription_id: None,
                    user_properties: Vec::new(),
                },
                now_ms,
            )?;
        }
        Ok(())
    }
}
