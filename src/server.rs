//! The running broker: opens the store, rebuilds the state, and runs the
//! tasks that drive the I/O-free core: one accept loop per listener (with a
//! task per connection), the timer task, the admin API when configured, and
//! the journal's writer thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use crate::broker::{BrokerState, Metrics, Security, SecurityError};
use crate::config::{Durability, Settings};
use crate::store::{
    DiskOptions, DiskStore, Flush, Journal, MemoryStore, Snapshot, Store, StoreError,
};
use crate::timer::now_ms;
use crate::transport;
use crate::transport::tls::{TlsAcceptorCell, TlsError};

/// How long shutdown waits for connections to say goodbye before cutting
/// them, so a client that stopped reading cannot hold the broker up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: Box<TlsError>,
    },
    #[error("cannot listen on {addr} for the admin API (`admin.bind`): {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot restore stored state: {0}")]
    Restore(#[from] StoreError),
    /// The password file or ACL file does not load; names the file and line.
    #[error("{0}")]
    Security(#[from] SecurityError),
    #[error("cannot start the journal writer: {0}")]
    Journal(std::io::Error),
    #[error("{0}")]
    Bridge(#[from] crate::bridge::BridgeError),
    /// Settings made in code that loading a file would have refused.
    #[error("invalid config: {0}")]
    Config(String),
    #[error(
        "stream `{stream}`: partitions = {configured}, but partition {stored} holds stored messages; partitions may grow, never shrink"
    )]
    PartitionsShrunk {
        stream: String,
        configured: u32,
        stored: u32,
    },
}

/// Refuses a configuration with fewer partitions than a stream has stored.
fn check_partitions(settings: &Settings, snapshot: &Snapshot) -> Result<(), BrokerError> {
    for stream in &settings.streams {
        let stored = snapshot
            .stream_offsets
            .keys()
            .filter_map(|name| name.rsplit_once('/'))
            .filter(|(owner, _)| *owner == stream.name)
            .filter_map(|(_, partition)| partition.parse::<u32>().ok())
            .max();
        if let Some(stored) = stored.filter(|&p| p >= stream.partitions) {
            return Err(BrokerError::PartitionsShrunk {
                stream: stream.name.clone(),
                configured: stream.partitions,
                stored,
            });
        }
    }
    Ok(())
}

/// The async runtime petrel serves on: every core, with the scheduler's
/// last-woken-runs-first slot disabled, so that sockets that became
/// readable together are served in the order they became readable (a
/// SUBSCRIBE that arrived before another client's PUBLISH takes effect
/// first, as on a single-threaded broker).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

/// A running broker. Dropping it without `shutdown` leaves the tasks running
/// until the runtime ends.
pub struct Broker {
    state: Arc<BrokerState>,
    addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// The TLS listeners' certificates, reloaded on SIGHUP.
    certificates: Vec<Arc<TlsAcceptorCell>>,
}

impl Broker {
    /// Opens the store the durability mode asks for (the commit log and
    /// the state database under `data_dir`, or memory), rebuilds what it
    /// holds, binds every listener and starts serving.
    pub async fn start(settings: Settings) -> Result<Broker, BrokerError> {
        let store: Arc<dyn Store> = match settings.durability {
            Durability::Memory => Arc::new(MemoryStore::new()),
            Durability::Sync | Durability::Async => {
                let dir = settings.data_dir.clone();
                let options = DiskOptions {
                    segment_bytes: settings.log_segment_bytes,
                    max_disk_bytes: match settings.max_disk_bytes {
                        0 => u64::MAX,
                        bytes => bytes,
                    },
                };
                // Opening recovers the log's tail: disk work, kept off the
                // runtime's threads.
                let opened = tokio::task::spawn_blocking(move || DiskStore::open(&dir, options))
                    .await
                    .map_err(|error| StoreError::Backend(error.to_string()))??;
                Arc::new(opened)
            }
        };
        Broker::start_with_store(settings, store).await
    }

