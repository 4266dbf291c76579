//! What the bridge tests share besides brokers and clients: scratch
//! directories, ports, bounded waits, certificates and a tiny HTTP GET for
//! the admin API. Nothing here uses petrel's Rust API: the tests drive the
//! `petrel` binary only.

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

/// How long a single step a healthy setup finishes in milliseconds may
/// take (a broker starting, one message crossing a bridge, a reconnect after
/// the bridge's backoff) before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// How long a bulk step (hundreds of messages crossing) may take.
pub const BULK_WAIT: Duration = Duration::from_secs(40);

/// How often a retry loop that waits for a condition tries again.
pub const POLL: Duration = Duration::from_millis(25);

/// Whether brokers print their logs when dropped even if the test passed
/// (`BRIDGE_TEST_LOGS=1`); they always do when it failed.
pub fn show_logs() -> bool {
    std::env::var_os("BRIDGE_TEST_LOGS").is_some_and(|v| v == "1")
}

pub use crate::common::scratch::TempDir;

/// A loopback port that was free when asked, that no other test of this
/// process was given, and that lies below the kernel's ephemeral range.
///
/// Brokers here are stopped and started again on the same port while a
/// bridge keeps dialling it. Were the port ephemeral, the kernel could hand
/// it to one of those very outgoing sockets as its local port (a loopback
/// connect can even connect to itself), and the restarted broker could not
/// bind.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    const LOWEST: u16 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    if ephemeral_start > LOWEST + 1000 {
        let span = u64::from(ephemeral_start - LOWEST);
        for _ in 0..500 {
            // xorshift64: any spread will do.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let port = LOWEST + (seed % span) as u16;
            if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.push(port);
                return port;
            }
        }
    }
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("bind an ephemeral port")
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Whether something accepts TCP connections on `addr` right now.
pub async fn accepts(addr: SocketAddr) -> bool {
    matches!(
        timeout(Duration::from_secs(1), TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Asks `check` every [`POLL`] until it returns `Some`, for at most
/// `within`; `None` if it never did.
pub async fn poll_until<T>(
    within: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = check().await {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        sleep(POLL).await;
    }
}

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client
/// certificate (`ca.crt`, `server.crt`, `server.key`, `client.crt`,
/// `client.key`), made by the repository's `certs/make-dev-certs.sh`.
pub use crate::common::certs::Certs;

/// `GET path` on an HTTP server: the status code and the body. HTTP/1.0,
/// so the answer is neither chunked nor kept alive: the body is everything
/// after the headers until the server closes.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send the request: {e}"))?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("read the answer: {e}"))?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no end of headers in {answer:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("no status in {head:?}"))?;
        Ok((status, body.to_string()))
    };
    timeout(WAIT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("GET {path} on {addr}: no answer within {WAIT:?}")))
}

/// The name of the user the tests run as, for Mosquitto's `user` setting.
pub fn current_user() -> String {
    let output = Command::new("id").arg("-un").output().expect("run id -un");
    assert!(output.status.success(), "id -un failed");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Sends `signal` to process `pid`.
pub fn signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
    // SAFETY: kill(2) only sends a signal, to a child of ours that has not
    // been reaped (the caller holds its handle).
    let sent = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        sent,
        0,
        "cannot signal {pid}: {}",
        std::io::Error::last_os_error()
    );
}
