//! v5 enhanced authentication (MQTT 5 §4.12): SCRAM-SHA-256 against the
//! password file, at CONNECT and when a connected client re-authenticates.
//!
//! The exchange is a conversation without I/O: `start` reads the method
//! and data of a CONNECT (or of an AUTH 0x19) and answers with an
//! [`AuthStep`]; the connection sends what it says and hands the client's
//! next AUTH to [`Conversation::next`]. For SCRAM that is two steps:
//!
//! ```text
//! CONNECT  method, data = client-first    ->  AUTH 0x18, data = server-first
//! AUTH 0x18, data = client-final          ->  CONNACK 0x00, data = server-final
//! ```
//!
//! and the same again after CONNACK with AUTH 0x19 first and AUTH 0x00 last
//! (re-authentication, §4.12.1). A method petrel does not run is refused
//! with 0x8C, a failed proof with 0x87 [MQTT-4.12.0-1, MQTT-4.12.0-4].
//!
//! The codec lets AUTH through only after a CONNECT that named a method
//! [MQTT-4.12.0-7] and checks the packet's own form; that every AUTH names
//! the CONNECT's method [MQTT-4.12.0-5, MQTT-4.12.1-1] is checked here,
//! where the method is known.

use std::net::SocketAddr;

use bytes::Bytes;

use super::BrokerState;
use super::client::{Client, Close};
use crate::auth::scram::{self, DecoyKey, ScramCredentials, ScramError, ScramServer};
use crate::protocol::{Auth, Packet, ReasonCode};

/// The one method petrel runs.
pub const SCRAM_SHA_256: &str = scram::MECHANISM;

/// What to do next in an exchange.
pub enum AuthStep {
    /// Send this AUTH (0x18 Continue authentication, with the method's
    /// challenge) and hand the client's answer to the conversation.
    Continue(Auth, Conversation),
    /// The client proved who it is.
    Accept(Authenticated),
    /// The client is refused: CONNACK with the reason at CONNECT, DISCONNECT
    /// with it when re-authenticating.
    Refuse(AuthRefusal),
}

/// A successful exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub method: String,
    /// The user the password file knows the client as.
    pub username: String,
    /// The method's last word to the client (SCRAM: server-final, the
    /// server's proof), sent in the CONNACK or in AUTH 0x00.
    pub data: Option<Bytes>,
}

/// A refused exchange: the reason code for the client, and why in a few
/// words for the log (never sent: it could tell an attacker which part
/// failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthRefusal {
    pub reason: ReasonCode,
    pub why: &'static str,
}

fn refuse(reason: ReasonCode, why: &'static str) -> AuthStep {
    AuthStep::Refuse(AuthRefusal { reason, why })
}

/// A SCRAM exchange waiting for the client's proof. Boxed: it is held
/// only while an exchange is under way.
pub struct Conversation {
    scram: Box<ScramServer>,
}

impl std::fmt::Debug for Conversation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversation")
            .field("user", &self.scram.user())
            .finish_non_exhaustive()
    }
}

/// What an exchange is checked against.
pub struct Verifier<'a> {
    /// The SCRAM credentials of a user the password file knows.
    pub credentials: &'a dyn Fn(&str) -> Option<ScramCredentials>,
    /// Where an unknown user's invented credentials come from.
    pub decoys: &'a DecoyKey,
    /// A fresh nonce for this exchange (`scram::generate_nonce`).
    pub nonce: &'a str,
}

