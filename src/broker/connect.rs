//! CONNECT: validation, client identifier, session create / resume /
//! takeover, and the CONNACK.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::mapref::entry::Entry;

use super::BrokerState;
use super::client::{Client, ClientExtras};
use super::enhanced_auth::{Authenticated, EnhancedAuth};
use super::metrics::Peer;
use crate::protocol::{ConnAck, ConnAckProperties, Connect, Packet, ReasonCode, Version, Will};
use crate::session::{
    ConnectionLink, ConnectionSignal, Owner, PublishLimits, QueueLimits, Session, SessionState,
};
use crate::store::{Record, Ticket};
use crate::stream::subscription::stream_subscription;
use crate::topic;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// A refused CONNECT: the CONNACK to send (if the version has a code for the
/// failure) before closing.
#[derive(Debug)]
pub struct Refusal {
    pub connack: Option<Box<ConnAck>>,
    pub reason: ReasonCode,
}

impl Refusal {
    /// The refusal of a CONNECT of `version` with `reason` (admission's
    /// answer, `BrokerState::authenticate`, is sent this way too).
    pub fn new(version: Version, reason: ReasonCode) -> Refusal {
        refuse(version, reason)
    }
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

/// What the connection knows of a CONNECT besides the packet.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The client's address, for the logs of the limits it passes.
    pub peer: Option<SocketAddr>,
    /// The enhanced authentication the connection ran before the CONNACK
    /// (`BrokerState::start_enhanced_auth`), when the CONNECT named a method.
    pub authenticated: Option<Authenticated>,
    /// Set for the local side of one of the broker's own bridges, with the
    /// limits of its queue (what waits for the remote). Its session never
    /// expires and no ACL or per-client limit applies to it.
    pub bridge: Option<QueueLimits>,
}

/// An accepted CONNECT.
pub struct Connected {
    pub client: Client,
    /// How the broker reaches this connection's task.
    pub signal: Arc<ConnectionSignal>,
    /// The connection this one took over, still finishing: wait for it
    /// (bounded), then call `Client::resume`.
    pub previous: Option<Arc<ConnectionSignal>>,
}

impl BrokerState {
    /// Whether a will as sent in CONNECT may be accepted.
    fn check_will(&self, will: &Will) -> Result<(), ReasonCode> {
        topic::validate_name(&will.topic, self.topic_limits())
            .map_err(|_| ReasonCode::TOPIC_NAME_INVALID)?;
        // A will under `$SYS` would forge the broker's own figures.
        if super::sys::reserved_for_the_broker(&will.topic) {
            return Err(ReasonCode::NOT_AUTHORIZED);
        }
        if will.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&will.payload).is_err()
        {
            return Err(ReasonCode::PAYLOAD_FORMAT_INVALID);
        }
        if let Some(response_topic) = &will.properties.response_topic {
            topic::validate_name(response_topic, self.topic_limits())
                .map_err(|_| ReasonCode::PROTOCOL_ERROR)?;
        }
        Ok(())
    }

    /// The longest a session may outlive its connection: the v5 cap and the
    /// expiry of persistent sessions, whichever is shorter.
    pub(super) fn max_session_expiry(&self) -> u32 {
        let limits = &self.settings.limits;
        limits
            .max_session_expiry_secs
            .min(limits.persistent_session_expiry.seconds())
    }
}

fn generated_client_id(now_ms: u64) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("petrel-{now_ms:x}-{n}")
}

/// What attaching to the session map decided.
struct Attached {
    session: Arc<Session>,
    session_present: bool,
    previous: Option<Arc<ConnectionSignal>>,
    /// Wills of the connection or session this one replaced that are due
    /// now, with whose rights they are published under.
    wills: Vec<(Will, Owner)>,
}

impl Client {
    /// Accepts or refuses a CONNECT from nowhere in particular (the core's
    /// tests): `connect_from` without an address or enhanced authentication.
    pub fn connect(
        broker: &Arc<BrokerState>,
        connect: Connect,
        now_ms: u64,
    ) -> Result<Connected, Refusal> {
        Client::connect_from(broker, connect, Origin::default(), now_ms)
    }

