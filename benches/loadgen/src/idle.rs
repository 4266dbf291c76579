//! The idle scenario: open many connections that only keep themselves
//! alive, hold them, and read how much memory the broker spends on each.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use crate::client::{Conn, Incoming, Version};
use crate::report::IdleReport;
use crate::stats::Histogram;
use crate::{BenchArgs, BenchError, broker_rss_kb, ping_every, run_id};

/// Connection attempts in flight at once, so the broker's accept backlog is
/// not flooded.
const CONNECT_CONCURRENCY: usize = 128;
/// Read buffer of an idle connection: it only ever receives PINGRESP.
const IDLE_READ_CHUNK: usize = 64;
/// Connections per local source address. One address has about 28k
/// ephemeral ports (Linux default range), so large runs against a loopback
/// broker spread over 127.0.0.1, 127.0.0.2, ...
const PER_SOURCE_ADDRESS: u32 = 20_000;

/// How one idle connection ended.
enum Held {
    /// Stayed up until told to stop.
    Kept,
    /// The broker closed it or an error occurred while held.
    Dropped(BenchError),
}

/// The local address connection `index` binds to, if spreading is needed.
pub fn source_address(target: SocketAddr, total: u32, index: u32) -> Option<IpAddr> {
    match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() && total > PER_SOURCE_ADDRESS => {
            let host = 1 + index / PER_SOURCE_ADDRESS;
            Some(IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                (host >> 8) as u8,
                (host & 0xff) as u8,
            )))
        }
        _ => None,
    }
}

/// Keeps one connection alive with PINGREQ until `stop`.
async fn hold(
    conn: &mut Conn,
    ping: Duration,
    deadline: Instant,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), BenchError> {
    let mut next_ping = Instant::now() + ping;
    loop {
        if *stop.borrow_and_update() || Instant::now() >= deadline {
            return Ok(());
        }
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            _ = sleep_until(next_ping.min(deadline)) => {
                if Instant::now() >= next_ping {
                    conn.queue_pingreq()?;
                    conn.flush().await?;
                    next_ping = Instant::now() + ping;
                }
            }
            result = conn.fill() => {
                result?;
                while let Some(packet) = conn.decode()? {
                    match packet {
                        Incoming::PingResp => {}
                        other => return Err(conn.unexpected(&other)),
                    }
                }
            }
        }
    }
}

/// Runs the idle scenario.
pub async fn run(
    args: &BenchArgs,
    addr: SocketAddr,
    version: Version,
) -> Result<IdleReport, BenchError> {
    let run = run_id();
    let total = args.connections;
    let base = Instant::now();
    let deadline = base + Duration::from_secs(args.timeout);
    let ping = ping_every(args.keepalive);
    let keepalive = args.keepalive;
    let rss_before_kb = broker_rss_kb(args.broker_pid)?;

    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<Duration, BenchError>>(1024);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut handles = Vec::with_capacity(total as usize);
    for i in 0..total {
        let gate = Arc::clone(&gate);
        let ready = ready_tx.clone();
        let mut stop = stop_rx.clone();
        let name = format!("bench-{run}-i{i}");
        let local = source_address(addr, total, i);
        handles.push(tokio::spawn(async move {
            let setup = async {
                let _permit = gate.acquire_owned().await.ok();
                let started = Instant::now();
                let mut conn = Conn::open(name, version, addr, local, IDLE_READ_CHUNK).await?;
                conn.handshake(keepalive).await?;
                Ok::<_, BenchError>((conn, started.elapsed()))
            };
            let (mut conn, took) = match timeout_at(deadline, setup).await {
                Ok(Ok(opened)) => opened,
                Ok(Err(e)) => {
                    let _ = ready.send(Err(e)).await;
                    return None;
                }
                Err(_) => {
                    let _ = ready
                        .send(Err(BenchError::Timeout("opening idle connections")))
                        .await;
                    return None;
                }
            };
            let _ = ready.send(Ok(took)).await;
            drop(ready);
            let held = match hold(&mut conn, ping, deadline, &mut stop).await {
                Ok(()) => Held::Kept,
                Err(e) => Held::Dropped(e),
            };
            if matches!(held, Held::Kept) && conn.queue_disconnect().is_ok() {
                let _ = timeout(Duration::from_secs(1), conn.flush()).await;
            }
            Some(held)
        }));
    }
    drop(ready_tx);

    let mut established = 0u32;
    let mut connect_latency = Histogram::new();
    let mut first_failure: Option<BenchError> = None;
    for _ in 0..total {
        match timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(Ok(took))) => {
                established += 1;
                connect_latency.record(took.as_nanos() as u64);
            }
            Ok(Some(Err(e))) => {
                first_failure.get_or_insert(e);
            }
            Ok(None) | Err(_) => break,
        }
    }
    let connect_time = base.elapsed();
    let failed = total - established;
    if established == 0 {
        handles.iter().for_each(|h| h.abort());
        return Err(first_failure.unwrap_or(BenchError::Timeout("opening idle connections")));
    }
    let mut first_error = first_failure.map(|e| e.to_string());
    tracing::info!(established, failed, "idle connections open, holding");

    let hold_for = Duration::from_secs(args.hold);
    let hold_start = Instant::now();
    sleep_until((hold_start + hold_for).min(deadline)).await;
    let rss_after_kb = broker_rss_kb(args.broker_pid)?;
    let held = hold_start.elapsed();
    let _ = stop_tx.send(true);

    let mut dropped = 0u32;
    for handle in handles {
        if let Ok(Ok(Some(Held::Dropped(e)))) = timeout(Duration::from_secs(10), handle).await {
            dropped += 1;
            first_error.get_or_insert_with(|| e.to_string());
        }
    }

    Ok(IdleReport {
        label: args.label.clone(),
        protocol: args.protocol,
        requested: total,
        established,
        failed,
        dropped,
        connect_time,
        connect_latency,
        hold: held,
        rss_before_kb,
        rss_after_kb,
        first_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_runs_use_the_default_source_address() {
        let target: SocketAddr = ([127, 0, 0, 1], 1883).into();
        assert_eq!(source_address(target, 1000, 999), None);
    }

    #[test]
    fn large_loopback_runs_spread_over_source_addresses() {
        let target: SocketAddr = ([127, 0, 0, 1], 1883).into();
        let at = |i| source_address(target, 100_000, i);
        assert_eq!(at(0), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))));
        assert_eq!(at(19_999), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))));
        assert_eq!(at(20_000), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
        assert_eq!(at(99_999), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5))));
    }

    #[test]
    fn remote_targets_are_never_spread() {
        let target: SocketAddr = ([10, 0, 0, 1], 1883).into();
        assert_eq!(source_address(target, 100_000, 50_000), None);
    }
}
