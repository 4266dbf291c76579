//! CONNECT: validation, client identifier, session create / resume /
//! takeover, and the CONNACK.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::mapref::entry::Entry;
use tokio::sync::oneshot;

use super::client::Client;
use super::{BrokerState, now_ms};
use crate::protocol::{ConnAck, ConnAckProperties, Connect, Packet, ReasonCode, Version, Will};
use crate::session::{ConnectionLink, Session, Takeover};
use crate::topic;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// A refused CONNECT: the CONNACK to send (if the version has a code for the
/// failure) before closing.
#[derive(Debug)]
pub struct Refusal {
    pub connack: Option<Box<ConnAck>>,
    pub reason: ReasonCode,
}

fn refuse(version: Version, reason: ReasonCode) -> Refusal {
    // 3.1.1 has CONNACK codes only for a few failures; for the rest the
    // server just closes [MQTT-3.2.2-6 lists the codes].
    let has_code = match version {
        Version::V5 => true,
        Version::V311 => reason.v311_connack_code() != 0x05 || reason == ReasonCode::NOT_AUTHORIZED,
    };
    Refusal {
        connack: has_code.then(|| {
            Box::new(ConnAck {
                session_present: false,
                reason,
                properties: ConnAckProperties::default(),
            })
        }),
        reason,
    }
}

/// Whether a will as sent in CONNECT may be accepted.
fn check_will(broker: &BrokerState, will: &Will) -> Result<(), ReasonCode> {
    topic::validate_name(&will.topic, broker.topic_limits())
        .map_err(|_| ReasonCode::TOPIC_NAME_INVALID)?;
    if will.properties.payload_format_indicator == Some(1)
        && std::str::from_utf8(&will.payload).is_err()
    {
        return Err(ReasonCode::PAYLOAD_FORMAT_INVALID);
    }
    if let Some(response_topic) = &will.properties.response_topic {
        topic::validate_name(response_topic, broker.topic_limits())
            .map_err(|_| ReasonCode::PROTOCOL_ERROR)?;
    }
    Ok(())
}

fn generated_client_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("petrel-{:x}-{n}", now_ms())
}

impl Client {
    /// Accepts or refuses a CONNECT. On success the client is attached to its
    /// session, taking over any earlier connection. Returns the client, the
    /// receiver that fires when a later connection takes this one over, and,
    /// when this one took another over, the signal that the old connection has
    /// finished: wait for it, then call `resume`.
    pub fn connect(broker: &Arc<BrokerState>, connect: Connect) -> Result<Connected, Refusal> {
        let version = connect.version;
        let limits = &broker.settings.limits;
        if !broker.settings.allow_anonymous && connect.username.is_none() {
            return Err(refuse(version, ReasonCode::NOT_AUTHORIZED));
        }
        if connect.authentication_method.is_some() {
            return Err(refuse(version, ReasonCode::BAD_AUTHENTICATION_METHOD));
        }
        if let Some(will) = &connect.will {
            check_will(broker, will).map_err(|reason| refuse(version, reason))?;
        }
        let mut properties = ConnAckProperties::default();
        let client_id = if connect.client_id.is_empty() {
            // 3.1.1 allows an empty id only with a clean session [MQTT-3.1.3-8].
            if version == Version::V311 && !connect.clean_start {
                return Err(refuse(version, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID));
            }
            let id = generated_client_id();
            if version == Version::V5 {
                properties.assigned_client_identifier = Some(id.clone());
            }
            id
        } else {
            connect.client_id.clone()
        };
        let expiry_secs = match version {
            Version::V311 if connect.clean_start => 0,
            Version::V311 => u32::MAX,
            Version::V5 => {
                let granted = connect.session_expiry.min(limits.max_session_expiry_secs);
                if granted != connect.session_expiry {
                    properties.session_expiry_interval = Some(granted);
                }
                granted
            }
        };
        let mut keep_alive = connect.keep_alive;
        let max_keep_alive = limits.max_keepalive_secs;
        if max_keep_alive > 0 && (keep_alive == 0 || keep_alive > max_keep_alive) {
            keep_alive = max_keep_alive;
            properties.server_keep_alive = Some(keep_alive);
        }

        let connection_id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
        let (kick, kicked) = oneshot::channel();
        let link = ConnectionLink {
            id: connection_id,
            kick,
        };
        let client_id: Arc<str> = client_id.into();
        let (session, session_present, replaced) =
            attach_session(broker, &client_id, connect.clean_start, link);
        let previous_finished = replaced.map(|old| {
            let (done, finished) = oneshot::channel();
            // The old task may already be gone; then `finished` fires at once.
            let _ = old.kick.send(Takeover {
                reason: ReasonCode::SESSION_TAKEN_OVER,
                done,
            });
            finished
        });

        let window = connect.receive_maximum.min(limits.max_inflight);
        {
            let mut state = session.lock();
            Session::set_expiry(&mut state, &session, expiry_secs);
            state.outbound.set_window(window);
        }
        let written = broker.persist_session(&session, None, connect.will.as_ref());

        let mut client = Client {
            broker: broker.clone(),
            session,
            connection_id,
            version,
            keep_alive,
            will: connect.will,
            connected_with_zero_expiry: expiry_secs == 0,
            topic_aliases: HashMap::new(),
            problem_information: connect.request_problem_information,
            outgoing: Vec::new(),
            durable_after: written,
        };
        if version == Version::V5 {
            properties.receive_maximum = Some(limits.receive_maximum);
            properties.maximum_packet_size = Some(limits.max_packet_size);
            properties.topic_alias_maximum = Some(limits.max_topic_alias);
            // Retain, wildcard, subscription identifier and shared
            // subscription support are all "available" when absent, so they
            // are not sent: a shorter CONNACK fits a client's small Maximum
            // Packet Size [MQTT-3.1.2-24].
            if connect.request_response_information {
                properties.response_information = Some(format!("petrel/response/{client_id}"));
            }
        }
        client.outgoing.push(Packet::ConnAck(ConnAck {
            session_present,
            reason: ReasonCode::SUCCESS,
            properties,
        }));
        tracing::info!(
            client_id = %client_id,
            ?version,
            clean_start = connect.clean_start,
            session_present,
            keep_alive,
            "client connected"
        );
        Ok(Connected {
            client,
            kicked,
            previous_finished,
        })
    }

