//! The daemon's HTTP side (`[server] status`, this machine only unless a
//! token is set): the operator's page at `/`, Prometheus `/metrics`,
//! `/status` (the JSON of `hafill status`), `/timeline` (the page's bars)
//! and `/locate` (the JSON of `hafill locate`).
//!
//! Scrapes and page loads never reach the peers: a background task takes
//! the site status and timeline every so often and the handlers serve its
//! last result; the backfill counters and progress are live. Only
//! `/locate`, and a timeline older than the last look, ask the peers, a
//! few at a time, on the daemon's runtime.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::camera::CameraId;
use crate::config::{Config, Token};
use crate::health::{self, SiteStatus};
use crate::metrics::Metrics;
use crate::timeline::Timeline;
use crate::units::Timestamp;

/// Requests that ask the peers (`/locate`, an older timeline) at once;
/// more are answered 503.
const ASKING_AT_ONCE: usize = 4;
/// How long each peer may take to answer such a request.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// The cookie a browser keeps the token in once it opened `/?token=...`.
const COOKIE: &str = "hafill_token";

/// What the site looked like at the last look.
#[derive(Debug)]
struct Look {
    at: Instant,
    status: Arc<SiteStatus>,
    timeline: Arc<Timeline>,
}

/// What the handlers serve.
#[derive(Debug)]
pub struct Board {
    pub metrics: Arc<Metrics>,
    config: Arc<Config>,
    /// How often the status is taken: a wider timeline asked for is kept
    /// this long.
    every: Duration,
    last: RwLock<Option<Arc<Look>>>,
    /// The last timeline that reached further back than the regular look.
    wide: tokio::sync::Mutex<Option<(Instant, Arc<Timeline>)>>,
    asking: Arc<tokio::sync::Semaphore>,
}

impl Board {
    pub fn new(metrics: Arc<Metrics>, config: Arc<Config>, every: Duration) -> Board {
        Board {
            metrics,
            config,
            every,
            last: RwLock::new(None),
            wide: tokio::sync::Mutex::new(None),
            asking: Arc::new(tokio::sync::Semaphore::new(ASKING_AT_ONCE)),
        }
    }

    fn set_look(&self, status: SiteStatus, timeline: Timeline) {
        let v = Some(Arc::new(Look {
            at: Instant::now(),
            status: Arc::new(status),
            timeline: Arc::new(timeline),
        }));
        match self.last.write() {
            Ok(mut s) => *s = v,
            Err(p) => *p.into_inner() = v,
        }
    }

    fn look(&self) -> Option<Arc<Look>> {
        match self.last.read() {
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

/// An answer, before it is encoded for the request it answers.
struct Response {
    code: u16,
    ctype: &'static str,
    body: Vec<u8>,
    headers: Vec<tiny_http::Header>,
}

impl Response {
    fn with_header(mut self, h: tiny_http::Header) -> Response {
        self.headers.push(h);
        self
    }
}

/// Bodies smaller than this go as they are.
const GZIP_FROM: usize = 1400;

/// Listens on `addr` and answers on a thread of its own; what must ask
/// the peers runs on `runtime`.
pub fn listen(
    addr: SocketAddr,
    board: Arc<Board>,
    runtime: tokio::runtime::Handle,
) -> Result<Listener, std::io::Error> {
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
                match route(&req, &board) {
                    Route::Now(resp) => respond(req, resp),
                    Route::AskPeers(ask) => {
                        let Ok(permit) = board.asking.clone().try_acquire_owned() else {
                            respond(
                                req,
                                text(
                                    503,
                                    "too many requests are asking the peers; try again shortly\n",
                                ),
                            );
                            continue;
                        };
                        let board = board.clone();
                        runtime.spawn(async move {
                            let resp = ask.answer(&board).await;
                            drop(permit);
                            let _ = tokio::task::spawn_blocking(move || respond(req, resp)).await;
                        });
                    }
                }
            }
        })?;
    Ok(Listener {
        server,
        thread: Some(thread),
        addr,
    })
}

