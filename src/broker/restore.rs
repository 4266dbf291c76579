//! Rebuilding the broker's state from what the store held at start.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::BrokerState;
use crate::router::Subscriber;
use crate::session::{Owner, Session};
use crate::store::{Record, Snapshot};
use crate::stream::subscription::stream_subscription;
use crate::topic;

/// Restores persistent sessions (subscriptions, stored deliveries, inbound
/// QoS 2 packet ids, wills still due) and retained messages, and arms their
/// timers. Expiry counts wall-clock time, so time spent stopped counts too:
/// what expired meanwhile is gone (and its record deleted), and a will
/// whose delay passed goes out now.
pub(super) fn restore(broker: &Arc<BrokerState>, mut snapshot: Snapshot, now: u64) {
    {
        let mut trie = broker.retained.write();
        for message in std::mem::take(&mut snapshot.retained) {
            if message.is_expired(now) {
                broker
                    .journal
                    .append(Record::DeleteRetained(message.topic.clone()));
            } else {
                // Already on disk: only memory and the expiry timer.
                broker.hold_retained(&mut trie, &message);
            }
        }
    }
    let mut wills = Vec::new();
    for record in std::mem::take(&mut snapshot.sessions) {
        let client_id: Arc<str> = record.client_id.as_str().into();
        // A session still connected when the broker stopped counts as
        // disconnected from now on.
        let disconnected_at = record.disconnected_at_ms.unwrap_or(now);
        let expiry_secs = record.expiry_secs.min(broker.max_session_expiry());
        let expired = expiry_secs != u32::MAX
            && disconnected_at.saturating_add(u64::from(expiry_secs) * 1000) <= now;
        if expired {
            broker
                .journal
                .append(Record::DeleteSession(client_id.clone()));
            // A will still due when the session ended goes out now.
            if let Some(will) = record.will {
                wills.push((client_id, will));
            }
            continue;
        }
        let session = Arc::new(Session::new(client_id.clone(), broker.session_config()));
        let mut state = session.lock();
        Session::set_expiry(&mut state, &session, expiry_secs);
        state.disconnected_at_ms = Some(disconnected_at);
        let subscriptions = snapshot
            .subscriptions
            .remove(&record.client_id)
            .unwrap_or_default();
        for (raw, entry) in &subscriptions {
            let Ok(parsed) = topic::parse_filter(raw, broker.topic_limits()) else {
                continue;
            };
            state.subscribe(raw, *entry);
            if matches!(stream_subscription(&parsed), Ok(Some(_))) {
                // Joins its group when a client resumes the session.
                continue;
            }
            broker.index.subscribe(
                parsed.filter,
                parsed.share_group,
                Subscriber {
                    session: session.clone(),
                    options: entry.options,
                    id: entry.id,
                },
            );
        }
        if let Some(stored) = snapshot.deliveries.remove(&record.client_id) {
            state
                .outbound
                .restore(stored.into_iter().map(|s| (s.delivery, s.sent)));
        }
        if let Some(spilled) = snapshot.spilled.remove(&record.client_id) {
            state.outbound.restore_spilled(spilled);
        }
        if let Some(ids) = snapshot.inbound_qos2.remove(&record.client_id) {
            state.restore_inbound_qos2(ids);
        }
        let mut changed = record.disconnected_at_ms.is_none() || expiry_secs != record.expiry_secs;
        let will = record.will.map(Box::new);
        if let Some(will) =
            broker.arm_disconnected(&mut state, &client_id, will, disconnected_at, now)
        {
            wills.push((client_id.clone(), will));
            changed = true;
        }
        state.stored = true;
        if changed {
            broker.persist_session(&session, &mut state);
        }
        drop(state);
        broker.sessions.insert(client_id, session);
        broker.session_count.fetch_add(1, Ordering::AcqRel);
    }
    // The store keeps no usernames: whose will it was is unknown now.
    for (client_id, will) in wills {
        broker.publish_will(&client_id, &Owner::Unknown, will, now);
    }
}
