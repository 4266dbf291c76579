//! SCRAM-SHA-256 (RFC 5802 with the hash of RFC 7677), the mechanism behind
//! MQTT 5 enhanced authentication against the password file.
//!
//! Both sides are state machines over whole messages: the broker feeds in the
//! authentication data of CONNECT and AUTH packets and sends back what comes
//! out, so every step, and every way a peer can get one wrong, is a unit test.
//! Nothing here touches a socket or a clock; the one source of randomness,
//! [`generate_nonce`], is called by the caller and its result passed in.
//!
//! Channel binding is not offered (the mechanism is not `-PLUS`), so clients
//! must send the gs2 header `n,,` or `y,,`. Passwords are taken as the bytes
//! they are: SASLprep (RFC 4013) is not applied, so a non-ASCII password only
//! matches when client and password file agree on its Unicode normalisation.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The SASL name of the mechanism, as MQTT's Authentication Method carries it.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// The iteration count petrel derives new credentials with: RFC 7677's
/// minimum, as the broker repeats none of this work per login (it stores the
/// derived keys) and clients on small devices must repeat all of it.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// The most iterations a [`ScramClient`] will run, so a hostile server cannot
/// keep a bridge busy for hours with one message.
pub const MAX_CLIENT_ITERATIONS: u32 = 1_000_000;

const KEY_LEN: usize = 32;
const SALT_LEN: usize = 16;
const NONCE_BYTES: usize = 18;

/// What the server keeps per user: enough to check a client's proof and prove
/// itself in return, but not enough to log in as the user.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; KEY_LEN],
    pub server_key: [u8; KEY_LEN],
}

impl ScramCredentials {
    /// Derives credentials from a password. Costs `iterations` rounds of
    /// HMAC-SHA-256, so it belongs off the async runtime's threads.
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> ScramCredentials {
        let salted = salted_password(password, salt, iterations);
        ScramCredentials {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(hmac(&salted, &[b"Client Key"])).into(),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }

    /// Derives credentials under a fresh random salt.
    pub fn generate(
        password: &[u8],
        iterations: u32,
    ) -> Result<ScramCredentials, getrandom::Error> {
        let mut salt = [0u8; SALT_LEN];
        getrandom::fill(&mut salt)?;
        Ok(ScramCredentials::derive(password, &salt, iterations))
    }
}

impl std::fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys let whoever holds them pose as the server; keep them out
        // of logs.
        f.debug_struct("ScramCredentials")
            .field("iterations", &self.iterations)
            .field("salt", &STANDARD.encode(&self.salt))
            .finish_non_exhaustive()
    }
}

/// A secret from which the server invents credentials for users it does not
/// know. The same unknown name always gets the same salt, so comparing two
/// attempts does not tell an attacker whether a user exists.
#[derive(Clone)]
pub struct DecoyKey([u8; KEY_LEN]);

impl DecoyKey {
    pub fn generate() -> Result<DecoyKey, getrandom::Error> {
        let mut key = [0u8; KEY_LEN];
        getrandom::fill(&mut key)?;
        Ok(DecoyKey(key))
    }

    pub fn from_bytes(key: [u8; KEY_LEN]) -> DecoyKey {
        DecoyKey(key)
    }

    fn credentials(&self, user: &str) -> ScramCredentials {
        let derive = |label: &[u8]| hmac(&self.0, &[label, user.as_bytes()]);
        ScramCredentials {
            iterations: DEFAULT_ITERATIONS,
            salt: derive(b"salt")[..SALT_LEN].to_vec(),
            stored_key: derive(b"stored key"),
            server_key: derive(b"server key"),
        }
    }
}

impl std::fmt::Debug for DecoyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DecoyKey(..)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("SCRAM message is not UTF-8")]
    NotUtf8,
    #[error("malformed SCRAM message: expected {0}")]
    Syntax(&'static str),
    #[error("channel binding ({0}) is not supported: use {MECHANISM} without -PLUS")]
    ChannelBindingUnsupported(String),
    #[error("the channel binding attribute does not repeat the gs2 header")]
    ChannelBindingMismatch,
    #[error("mandatory SCRAM extensions are not supported")]
    ExtensionUnsupported,
    #[error("an authorization identity other than the user name is not supported")]
    AuthzidUnsupported,
    #[error("user name is not a valid SCRAM saslname")]
    InvalidUsername,
    #[error("the nonce does not continue the client's nonce")]
    NonceMismatch,
    #[error("iteration count must be between 1 and {MAX_CLIENT_ITERATIONS}")]
    IterationCount,
    #[error("the client proof is wrong")]
    InvalidProof,
    #[error("no such user")]
    UnknownUser,
    #[error("the server's signature is wrong")]
    InvalidServerSignature,
    #[error("the server refused: {0}")]
    Server(String),
}