    /// Accepts or refuses a CONNECT. On success the client is attached to its
    /// session, taking over any earlier connection.
    pub fn connect_from(
        broker: &Arc<BrokerState>,
        mut connect: Connect,
        origin: Origin,
        now_ms: u64,
    ) -> Result<Connected, Refusal> {
        let version = connect.version;
        let limits = &broker.settings.limits;
        if broker.is_shutting_down() {
            return Err(refuse(version, ReasonCode::SERVER_UNAVAILABLE));
        }
        match (&connect.authentication_method, &origin.authenticated) {
            (None, None) => {}
            // The exchange proved this user (the CONNECT's User Name, if it
            // had one: the exchange checked that).
            (Some(method), Some(authenticated)) if *method == authenticated.method => {
                connect.username = Some(authenticated.username.clone());
            }
            // A method no exchange ran for is one the broker does not
            // support [MQTT-4.12.0-1].
            _ => return Err(refuse(version, ReasonCode::BAD_AUTHENTICATION_METHOD)),
        }
        // Who may connect at all (`allow_anonymous`, the password file) was
        // decided before: `BrokerState::authenticate`. From here on
        // `connect.username` is the name the client was admitted with.
        let username: Option<Arc<str>> = connect.username.as_deref().map(Arc::from);
        if let Some(will) = &connect.will {
            broker
                .check_will(will)
                .map_err(|reason| refuse(version, reason))?;
        }
        let mut properties = ConnAckProperties::default();
        let client_id = if connect.client_id.is_empty() {
            // 3.1.1 allows an empty id only with a clean session [MQTT-3.1.3-8].
            if version == Version::V311 && !connect.clean_start {
                return Err(refuse(version, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID));
            }
            let id = generated_client_id(now_ms);
            if version == Version::V5 {
                properties.assigned_client_identifier = Some(id.clone());
            }
            id
        } else {
            connect.client_id.clone()
        };
        let bridge = origin.bridge;
        if bridge.is_none() && client_id.starts_with(crate::bridge::LOCAL_CLIENT_PREFIX) {
            // The broker's own bridges' sessions: a client taking one over
            // would take what waits for the remote.
            return Err(refuse(version, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID));
        }
        let max_expiry = if bridge.is_some() {
            u32::MAX
        } else {
            broker.max_session_expiry()
        };
        let expiry_secs = match version {
            Version::V311 if connect.clean_start => 0,
            // A 3.1.1 persistent session lives as long as persistent
            // sessions may (Mosquitto's persistent_client_expiration).
            Version::V311 => max_expiry,
            Version::V5 => {
                let granted = connect.session_expiry.min(max_expiry);
                if granted != connect.session_expiry {
                    properties.session_expiry_interval = Some(granted);
                }
                granted
            }
        };
        let mut keep_alive = connect.keep_alive;
        let max_keep_alive = limits.max_keepalive_secs;
        if bridge.is_none()
            && max_keep_alive > 0
            && (keep_alive == 0 || keep_alive > max_keep_alive)
        {
            // v5 is told, and must use it [MQTT-3.2.2-21]; 3.1.1 cannot
            // be, and is held to it all the same: closed when silent for
            // 1.5 times the bound.
            keep_alive = max_keep_alive;
            properties.server_keep_alive = Some(keep_alive);
            broker.metrics.keep_alive_cap();
        }

        let connection_id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
        let signal = Arc::new(ConnectionSignal::default());
        let link = ConnectionLink {
            id: connection_id,
            signal: signal.clone(),
        };
        let client_id: Arc<str> = client_id.into();
        let window = match bridge {
            // As many as the remote takes, which the bridge asks for.
            Some(_) => connect.receive_maximum,
            None => connect.receive_maximum.min(limits.max_inflight),
        };
        let will = connect.will.map(Box::new);
        let owner = match bridge {
            Some(_) => Owner::Bridge,
            None => Owner::of(username.as_ref()),
        };
        let Some(attached) =
            broker.attach(&client_id, connect.clean_start, link, |state, session| {
                Session::set_expiry(state, session, expiry_secs);
                state.outbound.set_window(window);
                state.will = will;
                state.owner = owner;
                if let Some(queue) = bridge {
                    state.outbound.set_limits(queue);
                }
            })
        else {
            broker.metrics.connection_refused();
            tracing::warn!(client_id = %client_id, peer = %Peer(origin.peer), max_sessions = limits.max_sessions, "session limit reached: CONNECT refused");
            return Err(refuse(
                version,
                match version {
                    Version::V5 => ReasonCode::QUOTA_EXCEEDED,
                    Version::V311 => ReasonCode::SERVER_UNAVAILABLE,
                },
            ));
        };
        for (will, owner) in attached.wills {
            broker.publish_will(&client_id, &owner, will, now_ms);
        }

        let mut client = Client {
            broker: broker.clone(),
            session: attached.session,
            connection_id,
            version,
            keep_alive,
            connected_with_zero_expiry: expiry_secs == 0,
            problem_information: connect.request_problem_information,
            extras: ClientExtras::at_connect(
                connect.user_properties,
                PublishLimits::new(limits.publish_rates(), now_ms).filter(|_| bridge.is_none()),
                origin.authenticated.as_ref().map(EnhancedAuth::new),
                origin.peer,
            ),
            outgoing: Vec::new(),
            ticket: Default::default(),
        };
        if username.is_some() {
            client.extras.get_or_insert_default().username = username;
        }
        if bridge.is_some() {
            client.extras.get_or_insert_default().bridge = true;
        }
        if connect.bridge {
            client.extras.get_or_insert_default().remote_bridge = true;
        }
        let ticket = {
            let mut state = client.session.lock();
            broker.persist_session(&client.session, &mut state)
        };
        client.wait_for(ticket);
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
            if let Some(authenticated) = origin.authenticated {
                properties.authentication_method = Some(authenticated.method);
                properties.authentication_data = authenticated.data;
            }
        }
        client.outgoing.push(Packet::ConnAck(ConnAck {
            session_present: attached.session_present,
            reason: ReasonCode::SUCCESS,
            properties,
        }));
        tracing::info!(
            client_id = %client_id,
            peer = %Peer(origin.peer),
            ?version,
            clean_start = connect.clean_start,
            session_present = attached.session_present,
            keep_alive,
            requested_keep_alive = connect.keep_alive,
            "client connected"
        );
        Ok(Connected {
            client,
            signal,
            previous: attached.previous,
        })
    }

    /// Queues the inflight messages to send again after the CONNACK
    /// [MQTT-4.4.0-1]. Called once any taken-over connection has finished
    /// (or stopped being waited for), so that acknowledgements it had
    /// already received count; from here on it may apply none.
    pub fn resume(&mut self, now_ms: u64) {
        // Joined first: what the session still held for its groups is
        // taken back and handed out again, not re-sent as it was.
        self.broker
            .join_streams_of(&self.session, self.connection_id, now_ms);
        let Ok(mut state) = self.current() else {
            return;
        };
        state.draining = None;
        let mut resend = state.outbound.resend(now_ms);
        // Sent before to whoever held the session then: it goes again only
        // if this client may read it (another user may have resumed the
        // session, or the ACL changed meanwhile).
        let before = resend.len();
        resend.retain(|packet| match packet {
            Packet::Deliver(publish) if !self.may_receive(&publish.message.topic) => {
                super::security::withdraw(&mut state.outbound, publish);
                false
            }
            _ => true,
        });
        let ticket = if resend.len() < before {
            self.broker
                .journal_changes(self.session.client_id(), &mut state)
        } else {
            Ticket::NONE
        };
        drop(state);
        self.wait_for(ticket);
        self.outgoing.extend(resend);
    }
}

