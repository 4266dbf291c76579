//! Ports for brokers a test starts as processes of their own.

use std::net::TcpListener;
use std::sync::Mutex;

/// A loopback port that was free when asked and that no other test of this
/// process was given: tests run in parallel, and the kernel may hand the
/// port one test just let go of to the next, whose broker then fails to
/// bind while its client talks to the other test's broker.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("bind an ephemeral port")
            .port();
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}
