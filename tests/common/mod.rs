//! Shared harness for integration tests: a real broker on 127.0.0.1:0.
//!
//! `PETREL_TEST_BROKER=host:port` points the tests that use `start_broker()`
//! at another running broker instead (for example a Mosquitto, to compare
//! behaviour); tests that need particular settings always run petrel.
//!
//! Every test crate that says `mod common;` compiles all of it and uses only
//! part, hence `allow(dead_code)`.
#![allow(dead_code)]

pub mod certs;
pub mod faulty_store;
pub mod ids;
pub mod mqtt;
pub mod ports;
pub mod scoped;
pub mod scratch;
pub mod wire;

use std::net::SocketAddr;
use std::time::Duration;

use petrel::{Broker, Settings};

/// An admin API on an ephemeral loopback port, with `token` if given.
pub fn loopback_admin(token: Option<&str>) -> Option<petrel::config::Admin> {
    Some(petrel::config::Admin {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        token: token.map(str::to_string),
    })
}

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestBroker {
    pub addr: SocketAddr,
    /// `None` when the tests run against an external broker.
    pub petrel: Option<Broker>,
}

impl TestBroker {
    /// The petrel under test, for tests that tuned its settings and so
    /// always run petrel.
    pub fn petrel(&self) -> &Broker {
        self.petrel
            .as_ref()
            .expect("tuned settings always run petrel")
    }
}

/// Starts a broker with the default settings on an ephemeral loopback port.
pub async fn start_broker() -> TestBroker {
    if let Ok(external) = std::env::var("PETREL_TEST_BROKER") {
        let addr = external.parse().expect("PETREL_TEST_BROKER is host:port");
        return TestBroker { addr, petrel: None };
    }
    start_broker_with(|_| {}).await
}

/// A petrel serving on a runtime of its own (the one the binary uses), on
/// its own threads, so tests that measure ordering or timing see the
/// broker's scheduling, not the test client's. Stops when dropped.
pub struct IsolatedBroker {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl IsolatedBroker {
    pub fn start(adjust: impl FnOnce(&mut Settings)) -> IsolatedBroker {
        let mut settings = Settings::ephemeral();
        adjust(&mut settings);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = petrel::server::runtime().expect("runtime");
            runtime.block_on(async move {
                let broker = Broker::start(settings).await.expect("broker starts");
                addr_tx.send(broker.local_addrs()[0]).expect("test waits");
                let _ = stopped.await;
                broker.shutdown().await;
            });
        });
        let addr = addr_rx.recv().expect("broker started");
        IsolatedBroker {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for IsolatedBroker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts petrel after letting the test adjust its settings.
pub async fn start_broker_with(adjust: impl FnOnce(&mut Settings)) -> TestBroker {
    let mut settings = Settings::ephemeral();
    adjust(&mut settings);
    let broker = Broker::start(settings).await.expect("broker starts");
    TestBroker {
        addr: broker.local_addrs()[0],
        petrel: Some(broker),
    }
}