impl BrokerState {
    /// Finds or creates the session for `client_id` and attaches the new
    /// connection, under the session map's entry lock so that CONNECTs,
    /// expiry and the end of a session for one client id are ordered.
    /// `setup` runs on the locked session once attached. `None`: a new
    /// session would pass `max_sessions`.
    fn attach(
        &self,
        client_id: &Arc<str>,
        clean_start: bool,
        link: ConnectionLink,
        setup: impl FnOnce(&mut SessionState, &Session),
    ) -> Option<Attached> {
        let mut wills = Vec::new();
        let (session, session_present, previous) = match self.sessions.entry(client_id.clone()) {
            Entry::Occupied(entry) if !clean_start => {
                let session = entry.get().clone();
                let mut state = session.lock();
                for timer in state.take_timers() {
                    self.timers.cancel(timer);
                }
                let replaced = Session::attach(&mut state, &session, link);
                // The old connection's will goes out now if it has no delay;
                // a delayed one (or one whose delay was running) is cancelled
                // by this connection [MQTT-3.1.3-9].
                if let Some(will) = state.will.take()
                    && replaced.is_some()
                    && will.delay_interval == 0
                {
                    wills.push((*will, state.owner.clone()));
                }
                setup(&mut state, &session);
                drop(state);
                (session, true, replaced.map(|old| old.signal))
            }
            Entry::Occupied(mut entry) => {
                let session = self.fresh_session(client_id, link, setup);
                let old = std::mem::replace(entry.get_mut(), session.clone());
                let (previous, will) = self.discard(&old);
                drop(entry);
                wills.extend(will);
                (session, false, previous)
            }
            Entry::Vacant(entry) => {
                if !self.reserve_session() {
                    return None;
                }
                let session = self.fresh_session(client_id, link, setup);
                entry.insert(session.clone());
                (session, false, None)
            }
        };
        if let Some(previous) = &previous {
            previous.take_over();
        }
        Some(Attached {
            session,
            session_present,
            previous,
            wills,
        })
    }