impl ScramError {
    /// The RFC 5802 `server-error-value` to send in a server-final `e=`
    /// message. An unknown user reads as a wrong proof, deliberately: the
    /// answer must not reveal which user names exist.
    pub fn server_error_value(&self) -> &'static str {
        match self {
            ScramError::NotUtf8 | ScramError::Syntax(_) => "invalid-encoding",
            ScramError::ChannelBindingUnsupported(_) => "channel-binding-not-supported",
            ScramError::ChannelBindingMismatch => "channel-bindings-dont-match",
            ScramError::ExtensionUnsupported => "extensions-not-supported",
            ScramError::InvalidUsername => "invalid-username-encoding",
            ScramError::InvalidProof | ScramError::UnknownUser => "invalid-proof",
            ScramError::AuthzidUnsupported
            | ScramError::NonceMismatch
            | ScramError::IterationCount
            | ScramError::InvalidServerSignature
            | ScramError::Server(_) => "other-error",
        }
    }
}

/// A fresh nonce: 18 random bytes in base64, which has no `,` to escape.
pub fn generate_nonce() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; NONCE_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(STANDARD.encode(bytes))
}

/// The server side after it has answered client-first, waiting for
/// client-final.
pub struct ScramServer {
    user: String,
    gs2_header: String,
    nonce: String,
    /// client-first-message-bare "," server-first-message: the start of the
    /// AuthMessage both proofs sign.
    signed_so_far: String,
    credentials: ScramCredentials,
    known_user: bool,
}

impl ScramServer {
    /// Reads client-first, looks its user up and answers with server-first.
    /// `server_nonce` must be printable ASCII without `,`, as
    /// [`generate_nonce`] makes it. A user `lookup` does not know gets
    /// invented credentials from `decoys`, and fails only at [`finish`],
    /// exactly as a wrong password does.
    ///
    /// [`finish`]: ScramServer::finish
    pub fn first(
        client_first: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredentials>,
        server_nonce: &str,
        decoys: &DecoyKey,
    ) -> Result<(ScramServer, Vec<u8>), ScramError> {
        debug_assert!(is_printable_nonce(server_nonce));
        let text = std::str::from_utf8(client_first).map_err(|_| ScramError::NotUtf8)?;
        let (gs2_header, bare) = split_gs2_header(text)?;
        let mut fields = bare.split(',');
        let user = match fields.next() {
            Some(field) if field.starts_with("m=") => return Err(ScramError::ExtensionUnsupported),
            Some(field) => decode_saslname(attribute(field, 'n', "n=username")?)?,
            None => {
                return Err(ScramError::Syntax("n=username"));
            }
        };
        let client_nonce = next_attribute(&mut fields, 'r', "r=nonce")?;
        if client_nonce.is_empty() || !is_printable_nonce(client_nonce) {
            return Err(ScramError::Syntax("r=nonce"));
        }
        if let Some(authzid) = gs2_header.authzid
            && authzid != user
        {
            return Err(ScramError::AuthzidUnsupported);
        }
        let (credentials, known_user) = match lookup(&user) {
            Some(credentials) => (credentials, true),
            None => (decoys.credentials(&user), false),
        };
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&credentials.salt),
            credentials.iterations
        );
        let server = ScramServer {
            user,
            gs2_header: gs2_header.text.to_string(),
            nonce,
            signed_so_far: format!("{bare},{server_first}"),
            credentials,
            known_user,
        };
        Ok((server, server_first.into_bytes()))
    }

    /// The user name the client gave.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Checks client-final's proof and answers with server-final (`v=`), the
    /// server's proof that it too knew the credentials.
    pub fn finish(self, client_final: &[u8]) -> Result<Vec<u8>, ScramError> {
        let text = std::str::from_utf8(client_final).map_err(|_| ScramError::NotUtf8)?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Syntax("p=proof"))?;
        let mut fields = without_proof.split(',');
        let binding = next_attribute(&mut fields, 'c', "c=channel-binding")?;
        let binding = decode(binding, "c=channel-binding")?;
        if binding != self.gs2_header.as_bytes() {
            return Err(ScramError::ChannelBindingMismatch);
        }
        let nonce = next_attribute(&mut fields, 'r', "r=nonce")?;
        if nonce != self.nonce {
            return Err(ScramError::NonceMismatch);
        }
        let proof: [u8; KEY_LEN] = decode(proof, "p=proof")?
            .try_into()
            .map_err(|_| ScramError::Syntax("p=proof"))?;
        let auth_message = format!("{},{without_proof}", self.signed_so_far);
        let signature = hmac(&self.credentials.stored_key, &[auth_message.as_bytes()]);
        let client_key = xor(&proof, &signature);
        let matches = constant_time_eq(&Sha256::digest(client_key), &self.credentials.stored_key);
        // The decoy keys are as good as random, so an unknown user's proof
        // has already failed above by the same steps a wrong password takes.
        if !self.known_user {
            return Err(ScramError::UnknownUser);
        }
        if !matches {
            return Err(ScramError::InvalidProof);
        }
        let verifier = hmac(&self.credentials.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", STANDARD.encode(verifier)).into_bytes())
    }
}