/// Sends `resp`, gzipped where the client takes gzip and it pays.
fn respond(req: tiny_http::Request, resp: Response) {
    let gzip = resp.body.len() >= GZIP_FROM
        && req.headers().iter().any(|h| {
            h.field.equiv("Accept-Encoding")
                && h.value
                    .as_str()
                    .split(',')
                    .any(|e| e.split(';').next().is_some_and(|e| e.trim() == "gzip"))
        });
    let mut headers = resp.headers;
    headers.extend(header("Content-Type", resp.ctype));
    headers.extend(header("Cache-Control", "no-store"));
    let body = if gzip {
        use std::io::Write;
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        match z.write_all(&resp.body).and_then(|()| z.finish()) {
            Ok(b) => {
                headers.extend(header("Content-Encoding", "gzip"));
                b
            }
            Err(_) => resp.body,
        }
    } else {
        resp.body
    };
    let mut r = tiny_http::Response::from_data(body).with_status_code(resp.code);
    for h in headers {
        r.add_header(h);
    }
    if let Err(e) = req.respond(r) {
        tracing::debug!("http: {e}");
    }
}

fn header(name: &str, value: &str) -> Option<tiny_http::Header> {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn with_type(code: u16, ctype: &'static str, body: Vec<u8>) -> Response {
    Response {
        code,
        ctype,
        body,
        headers: Vec::new(),
    }
}

fn text(code: u16, body: &str) -> Response {
    with_type(code, "text/plain; charset=utf-8", body.as_bytes().to_vec())
}

fn json<T: serde::Serialize>(code: u16, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(b) => with_type(code, "application/json", b),
        Err(e) => text(500, &format!("{e}\n")),
    }
}

fn error_json(code: u16, message: String) -> Response {
    json(code, &serde_json::json!({ "error": message }))
}