    /// A new session for `client_id` with the connection attached and
    /// `setup` run, before the session map makes it visible.
    fn fresh_session(
        &self,
        client_id: &Arc<str>,
        link: ConnectionLink,
        setup: impl FnOnce(&mut SessionState, &Session),
    ) -> Arc<Session> {
        let session = Arc::new(Session::new(client_id.clone(), self.session_config()));
        let mut state = session.lock();
        Session::attach(&mut state, &session, link);
        setup(&mut state, &session);
        drop(state);
        session
    }

    /// Ends a session that is no longer in the session map (or is being
    /// replaced in it, with the entry locked): nothing may change it any
    /// more, its subscriptions leave the index, its stored record goes, and
    /// its timers are cancelled. Returns the connection still serving it
    /// (told to close) and its will, due now that the session ended, with
    /// whose rights it goes out under.
    pub(super) fn discard(
        &self,
        session: &Arc<Session>,
    ) -> (Option<Arc<ConnectionSignal>>, Option<(Will, Owner)>) {
        let mut state = session.lock();
        let link = Session::end(&mut state, session);
        for timer in state.take_timers() {
            self.timers.cancel(timer);
        }
        let mut own_groups = Vec::new();
        for raw in state.take_subscriptions() {
            let Ok(parsed) = topic::parse_filter(&raw, self.topic_limits()) else {
                continue;
            };
            match stream_subscription(&parsed) {
                Ok(Some(read)) if read.group.is_none() => own_groups.push(read.stream.to_string()),
                Ok(Some(_)) => {}
                _ => {
                    self.index
                        .unsubscribe(parsed.filter, parsed.share_group, session);
                }
            }
        }
        if std::mem::take(&mut state.stored) {
            // Appended under the session map's entry lock, so it precedes
            // the record of any new session with this client id.
            self.journal
                .append(Record::DeleteSession(session.client_id().clone()));
        }
        let will = state.will.take().map(|will| (*will, state.owner.clone()));
        drop(state);
        for stream in own_groups {
            self.forget_own_group(session.client_id(), &stream);
        }
        let signal = link.map(|link| {
            link.signal.take_over();
            link.signal
        });
        (signal, will)
    }
}