    /// Starts on the given store, first rebuilding what it holds.
    pub async fn start_with_store(
        settings: Settings,
        store: Arc<dyn Store>,
    ) -> Result<Broker, BrokerError> {
        // The security files before anything binds: a broker that cannot
        // tell who may connect must not accept anyone.
        let security = Security::load(&settings)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        // Certificates first: a listener that cannot serve TLS stops the
        // start before anything binds.
        let mut certificates = Vec::new();
        let mut endpoints = Vec::new();
        for listener in &settings.listeners {
            let tls = match listener.tls_files() {
                Some(files) => {
                    let cell = TlsAcceptorCell::load(files).map_err(|source| BrokerError::Tls {
                        addr: listener.bind,
                        source: Box::new(source),
                    })?;
                    let cell = Arc::new(cell);
                    certificates.push(cell.clone());
                    Some(cell)
                }
                None => None,
            };
            endpoints.push(transport::Endpoint::new(listener, tls));
        }
        // Bridges' certificates too: one that does not load stops the start.
        let topic_limits = crate::topic::TopicLimits {
            max_length: settings.limits.max_topic_length,
            max_levels: settings.limits.max_topic_levels,
        };
        let bridges = crate::bridge::spec::check_all(&settings.bridges, topic_limits)
            .map_err(|error| BrokerError::Config(error.to_string()))?
            .into_iter()
            .map(crate::bridge::Bridge::new)
            .collect::<Result<Vec<_>, _>>()?;
        let mut listeners = Vec::new();
        for listener in &settings.listeners {
            let socket = tokio::net::TcpListener::bind(listener.bind)
                .await
                .map_err(|source| BrokerError::Bind {
                    addr: listener.bind,
                    source,
                })?;
            listeners.push(socket);
        }
        let addrs = listeners
            .iter()
            .zip(&settings.listeners)
            .map(|(socket, listener)| socket.local_addr().unwrap_or(listener.bind))
            .collect();
        let admin = match &settings.admin {
            Some(admin) => {
                let socket = tokio::net::TcpListener::bind(admin.bind)
                    .await
                    .map_err(|source| BrokerError::AdminBind {
                        addr: admin.bind,
                        source,
                    })?;
                let addr = socket.local_addr().unwrap_or(admin.bind);
                Some((socket, addr, admin.token.clone()))
            }
            None => None,
        };
        let admin_addr = admin.as_ref().map(|(_, addr, _)| *addr);
        let snapshot = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.load())
                .await
                .map_err(|error| StoreError::Backend(error.to_string()))??
        };
        check_partitions(&settings, &snapshot)?;
        let flush = match settings.durability {
            Durability::Sync => Flush::EveryBatch,
            Durability::Async | Durability::Memory => {
                Flush::Background(Duration::from_millis(settings.flush_interval_ms))
            }
        };
        let keeps_messages = settings.durability != Durability::Memory;
        let journal = Journal::start(store, flush).map_err(BrokerError::Journal)?;
        let state = BrokerState::with_security(
            settings,
            journal,
            keeps_messages,
            snapshot,
            now_ms(),
            security,
        );
        for bridge in &bridges {
            bridge.prepare(&state)?;
        }
        // What the restore purged (expired sessions and retained messages)
        // is gone from disk before the first client is served.
        state.journal().drained().await;
        let mut tasks = JoinSet::new();
        let order = Arc::new(transport::ArrivalOrder::default());
        for (socket, endpoint) in listeners.into_iter().zip(endpoints) {
            tasks.spawn(transport::accept_loop(
                socket,
                endpoint,
                state.clone(),
                order.clone(),
                shutdown_rx.clone(),
                SHUTDOWN_GRACE,
            ));
        }
        tasks.spawn(crate::broker::serve_refills(
            state.clone(),
            shutdown_rx.clone(),
        ));
        tasks.spawn(crate::broker::serve_stream_reads(
            state.clone(),
            shutdown_rx.clone(),
        ));
        tasks.spawn(crate::broker::serve_stream_durability(
            state.clone(),
            shutdown_rx.clone(),
        ));
        tasks.spawn(crate::broker::serve_sys_tree(
            state.clone(),
            shutdown_rx.clone(),
        ));
        if let Some((socket, _, token)) = admin {
            tasks.spawn(crate::admin::serve(
                socket,
                crate::admin::router(state.clone(), token.as_deref()),
                shutdown_rx.clone(),
                SHUTDOWN_GRACE,
            ));
        }
        for bridge in bridges {
            tasks.spawn(bridge.run(state.clone(), shutdown_rx.clone()));
        }
        tasks.spawn(run_timers(state.clone(), shutdown_rx));
        Ok(Broker {
            state,
            addrs,
            admin_addr,
            shutdown,
            tasks,
            certificates,
        })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// Where the admin API listens (the port bound when `admin.bind` asked
    /// for port 0); `None` without an `[admin]` section.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Reloads what may change while serving (SIGHUP) and says in the log
    /// what was applied and what was refused.
    pub fn reload(&self) {
        // The password file and the ACL (logged by `reload_security`).
        self.state.reload_security();
        let failures = self.reload_certificates();
        let certificates = self.certificates.len();
        for error in &failures {
            tracing::error!(%error, "certificates not reloaded; the listener keeps its current ones");
        }
        if certificates > 0 {
            tracing::info!(
                reloaded = certificates - failures.len(),
                refused = failures.len(),
                "TLS certificates reloaded"
            );
        }
    }

    /// Reads every TLS listener's certificate and key files again; new
    /// connections use them, open ones keep theirs. A listener whose files
    /// do not load keeps its current ones; each failure is returned.
    pub fn reload_certificates(&self) -> Vec<TlsError> {
        self.certificates
            .iter()
            .filter_map(|cell| cell.reload().err())
            .collect()
    }

    pub fn metrics(&self) -> &Metrics {
        self.state.metrics()
    }

    /// The broker core, for tests that look at its state.
    pub fn state(&self) -> &Arc<BrokerState> {
        &self.state
    }

    /// Stops accepting, tells connected clients the server is shutting down
    /// (v5: DISCONNECT 0x8B), waits for the connections to close (cutting
    /// those still open after a grace period), and flushes the journal.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.state.shut_down();
        while self.tasks.join_next().await.is_some() {}
        let state = self.state.clone();
        let _ = tokio::task::spawn_blocking(move || state.journal().close()).await;
    }
}

/// The one timer task: sleeps until the wheel's next deadline (or until an
/// earlier one is armed), then hands what came due to the broker.
async fn run_timers(broker: Arc<BrokerState>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let wait = broker
            .timers()
            .next_deadline()
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
        let alarm = sleep_until(Instant::now() + wait.unwrap_or(Duration::from_secs(3600)));
        tokio::select! {
            _ = alarm => {}
            _ = broker.timers().changed() => {}
            _ = shutdown.changed() => return,
        }
        let now = now_ms();
        for event in broker.timers().advance(now) {
            broker.on_timer(event, now);
        }
    }
}