/// The client side, before the server has answered. Meant for tests and for
/// a bridge logging in to another broker.
pub struct ScramClient {
    gs2_header: &'static str,
    password: Vec<u8>,
    client_nonce: String,
    client_first_bare: String,
}

/// The client side after it has sent its proof, holding the signature the
/// server must answer with.
pub struct ScramClientFinal {
    server_signature: [u8; KEY_LEN],
}

impl ScramClient {
    /// Starts an exchange; returns client-first. `client_nonce` must be
    /// printable ASCII without `,`, as [`generate_nonce`] makes it.
    pub fn start(user: &str, password: &[u8], client_nonce: &str) -> (ScramClient, Vec<u8>) {
        ScramClient::start_with_header("n,,", user, password, client_nonce)
    }

    fn start_with_header(
        gs2_header: &'static str,
        user: &str,
        password: &[u8],
        client_nonce: &str,
    ) -> (ScramClient, Vec<u8>) {
        debug_assert!(is_printable_nonce(client_nonce));
        let client_first_bare = format!("n={},r={client_nonce}", encode_saslname(user));
        let message = format!("{gs2_header}{client_first_bare}").into_bytes();
        let client = ScramClient {
            gs2_header,
            password: password.to_vec(),
            client_nonce: client_nonce.to_string(),
            client_first_bare,
        };
        (client, message)
    }

    /// Reads server-first and answers with client-final, the proof. Runs the
    /// server's iteration count of PBKDF2, so it is slow by design.
    pub fn respond(self, server_first: &[u8]) -> Result<(ScramClientFinal, Vec<u8>), ScramError> {
        let text = std::str::from_utf8(server_first).map_err(|_| ScramError::NotUtf8)?;
        let mut fields = text.split(',');
        let nonce = match fields.next() {
            Some(field) if field.starts_with("m=") => return Err(ScramError::ExtensionUnsupported),
            Some(field) => attribute(field, 'r', "r=nonce")?,
            None => {
                return Err(ScramError::Syntax("r=nonce"));
            }
        };
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        let salt = decode(next_attribute(&mut fields, 's', "s=salt")?, "s=salt")?;
        let iterations: u32 = next_attribute(&mut fields, 'i', "i=iterations")?
            .parse()
            .map_err(|_| ScramError::Syntax("i=iterations"))?;
        if iterations == 0 || iterations > MAX_CLIENT_ITERATIONS {
            return Err(ScramError::IterationCount);
        }
        let salted = salted_password(&self.password, &salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        let stored_key: [u8; KEY_LEN] = Sha256::digest(client_key).into();
        let without_proof = format!("c={},r={nonce}", STANDARD.encode(self.gs2_header));
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let proof = xor(&client_key, &hmac(&stored_key, &[auth_message.as_bytes()]));
        let server_key = hmac(&salted, &[b"Server Key"]);
        let next = ScramClientFinal {
            server_signature: hmac(&server_key, &[auth_message.as_bytes()]),
        };
        let message = format!("{without_proof},p={}", STANDARD.encode(proof));
        Ok((next, message.into_bytes()))
    }
}

impl ScramClientFinal {
    /// Checks server-final: the server must prove it knew the credentials.
    pub fn finish(self, server_final: &[u8]) -> Result<(), ScramError> {
        let text = std::str::from_utf8(server_final).map_err(|_| ScramError::NotUtf8)?;
        let first = text.split(',').next().unwrap_or("");
        if let Some(error) = first.strip_prefix("e=") {
            return Err(ScramError::Server(error.to_string()));
        }
        let verifier = decode(attribute(first, 'v', "v=verifier")?, "v=verifier")?;
        if constant_time_eq(&verifier, &self.server_signature) {
            Ok(())
        } else {
            Err(ScramError::InvalidServerSignature)
        }
    }
}

/// Compares secrets in time that depends only on their lengths, which are
/// public, so a timing attacker learns nothing of where they first differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

struct Gs2Header<'a> {
    /// The header as sent, `,` included, which client-final must repeat.
    text: &'a str,
    authzid: Option<String>,
}