/// Starts an exchange for `method` with the client's first `data` (from the
/// CONNECT, or from AUTH 0x19). `user`: the name the client must prove, if
/// one is fixed already (the CONNECT's User Name, or the user of the
/// connection that re-authenticates), so a proof for one user never lets a
/// client act as another.
pub fn start(
    method: &str,
    data: Option<&[u8]>,
    user: Option<&str>,
    verifier: &Verifier<'_>,
) -> AuthStep {
    if method != SCRAM_SHA_256 {
        return refuse(
            ReasonCode::BAD_AUTHENTICATION_METHOD,
            "authentication method not supported",
        );
    }
    let first = ScramServer::first(
        data.unwrap_or_default(),
        verifier.credentials,
        verifier.nonce,
        verifier.decoys,
    );
    let (scram, server_first) = match first {
        Ok(started) => started,
        Err(error) => return refuse(ReasonCode::NOT_AUTHORIZED, scram_why(&error)),
    };
    if user.is_some_and(|user| user != scram.user()) {
        return refuse(
            ReasonCode::NOT_AUTHORIZED,
            "SCRAM user is not the connection's user",
        );
    }
    let challenge = Auth::new(
        ReasonCode::CONTINUE_AUTHENTICATION,
        SCRAM_SHA_256,
        Some(server_first.into()),
    );
    AuthStep::Continue(
        challenge,
        Conversation {
            scram: Box::new(scram),
        },
    )
}

impl Conversation {
    /// Reads the client's answer to the challenge: AUTH 0x18 with the same
    /// method [MQTT-4.12.0-3, MQTT-4.12.0-5], carrying client-final.
    pub fn next(self, auth: &Auth) -> AuthStep {
        if auth.method != SCRAM_SHA_256 {
            return refuse(ReasonCode::PROTOCOL_ERROR, "AUTH names another method");
        }
        if auth.reason != ReasonCode::CONTINUE_AUTHENTICATION {
            return refuse(
                ReasonCode::PROTOCOL_ERROR,
                "AUTH 0x19 while an exchange is under way",
            );
        }
        let username = self.scram.user().to_string();
        match self.scram.finish(auth.data.as_deref().unwrap_or_default()) {
            Ok(server_final) => AuthStep::Accept(Authenticated {
                method: SCRAM_SHA_256.to_string(),
                username,
                data: Some(server_final.into()),
            }),
            Err(error) => refuse(ReasonCode::NOT_AUTHORIZED, scram_why(&error)),
        }
    }
}

fn scram_why(error: &ScramError) -> &'static str {
    match error {
        ScramError::InvalidProof | ScramError::UnknownUser => "wrong password or unknown user",
        ScramError::NonceMismatch => "SCRAM nonce does not match",
        _ => "malformed or unsupported SCRAM message",
    }
}

/// The secret unknown users' invented SCRAM credentials derive from: one
/// per process, so an unknown name gets the same salt on every attempt.
fn decoys() -> Option<&'static DecoyKey> {
    static DECOYS: std::sync::OnceLock<Option<DecoyKey>> = std::sync::OnceLock::new();
    DECOYS.get_or_init(|| DecoyKey::generate().ok()).as_ref()
}

impl BrokerState {
    /// Starts an exchange against the broker's password file, with a fresh
    /// nonce. Without a password file there is nothing SCRAM could check
    /// against, so the method counts as unsupported.
    pub fn start_enhanced_auth(
        &self,
        method: &str,
        data: Option<&[u8]>,
        user: Option<&str>,
    ) -> AuthStep {
        let Some(passwords) = self.security().password_file() else {
            return refuse(
                ReasonCode::BAD_AUTHENTICATION_METHOD,
                "no password file to check SCRAM against",
            );
        };
        let (Some(decoys), Ok(nonce)) = (decoys(), scram::generate_nonce()) else {
            return refuse(ReasonCode::UNSPECIFIED_ERROR, "no random bytes for SCRAM");
        };
        let credentials = |user: &str| passwords.scram_credentials(user);
        let verifier = Verifier {
            credentials: &credentials,
            decoys,
            nonce: &nonce,
        };
        start(method, data, user, &verifier)
    }

    /// Records how an exchange ended: a refusal is counted and logged,
    /// and a failed proof counts towards the failed-login throttle as a
    /// wrong password does (a success clears the client id's count).
    pub fn enhanced_auth_ended(
        &self,
        client_id: &str,
        peer: Option<SocketAddr>,
        outcome: Result<(), &AuthRefusal>,
    ) {
        if let Err(refusal) = outcome {
            self.metrics
                .enhanced_auth_failure(client_id, peer, refusal.reason, refusal.why);
        }
        let proof_checked = match outcome {
            Ok(()) => true,
            Err(refusal) => refusal.reason == ReasonCode::NOT_AUTHORIZED,
        };
        if let Some(peer) = peer
            && proof_checked
        {
            self.security()
                .record_login(client_id, peer, outcome.is_ok());
        }
    }
}