/// The query's parameters, decoded.
fn query(url: &str) -> HashMap<String, String> {
    url.split_once('?')
        .map(|(_, q)| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// Whether the request may be answered: from this machine always; from
/// another only with the token (as a bearer, the cookie, or `?token=`).
fn allowed(req: &tiny_http::Request, token: Option<&Token>, q: &HashMap<String, String>) -> bool {
    if req
        .remote_addr()
        .is_some_and(|a| a.ip().to_canonical().is_loopback())
    {
        return true;
    }
    let Some(token) = token else {
        return false;
    };
    let given = req.headers().iter().find_map(|h| {
        if h.field.equiv("Authorization") {
            h.value.as_str().strip_prefix("Bearer ").map(str::trim)
        } else if h.field.equiv("Cookie") {
            h.value
                .as_str()
                .split(';')
                .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        } else {
            None
        }
    });
    given.is_some_and(|g| token.matches(g)) || q.get("token").is_some_and(|g| token.matches(g))
}

enum Route {
    Now(Response),
    AskPeers(Ask),
}

/// Work that asks the peers.
enum Ask {
    Locate(CameraId, Timestamp),
    Timeline(i64, i64),
}

fn route(req: &tiny_http::Request, board: &Board) -> Route {
    let url = req.url();
    let q = query(url);
    if !allowed(req, board.config.status_token.as_ref(), &q) {
        let r = text(
            401,
            "this address needs the token of [server] status_token_file (Authorization: Bearer, or open /?token=...)\n",
        );
        return Route::Now(match header("WWW-Authenticate", "Bearer") {
            Some(h) => r.with_header(h),
            None => r,
        });
    }
    if *req.method() != tiny_http::Method::Get && *req.method() != tiny_http::Method::Head {
        return Route::Now(text(405, "only GET\n"));
    }
    let now = Timestamp::now();
    let time = |key: &str| -> Result<Option<Timestamp>, Response> {
        match q.get(key) {
            None => Ok(None),
            Some(v) => Timestamp::parse(v, now).map(Some).map_err(|e| {
                error_json(400, format!("{key}={v:?}: {e} (RFC 3339, `now` or `-2h`)"))
            }),
        }
    };
    let path = url.split('?').next().unwrap_or("");
    Route::Now(match path {
        "/metrics" => {
            if let Some(l) = board.look() {
                board.metrics.set_status_age(l.at.elapsed());
            }
            with_type(
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                board.metrics.encode().into_bytes(),
            )
        }
        "/" | "/status" | "/timeline" => {
            let Some(look) = board.look() else {
                return Route::Now(text(
                    503,
                    "the first status is still being taken; try again in a few seconds\n",
                ));
            };
            match path {
                "/status" => json(200, &*look.status),
                "/timeline" => {
                    let (since, until) = match (time("since"), time("until")) {
                        (Ok(s), Ok(u)) => (s, u),
                        (Err(r), _) | (_, Err(r)) => return Route::Now(r),
                    };
                    let to = until.map_or(i64::MAX, |t| t.0);
                    let from = since.map_or(look.timeline.from_us, |t| t.0);
                    if from >= look.timeline.from_us {
                        json(200, &live(&look.timeline.cut(from, to), board))
                    } else {
                        return Route::AskPeers(Ask::Timeline(from, to));
                    }
                }
                _ => {
                    let page = crate::page::render(
                        &look.status,
                        &live(&look.timeline, board),
                        board.config.retention_us,
                        true,
                    );
                    let r = match page {
                        Ok(p) => with_type(200, "text/html; charset=utf-8", p.into_bytes()),
                        Err(e) => text(500, &format!("{e}\n")),
                    };
                    // A browser that came with `?token=` keeps it for the
                    // page's own requests.
                    let token = board.config.status_token.as_ref();
                    match q
                        .get("token")
                        .filter(|t| token.is_some_and(|k| k.matches(t)))
                        .and_then(|t| {
                            header(
                                "Set-Cookie",
                                &format!("{COOKIE}={t}; Path=/; HttpOnly; SameSite=Strict"),
                            )
                        }) {
                        Some(h) => r.with_header(h),
                        None => r,
                    }
                }
            }
        }
        "/locate" => {
            let camera = match q.get("camera").map(|c| CameraId::new(c.clone())) {
                Some(Ok(c)) => c,
                Some(Err(e)) => return Route::Now(error_json(400, format!("camera: {e}"))),
                None => return Route::Now(error_json(400, "camera= is missing".into())),
            };
            match time("at") {
                Ok(Some(at)) => return Route::AskPeers(Ask::Locate(camera, at)),
                Ok(None) => error_json(400, "at= is missing (RFC 3339, `now` or `-2h`)".into()),
                Err(r) => r,
            }
        }
        _ => text(
            404,
            "not found: try / (the page), /metrics, /status, /timeline or /locate\n",
        ),
    })
}

/// The timeline with the backfill's progress as it is now.
fn live(t: &Timeline, board: &Board) -> Timeline {
    t.with_progress(&board.config, board.metrics.progress())
}

impl Ask {
    async fn answer(self, board: &Board) -> Response {
        let config = &board.config;
        match self {
            Ask::Locate(camera, at) => match health::locate(config, &camera, at, ASK_TIMEOUT).await
            {
                Ok((Some(l), _)) => json(200, &l),
                Ok((None, unreachable)) => json(
                    404,
                    &serde_json::json!({
                        "error": format!("no server holds {camera} at {at}"),
                        "unreachable": unreachable,
                    }),
                ),
                Err(e) => error_json(400, e.to_string()),
            },
            Ask::Timeline(from, to) => {
                let mut wide = board.wide.lock().await;
                let kept = wide
                    .as_ref()
                    .filter(|(at, t)| at.elapsed() < board.every && t.from_us <= from)
                    .map(|(_, t)| t.clone());
                let t = match kept {
                    Some(t) => t,
                    None => match health::site(config, Some(Timestamp(from)), ASK_TIMEOUT).await {
                        Ok((_, t)) => {
                            let t = Arc::new(t);
                            *wide = Some((Instant::now(), t.clone()));
                            t
                        }
                        Err(e) => return error_json(500, e.to_string()),
                    },
                };
                json(200, &live(&t.cut(from, to), board))
            }
        }
    }
}

/// Takes the site status and timeline now and then every `every`, for
/// `/status`, the page and the alert gauges, until `stop` is set.
pub async fn status_loop(
    config: Arc<Config>,
    board: Arc<Board>,
    every: Duration,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let taken = tokio::select! {
            s = health::site(&config, None, Duration::from_secs(10)) => s,
            _ = crate::daemon::stopped(&stop) => return,
        };
        match taken {
            Ok((s, t)) => {
                board.metrics.set_status(&s);
                board.set_look(s, t);
            }
            Err(e) => tracing::warn!("status: {e}; next in {every:?}"),
        }
        crate::daemon::sleep_unless_stopped(every, &stop).await;
    }
}
