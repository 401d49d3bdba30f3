//! `sim stream`: a constant-rate UDP stream standing for live cameras on a
//! link, and its receiver, which reports loss and one-way delay. Both ends
//! run on one machine (network namespaces share the kernel's clock), so a
//! packet's send time in its payload gives the delay directly.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::live::Percentiles;

/// Payload bytes per packet (a camera's RTP packet is about this size).
pub const PACKET: usize = 1200;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The packets a stream of `rate_bps` sends in `duration`.
pub fn packets_for(rate_bps: u64, duration: Duration) -> u64 {
    (rate_bps as f64 * duration.as_secs_f64() / 8.0 / PACKET as f64).round() as u64
}

/// Sends exactly [`packets_for`]`(rate_bps, duration)` packets to `to`,
/// paced every millisecond over `duration` (catching up when the sender
/// was late, so the count never depends on scheduling). Returns the count.
pub fn send(to: SocketAddr, rate_bps: u64, duration: Duration) -> std::io::Result<u64> {
    let bind: SocketAddr = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .map_err(std::io::Error::other)?;
    let socket = UdpSocket::bind(bind)?;
    let total = packets_for(rate_bps, duration);
    let mut buf = [0u8; PACKET];
    let (t0, mut seq) = (Instant::now(), 0u64);
    let mut tick = t0;
    while seq < total {
        let share = (t0.elapsed().as_secs_f64() / duration.as_secs_f64().max(1e-9)).min(1.0);
        let due = ((total as f64 * share).ceil() as u64).min(total);
        while seq < due {
            buf[..8].copy_from_slice(&seq.to_le_bytes());
            buf[8..16].copy_from_slice(&now_ns().to_le_bytes());
            // A full socket buffer is the link's loss, not ours to retry.
            let _ = socket.send_to(&buf, to);
            seq += 1;
        }
        tick += Duration::from_millis(1);
        if let Some(wait) = tick.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok(seq)
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    pub received: u64,
    /// Packets missing below the highest sequence number seen.
    pub lost: u64,
    pub loss_percent: f64,
    /// One-way delay in milliseconds.
    pub delay_ms: Percentiles,
    pub delay_mean_ms: f64,
    pub mbit_s: f64,
}

/// Receives on `listen` until `duration` has passed (or a second without
/// packets after the first), then reports.
pub fn receive(listen: SocketAddr, duration: Duration) -> std::io::Result<StreamReport> {
    receive_on(UdpSocket::bind(listen)?, duration)
}

/// [`receive`] on a socket already bound.
pub fn receive_on(socket: UdpSocket, duration: Duration) -> std::io::Result<StreamReport> {
    // A deep receive buffer: the instrument must not drop what the link
    // delivered while it waits for a core (the backfill it measures uses
    // them too). Capped by net.core.rmem_max.
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&socket, 16 << 20);
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 2048];
    let (mut received, mut highest, mut delays) = (0u64, None::<u64>, Vec::new());
    let t0 = Instant::now();
    let (mut first, mut last) = (None::<Instant>, Instant::now());
    while t0.elapsed() < duration && !(first.is_some() && last.elapsed() > Duration::from_secs(1)) {
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        if n < 16 {
            continue;
        }
        let at = now_ns();
        last = Instant::now();
        first.get_or_insert(last);
        let seq = u64::from_le_bytes(buf[..8].try_into().map_err(std::io::Error::other)?);
        let sent = u64::from_le_bytes(buf[8..16].try_into().map_err(std::io::Error::other)?);
        received += 1;
        highest = Some(highest.map_or(seq, |h: u64| h.max(seq)));
        delays.push(at.saturating_sub(sent) as f64 / 1e6);
    }
    let expected = highest.map_or(0, |h| h + 1);
    let lost = expected.saturating_sub(received);
    let mean = if delays.is_empty() {
        0.0
    } else {
        delays.iter().sum::<f64>() / delays.len() as f64
    };
    let span = first
        .map_or(0.0, |f| last.duration_since(f).as_secs_f64())
        .max(1e-3);
    Ok(StreamReport {
        received,
        lost,
        loss_percent: if expected == 0 {
            0.0
        } else {
            lost as f64 * 100.0 / expected as f64
        },
        delay_ms: Percentiles::of(delays),
        delay_mean_ms: mean,
        mbit_s: received as f64 * PACKET as f64 * 8.0 / span / 1e6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_on_loopback_arrives_whole_and_is_measured() {
        // Bound before anything is sent: no packet can miss the receiver.
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let rx = std::thread::spawn(move || receive_on(socket, Duration::from_secs(3)).unwrap());
        let sent = send(addr, 10_000_000, Duration::from_millis(500)).unwrap();
        let r = rx.join().unwrap();
        // 10 Mbit/s for half a second: 521 packets of 1200 bytes.
        assert_eq!(sent, packets_for(10_000_000, Duration::from_millis(500)));
        assert_eq!(sent, 521);
        assert_eq!(r.received + r.lost, sent);
        assert!(r.delay_ms.max >= r.delay_ms.p50);
    }
}