/// A connection's enhanced authentication, kept for re-authentication
/// (the user it proved is the client's username).
#[derive(Debug)]
pub(super) struct EnhancedAuth {
    method: String,
    /// A re-authentication under way: waiting for the client's proof.
    pending: Option<Conversation>,
}

impl EnhancedAuth {
    pub(super) fn new(authenticated: &Authenticated) -> EnhancedAuth {
        EnhancedAuth {
            method: authenticated.method.clone(),
            pending: None,
        }
    }
}

impl Client {
    /// AUTH after CONNACK: re-authentication [MQTT-4.12.1-1]. Other packets
    /// go on being served under the earlier authentication meanwhile; a
    /// failure ends the connection with DISCONNECT 0x87 [MQTT-4.12.1-2].
    pub(super) fn on_auth(&mut self, auth: Auth) -> Result<(), Close> {
        let Some(extras) = self.extras.as_mut() else {
            return Err(Close::ByServer(ReasonCode::PROTOCOL_ERROR));
        };
        let peer = extras.peer;
        let username = extras.username.clone();
        let Some(state) = extras.enhanced_auth.as_mut() else {
            // The codec let AUTH through for a method the broker never ran:
            // the CONNECT was refused, so this cannot come; closing is right
            // if it does.
            return Err(Close::ByServer(ReasonCode::PROTOCOL_ERROR));
        };
        let step = match (auth.reason, state.pending.take()) {
            _ if auth.method != state.method => refuse(
                ReasonCode::PROTOCOL_ERROR,
                "AUTH names another method than the CONNECT",
            ),
            (ReasonCode::REAUTHENTICATE, None) => self.broker.start_enhanced_auth(
                &auth.method,
                auth.data.as_deref(),
                // The same user only: a connection never changes whose
                // rights it has.
                Some(username.as_deref().unwrap_or_default()),
            ),
            (_, Some(conversation)) => conversation.next(&auth),
            (_, None) => refuse(
                ReasonCode::PROTOCOL_ERROR,
                "AUTH 0x18 with no exchange under way",
            ),
        };
        match step {
            AuthStep::Continue(challenge, conversation) => {
                state.pending = Some(conversation);
                self.outgoing.push(Packet::Auth(challenge));
                Ok(())
            }
            AuthStep::Accept(authenticated) => {
                self.broker
                    .enhanced_auth_ended(self.session.client_id(), peer, Ok(()));
                tracing::info!(client_id = %self.session.client_id(), user = %authenticated.username, "re-authenticated");
                self.outgoing.push(Packet::Auth(Auth::new(
                    ReasonCode::SUCCESS,
                    &authenticated.method,
                    authenticated.data,
                )));
                Ok(())
            }
            AuthStep::Refuse(refusal) => {
                self.broker
                    .enhanced_auth_ended(self.session.client_id(), peer, Err(&refusal));
                Err(Close::ByServer(refusal.reason))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scram::ScramClient;

    const NONCE: &str = "c2VydmVyLW5vbmNl";

    fn credentials(user: &str) -> Option<ScramCredentials> {
        // Few iterations: the tests need the exchange, not the cost.
        (user == "alice").then(|| ScramCredentials::derive(b"secret", b"salt-of-alice", 16))
    }

    fn run(method: &str, data: Option<&[u8]>, user: Option<&str>) -> AuthStep {
        let decoys = DecoyKey::from_bytes([7; 32]);
        let verifier = Verifier {
            credentials: &credentials,
            decoys: &decoys,
            nonce: NONCE,
        };
        start(method, data, user, &verifier)
    }

    fn challenge(step: AuthStep) -> (Auth, Conversation) {
        match step {
            AuthStep::Continue(auth, conversation) => (auth, conversation),
            AuthStep::Accept(accepted) => panic!("challenge expected, accepted {accepted:?}"),
            AuthStep::Refuse(refusal) => panic!("challenge expected, refused {refusal:?}"),
        }
    }

    fn refusal(step: AuthStep) -> AuthRefusal {
        match step {
            AuthStep::Refuse(refusal) => refusal,
            AuthStep::Continue(..) => panic!("refusal expected, got a challenge"),
            AuthStep::Accept(accepted) => panic!("refusal expected, accepted {accepted:?}"),
        }
    }

    fn answer(data: &[u8]) -> Auth {
        Auth::new(
            ReasonCode::CONTINUE_AUTHENTICATION,
            SCRAM_SHA_256,
            Some(Bytes::copy_from_slice(data)),
        )
    }

    /// The full exchange as a client runs it: returns the final step and
    /// the client's check of it.
    fn exchange(user: &str, password: &[u8], fixed_user: Option<&str>) -> AuthStep {
        let (client, client_first) = ScramClient::start(user, password, "Y2xpZW50");
        let (auth, conversation) = challenge(run(SCRAM_SHA_256, Some(&client_first), fixed_user));
        assert_eq!(auth.reason, ReasonCode::CONTINUE_AUTHENTICATION);
        assert_eq!(auth.method, SCRAM_SHA_256, "[MQTT-4.12.0-5]");
        let server_first = auth.data.expect("server-first");
        let (client, client_final) = client.respond(&server_first).unwrap();
        let step = conversation.next(&answer(&client_final));
        if let AuthStep::Accept(accepted) = &step {
            client
                .finish(accepted.data.as_deref().unwrap())
                .expect("the server proves it knew the credentials");
        }
        step
    }

    #[test]
    fn the_right_password_is_accepted_with_the_servers_proof() {
        let AuthStep::Accept(accepted) = exchange("alice", b"secret", None) else {
            panic!("accepted");
        };
        assert_eq!(accepted.username, "alice");
        assert_eq!(accepted.method, SCRAM_SHA_256);
    }

    #[test]
    fn a_wrong_password_or_unknown_user_is_not_authorized() {
        for (user, password) in [("alice", &b"guess"[..]), ("mallory", b"secret")] {
            let refused = refusal(exchange(user, password, None));
            assert_eq!(refused.reason, ReasonCode::NOT_AUTHORIZED, "{user}");
        }
    }

    #[test]
    fn an_unknown_method_is_a_bad_authentication_method() {
        let refused = refusal(run("SCRAM-SHA-1", Some(b"n,,n=alice,r=abc"), None));
        assert_eq!(refused.reason, ReasonCode::BAD_AUTHENTICATION_METHOD);
    }

    #[test]
    fn a_missing_or_malformed_client_first_is_not_authorized() {
        for data in [None, Some(&b""[..]), Some(b"p=tls-unique,,n=alice,r=abc")] {
            let refused = refusal(run(SCRAM_SHA_256, data, None));
            assert_eq!(refused.reason, ReasonCode::NOT_AUTHORIZED, "{data:?}");
        }
    }

    #[test]
    fn the_proof_must_be_for_the_user_the_connection_names() {
        let (_, client_first) = ScramClient::start("alice", b"secret", "Y2xpZW50");
        let refused = refusal(run(SCRAM_SHA_256, Some(&client_first), Some("bob")));
        assert_eq!(refused.reason, ReasonCode::NOT_AUTHORIZED);
        assert!(matches!(
            exchange("alice", b"secret", Some("alice")),
            AuthStep::Accept(_)
        ));
    }

    #[test]
    fn an_answer_with_another_method_or_reason_is_a_protocol_error() {
        let (_, client_first) = ScramClient::start("alice", b"secret", "Y2xpZW50");
        let (_, conversation) = challenge(run(SCRAM_SHA_256, Some(&client_first), None));
        let mut other = answer(b"c=biws");
        other.method = "PLAIN".into();
        assert_eq!(
            refusal(conversation.next(&other)).reason,
            ReasonCode::PROTOCOL_ERROR
        );
        let (_, conversation) = challenge(run(SCRAM_SHA_256, Some(&client_first), None));
        let mut again = answer(b"c=biws");
        again.reason = ReasonCode::REAUTHENTICATE;
        assert_eq!(
            refusal(conversation.next(&again)).reason,
            ReasonCode::PROTOCOL_ERROR
        );
    }
}