    /// Queues the inflight messages to send again after the CONNACK
    /// [MQTT-4.4.0-1]. Called once any taken-over connection has finished, so
    /// that acknowledgements it had already received count.
    pub fn resume(&mut self) {
        let resend = self.session.lock().outbound.resend(now_ms());
        self.outgoing.extend(resend);
    }
}

/// An accepted CONNECT.
pub struct Connected {
    pub client: Client,
    pub kicked: oneshot::Receiver<Takeover>,
    pub previous_finished: Option<oneshot::Receiver<()>>,
}

/// Finds or creates the session for `client_id` and attaches the new
/// connection to it, under the session map's entry lock so that two CONNECTs
/// with one client id are ordered. Returns the session, whether it was
/// resumed, and the link of the connection it took over, if any.
fn attach_session(
    broker: &Arc<BrokerState>,
    client_id: &Arc<str>,
    clean_start: bool,
    link: ConnectionLink,
) -> (Arc<Session>, bool, Option<ConnectionLink>) {
    let fresh = || Arc::new(Session::new(client_id.clone(), broker.session_config()));
    match broker.sessions.entry(client_id.clone()) {
        Entry::Occupied(entry) if !clean_start => {
            let session = entry.get().clone();
            let replaced = Session::attach(&mut session.lock(), &session, link);
            (session, true, replaced)
        }
        Entry::Occupied(mut entry) => {
            let session = fresh();
            Session::attach(&mut session.lock(), &session, link);
            let old = std::mem::replace(entry.get_mut(), session.clone());
            drop(entry);
            let replaced = old.lock().connection.take();
            discard_session(broker, &old);
            (session, false, replaced)
        }
        Entry::Vacant(entry) => {
            let session = fresh();
            Session::attach(&mut session.lock(), &session, link);
            entry.insert(session.clone());
            (session, false, None)
        }
    }
}

/// Drops what a session replaced by clean start held: its subscriptions
/// and its stored record.
pub(super) fn discard_session(broker: &BrokerState, old: &Arc<Session>) {
    let filters: Vec<String> = old.lock().subscriptions.drain().map(|(f, _)| f).collect();
    for raw in filters {
        if let Ok(parsed) = topic::parse_filter(&raw, broker.topic_limits()) {
            broker
                .index
                .unsubscribe(parsed.filter, parsed.share_group, old.client_id());
        }
    }
    if let Err(error) = broker.store.delete_session(old.client_id()) {
        tracing::error!(%error, client_id = %old.client_id(), "cannot delete stored session");
    }
}