fn split_gs2_header(message: &str) -> Result<(Gs2Header<'_>, &str), ScramError> {
    const EXPECTED: &str = "gs2 header n,, or y,,";
    let (flag, rest) = message
        .split_once(',')
        .ok_or(ScramError::Syntax(EXPECTED))?;
    match flag {
        "n" | "y" => {}
        _ if flag.starts_with("p=") => {
            return Err(ScramError::ChannelBindingUnsupported(flag[2..].to_string()));
        }
        _ => return Err(ScramError::Syntax(EXPECTED)),
    }
    let (authzid, bare) = rest.split_once(',').ok_or(ScramError::Syntax(EXPECTED))?;
    let authzid = match authzid {
        "" => None,
        _ => Some(decode_saslname(attribute(authzid, 'a', "a=authzid")?)?),
    };
    let text = &message[..message.len() - bare.len()];
    Ok((Gs2Header { text, authzid }, bare))
}

/// The value of the next field, which must be the attribute `name`.
fn next_attribute<'a>(
    fields: &mut std::str::Split<'a, char>,
    name: char,
    expected: &'static str,
) -> Result<&'a str, ScramError> {
    attribute(fields.next().unwrap_or(""), name, expected)
}

/// The value of a `name=value` attribute.
fn attribute<'a>(
    field: &'a str,
    name: char,
    expected: &'static str,
) -> Result<&'a str, ScramError> {
    field
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix('='))
        .ok_or(ScramError::Syntax(expected))
}

fn decode(value: &str, expected: &'static str) -> Result<Vec<u8>, ScramError> {
    STANDARD
        .decode(value)
        .map_err(|_| ScramError::Syntax(expected))
}

/// RFC 5802's `saslname`: `,` and `=` travel as `=2C` and `=3D`, and no
/// other `=` may appear.
fn decode_saslname(name: &str) -> Result<String, ScramError> {
    let mut decoded = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        decoded.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => decoded.push(','),
            Some("=3D") => decoded.push('='),
            _ => return Err(ScramError::InvalidUsername),
        }
        rest = &rest[at + 3..];
    }
    decoded.push_str(rest);
    if decoded.is_empty() {
        return Err(ScramError::InvalidUsername);
    }
    Ok(decoded)
}

fn encode_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

