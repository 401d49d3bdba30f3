//! The daemon's HTTP side (`[server] status`, local by default): Prometheus
//! `/metrics` and `/status` (the JSON of `hafill status`).
//!
//! Scrapes never reach the peers: a background task takes the site status
//! every so often and the handlers serve its last result; the backfill
//! counters are live.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::health;
use crate::metrics::Metrics;

/// What the handlers serve.
#[derive(Debug)]
pub struct Board {
    pub metrics: Arc<Metrics>,
    /// The last status (JSON) and when it was taken.
    status: RwLock<Option<(Instant, String)>>,
}

impl Board {
    pub fn new(metrics: Arc<Metrics>) -> Board {
        Board {
            metrics,
            status: RwLock::new(None),
        }
    }

    fn set_status(&self, json: String) {
        let v = Some((Instant::now(), json));
        match self.status.write() {
            Ok(mut s) => *s = v,
            Err(p) => *p.into_inner() = v,
        }
    }

    fn status(&self) -> Option<(Instant, String)> {
        match self.status.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// A running HTTP listener; stops when dropped.
pub struct Listener {
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Listens on `addr` and answers on a thread of its own.
pub fn listen(addr: SocketAddr, board: Arc<Board>) -> Result<Listener, std::io::Error> {
    let server = Arc::new(
        tiny_http::Server::http(addr)
            .map_err(|e| std::io::Error::other(format!("status address {addr}: {e}")))?,
    );
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| std::io::Error::other("status listener has no IP address"))?;
    let s = server.clone();
    let thread = std::thread::Builder::new()
        .name("hafill-http".into())
        .spawn(move || {
            for req in s.incoming_requests() {
                let resp = answer(&req, &board);
                if let Err(e) = req.respond(resp) {
                    tracing::debug!("http: {e}");
                }
            }
        })?;
    Ok(Listener {
        server,
        thread: Some(thread),
        addr,
    })
}

fn answer(
    req: &tiny_http::Request,
    board: &Board,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let text = |code: u16, ctype: &str, body: String| {
        let r = tiny_http::Response::from_data(body.into_bytes()).with_status_code(code);
        match tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes()) {
            Ok(h) => r.with_header(h),
            Err(()) => r,
        }
    };
    if *req.method() != tiny_http::Method::Get && *req.method() != tiny_http::Method::Head {
        return text(405, "text/plain", "only GET\n".into());
    }
    match req.url().split('?').next().unwrap_or("") {
        "/metrics" => {
            if let Some((at, _)) = board.status() {
                board.metrics.set_status_age(at.elapsed());
            }
            text(
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                board.metrics.encode(),
            )
        }
        "/status" => match board.status() {
            Some((_, json)) => text(200, "application/json", json),
            None => text(
                503,
                "text/plain",
                "the first status is still being taken; try again in a few seconds\n".into(),
            ),
        },
        "/" => text(
            200,
            "text/plain",
            "hafill: /metrics (Prometheus), /status (JSON of `hafill status`)\n".into(),
        ),
        _ => text(
            404,
            "text/plain",
            "not found: try /metrics or /status\n".into(),
        ),
    }
}

/// Takes the site status now and then every `every`, for `/status` and the
/// alert gauges, until `stop` is set.
pub async fn status_loop(
    config: Arc<Config>,
    board: Arc<Board>,
    every: Duration,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let taken = tokio::select! {
            s = health::status(&config, None, Duration::from_secs(10)) => s,
            _ = crate::daemon::stopped(&stop) => return,
        };
        match taken {
            Ok(s) => {
                board.metrics.set_status(&s);
                match serde_json::to_string_pretty(&s) {
                    Ok(json) => board.set_status(json),
                    Err(e) => tracing::warn!("status: {e}"),
                }
            }
            Err(e) => tracing::warn!("status: {e}; next in {every:?}"),
        }
        crate::daemon::sleep_unless_stopped(every, &stop).await;
    }
}