fn is_printable_nonce(nonce: &str) -> bool {
    nonce
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    let mut salted = [0u8; KEY_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
    salted
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn xor(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677, section 3: user "user", password "pencil".
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn pencil() -> ScramCredentials {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        ScramCredentials::derive(b"pencil", &salt, 4096)
    }

    fn decoys() -> DecoyKey {
        DecoyKey::from_bytes([7; KEY_LEN])
    }

    /// A server that knows only "user", with the RFC's credentials.
    fn server_for(client_first: &str) -> Result<(ScramServer, Vec<u8>), ScramError> {
        let credentials = pencil();
        ScramServer::first(
            client_first.as_bytes(),
            |user| (user == "user").then_some(credentials),
            SERVER_NONCE,
            &decoys(),
        )
    }

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    #[test]
    fn server_reproduces_the_rfc_7677_exchange() {
        let (server, server_first) = server_for(CLIENT_FIRST).unwrap();
        assert_eq!(server.user(), "user");
        assert_eq!(text(&server_first), SERVER_FIRST);
        let server_final = server.finish(CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(text(&server_final), SERVER_FINAL);
    }

    #[test]
    fn client_reproduces_the_rfc_7677_exchange() {
        let (client, client_first) = ScramClient::start("user", b"pencil", CLIENT_NONCE);
        assert_eq!(text(&client_first), CLIENT_FIRST);
        let (client, client_final) = client.respond(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(text(&client_final), CLIENT_FINAL);
        client.finish(SERVER_FINAL.as_bytes()).unwrap();
    }

    /// Runs a whole exchange between a client with `password` and a server
    /// that knows the RFC's user, returning the server's verdict.
    fn exchange(gs2_header: &'static str, user: &str, password: &[u8]) -> Result<(), ScramError> {
        let client_nonce = generate_nonce().unwrap();
        let (client, client_first) =
            ScramClient::start_with_header(gs2_header, user, password, &client_nonce);
        let (server, server_first) = server_for(text(&client_first))?;
        let (client, client_final) = client.respond(&server_first)?;
        let server_final = server.finish(&client_final)?;
        client.finish(&server_final)
    }

    #[test]
    fn random_nonces_and_the_y_header_complete_an_exchange() {
        exchange("n,,", "user", b"pencil").unwrap();
        exchange("y,,", "user", b"pencil").unwrap();
    }

    #[test]
    fn wrong_password_is_an_invalid_proof() {
        assert_eq!(
            exchange("n,,", "user", b"pen"),
            Err(ScramError::InvalidProof)
        );
    }

    #[test]
    fn tampered_proof_is_refused() {
        let (server, _) = server_for(CLIENT_FIRST).unwrap();
        let tampered = CLIENT_FINAL.replace("p=dHzb", "p=dHzc");
        assert_eq!(
            server.finish(tampered.as_bytes()),
            Err(ScramError::InvalidProof)
        );
    }

    #[test]
    fn client_final_must_repeat_nonce_and_gs2_header() {
        let (server, _) = server_for(CLIENT_FIRST).unwrap();
        let other_nonce = CLIENT_FINAL.replace("$k0,", "$k1,");
        assert_eq!(
            server.finish(other_nonce.as_bytes()),
            Err(ScramError::NonceMismatch)
        );
        let (server, _) = server_for(CLIENT_FIRST).unwrap();
        let other_binding = CLIENT_FINAL.replace("c=biws", "c=eSws");
        assert_eq!(
            server.finish(other_binding.as_bytes()),
            Err(ScramError::ChannelBindingMismatch)
        );
        let (server, _) = server_for(CLIENT_FIRST).unwrap();
        assert!(matches!(
            server.finish(b"c=biws,r=x"),
            Err(ScramError::Syntax(_))
        ));
    }

    #[test]
    fn unknown_user_gets_a_stable_plausible_salt_and_fails_like_a_wrong_password() {
        let (server, first) = server_for("n,,n=nobody,r=abc").unwrap();
        let (_, again) =
            ScramServer::first(b"n,,n=nobody,r=xyz", |_| None, "n2", &decoys()).unwrap();
        let (_, other) = server_for("n,,n=somebody,r=abc").unwrap();
        let salt = |message: &[u8]| text(message).split(',').nth(1).unwrap().to_string();
        assert_eq!(salt(&first), salt(&again));
        assert_ne!(salt(&first), salt(&other));
        assert_eq!(STANDARD.decode(&salt(&first)[2..]).unwrap().len(), SALT_LEN);
        assert!(text(&first).ends_with(",i=4096"));

        let client_final = format!("c=biws,r=abc{SERVER_NONCE},p={}", STANDARD.encode([0; 32]));
        let error = server.finish(client_final.as_bytes()).unwrap_err();
        assert_eq!(error, ScramError::UnknownUser);
        assert_eq!(error.server_error_value(), "invalid-proof");
        assert_eq!(
            exchange("n,,", "nobody", b"pencil"),
            Err(ScramError::UnknownUser)
        );
    }

    #[test]
    fn channel_binding_is_refused_by_name() {
        let error = server_for("p=tls-unique,,n=user,r=abc").err().unwrap();
        assert_eq!(
            error,
            ScramError::ChannelBindingUnsupported("tls-unique".into())
        );
        assert_eq!(error.server_error_value(), "channel-binding-not-supported");
    }

    #[test]
    fn malformed_client_first_is_refused() {
        for message in [
            "",
            "n",
            "n,,",
            "x,,n=user,r=abc",
            "n,,r=abc",
            "n,,n=user",
            "n,,n=user,r=",
        ] {
            assert!(
                matches!(server_for(message), Err(ScramError::Syntax(_))),
                "{message:?}"
            );
        }
        assert_eq!(
            server_for("n,,n=us=er,r=a").err(),
            Some(ScramError::InvalidUsername)
        );
        assert_eq!(
            server_for("n,,n=,r=a").err(),
            Some(ScramError::InvalidUsername)
        );
        assert_eq!(
            server_for("n,,m=ext,n=user,r=a").err(),
            Some(ScramError::ExtensionUnsupported)
        );
        assert_eq!(
            ScramServer::first(b"n,,n=user,r=\xff", |_| None, "s", &decoys()).err(),
            Some(ScramError::NotUtf8)
        );
    }

    #[test]
    fn escaped_user_names_round_trip() {
        let (_, first) = ScramClient::start("a,b=c", b"pw", "abc");
        assert_eq!(text(&first), "n,,n=a=2Cb=3Dc,r=abc");
        let (server, _) = server_for(text(&first)).unwrap();
        assert_eq!(server.user(), "a,b=c");
    }

    #[test]
    fn authzid_must_name_the_user_itself() {
        assert!(server_for("n,a=user,n=user,r=abc").is_ok());
        assert_eq!(
            server_for("n,a=admin,n=user,r=abc").err(),
            Some(ScramError::AuthzidUnsupported)
        );
    }

    #[test]
    fn client_refuses_a_server_that_misbehaves() {
        let respond = |server_first: &str| {
            let (client, _) = ScramClient::start("user", b"pencil", CLIENT_NONCE);
            client.respond(server_first.as_bytes()).map(|_| ())
        };
        let nonce = format!("r={CLIENT_NONCE}x");
        assert_eq!(
            respond("r=other,s=QQ==,i=4096"),
            Err(ScramError::NonceMismatch)
        );
        assert_eq!(
            respond(&format!("r={CLIENT_NONCE},s=QQ==,i=4096")),
            Err(ScramError::NonceMismatch)
        );
        assert_eq!(
            respond(&format!("{nonce},s=QQ==,i=0")),
            Err(ScramError::IterationCount)
        );
        assert_eq!(
            respond(&format!("{nonce},s=QQ==,i=4000000000")),
            Err(ScramError::IterationCount)
        );
        assert!(matches!(
            respond(&format!("{nonce},s=!,i=1")),
            Err(ScramError::Syntax(_))
        ));

        let (client, _) = ScramClient::start("user", b"pencil", CLIENT_NONCE);
        let (client, _) = client.respond(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(
            client.finish(b"e=invalid-proof"),
            Err(ScramError::Server("invalid-proof".into()))
        );
        let (client, _) = ScramClient::start("user", b"pencil", CLIENT_NONCE);
        let (client, _) = client.respond(SERVER_FIRST.as_bytes()).unwrap();
        let forged = format!("v={}", STANDARD.encode([0; 32]));
        assert_eq!(
            client.finish(forged.as_bytes()),
            Err(ScramError::InvalidServerSignature)
        );
    }

    #[test]
    fn generated_nonces_are_printable_and_distinct() {
        let a = generate_nonce().unwrap();
        let b = generate_nonce().unwrap();
        assert!(is_printable_nonce(&a) && !a.is_empty());
        assert_ne!(a, b);
    }

    #[test]
    fn debug_output_leaves_the_keys_out() {
        let shown = format!("{:?}", pencil());
        assert!(shown.contains("4096"));
        assert!(!shown.contains("stored_key"));
    }
}
