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
use crate::health::{self, HealthError, SiteStatus};
use crate::metrics::Metrics;
use crate::timeline::Timeline;
use crate::units::Timestamp;

/// `/locate` requests asking the peers at once; more are answered 503.
const LOCATING_AT_ONCE: usize = 4;
/// How long a peer may take to connect for a request that asks it.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a request that asks the peers may take in all; then 504.
const ASK_DEADLINE: Duration = Duration::from_secs(60);
/// Threads answering requests: a client that reads slowly holds one.
const THREADS: usize = 4;
/// The cookie a browser keeps the token in once it opened `/?token=...`,
/// `hafill_token_<server>`: cookies ignore ports, so two servers reached
/// through tunnels on one host keep theirs apart.
const COOKIE: &str = "hafill_token_";
/// How long a browser keeps it.
const COOKIE_MAX_AGE_S: u64 = 30 * 86_400;

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
    /// The last timeline that reached further back than the regular look;
    /// one such look at a time (a second request waits for it, or is
    /// answered 503 when one already waits).
    wide: tokio::sync::Mutex<Option<(Instant, Arc<Timeline>)>>,
    wide_waiting: Arc<tokio::sync::Semaphore>,
    locating: Arc<tokio::sync::Semaphore>,
    started: Instant,
}

impl Board {
    pub fn new(metrics: Arc<Metrics>, config: Arc<Config>, every: Duration) -> Board {
        Board {
            metrics,
            config,
            every,
            last: RwLock::new(None),
            wide: tokio::sync::Mutex::new(None),
            wide_waiting: Arc::new(tokio::sync::Semaphore::new(2)),
            locating: Arc::new(tokio::sync::Semaphore::new(LOCATING_AT_ONCE)),
            started: Instant::now(),
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

/// A running HTTP listener; stops taking requests when dropped.
pub struct Listener {
    server: Arc<tiny_http::Server>,
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
        // Each answering thread ends at its next wait for a request; one
        // still writing to a slow client is not waited for.
        for _ in 0..THREADS {
            self.server.unblock();
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

/// Listens on `addr` and answers on threads of its own; what must ask the
/// peers runs on `runtime`.
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
    for i in 0..THREADS {
        let (s, board, runtime) = (server.clone(), board.clone(), runtime.clone());
        std::thread::Builder::new()
            .name(format!("hafill-http-{i}"))
            .spawn(move || {
                for req in s.incoming_requests() {
                    // A bug in answering one request must not end the thread.
                    let routed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        route(&req, &board)
                    }));
                    match routed {
                        Ok(Route::Now(resp)) => respond(req, resp),
                        Ok(Route::AskPeers(ask)) => ask_peers(req, ask, &board, &runtime),
                        Err(_) => respond(req, text(500, "internal error; see the daemon's log\n")),
                    }
                }
            })?;
    }
    Ok(Listener { server, addr })
}

/// Answers `req` on the runtime, under its kind's limit (held until the
/// answer is written) and [`ASK_DEADLINE`]; the answering thread goes on.
fn ask_peers(
    req: tiny_http::Request,
    ask: Ask,
    board: &Arc<Board>,
    runtime: &tokio::runtime::Handle,
) {
    let limit = match ask {
        Ask::Locate(..) => &board.locating,
        Ask::Timeline(..) => &board.wide_waiting,
    };
    let Ok(permit) = limit.clone().try_acquire_owned() else {
        return respond(
            req,
            text(
                503,
                "too many requests are asking the peers; try again shortly\n",
            ),
        );
    };
    let b = board.clone();
    runtime.spawn(async move {
        let resp = tokio::time::timeout(ASK_DEADLINE, ask.answer(b))
            .await
            .unwrap_or_else(|_| {
                error_json(
                    504,
                    format!("the peers did not answer within {ASK_DEADLINE:?}"),
                )
            });
        // The permit bounds the asking, not a client's reading.
        drop(permit);
        let _ = tokio::task::spawn_blocking(move || respond(req, resp)).await;
    });
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

/// Whether the request may be answered. With a token set, every request
/// must carry it (as a bearer, the cookie, or `?token=`), from this
/// machine too: a proxy on this machine forwards others' requests from
/// loopback. Without one, only requests from loopback that name this
/// machine by `localhost` or an address are answered: a web page that
/// rebinds its own name to 127.0.0.1 gets nothing.
fn allowed(
    req: &tiny_http::Request,
    token: Option<&Token>,
    cookie: &str,
    q: &HashMap<String, String>,
) -> bool {
    let Some(token) = token else {
        let local = req
            .remote_addr()
            .is_some_and(|a| a.ip().to_canonical().is_loopback());
        let named_locally = req
            .headers()
            .iter()
            .filter(|h| h.field.equiv("Host"))
            .all(|h| host_is_local(h.value.as_str()));
        return local && named_locally;
    };
    // Any bearer, any of our cookies, or the query may carry it: a proxy's
    // own `Authorization` does not hide a good cookie.
    let mut given: Vec<&str> = Vec::new();
    for h in req.headers() {
        if h.field.equiv("Authorization") {
            if let Some((scheme, value)) = h.value.as_str().trim().split_once(' ') {
                if scheme.eq_ignore_ascii_case("bearer") {
                    given.push(value.trim());
                }
            }
        } else if h.field.equiv("Cookie") {
            given.extend(
                h.value
                    .as_str()
                    .split(';')
                    .filter_map(|c| c.trim().strip_prefix(cookie)?.strip_prefix('=')),
            );
        }
    }
    given.extend(q.get("token").map(String::as_str));
    given.into_iter().any(|g| token.matches(g))
}

/// Whether a `Host` header names this machine without a name a stranger
/// controls: `localhost` or an IP address, with or without a port.
fn host_is_local(host: &str) -> bool {
    let host = host.trim();
    if let Some(v6) = host.strip_prefix('[') {
        return v6
            .split_once(']')
            .is_some_and(|(a, _)| a.parse::<std::net::Ipv6Addr>().is_ok());
    }
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.chars().all(|c| c.is_ascii_digit()) => n,
        _ => host,
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
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
    let cookie = format!("{COOKIE}{}", board.config.name);
    if !allowed(req, board.config.status_token.as_ref(), &cookie, &q) {
        let r = text(
            401,
            "this address needs the token of [server] status_token_file (Authorization: Bearer, or open /?token=...)\n",
        );
        return Route::Now(match header("WWW-Authenticate", "Bearer") {
            Some(h) => r.with_header(h),
            None => r,
        });
    }
    // Another web site's page may make the browser send requests here
    // (an image, a form); it cannot read the answers, but it must not make
    // this server ask its peers either.
    if req.headers().iter().any(|h| {
        h.field.equiv("Sec-Fetch-Site") && h.value.as_str().eq_ignore_ascii_case("cross-site")
    }) {
        return Route::Now(text(403, "requests from other web sites are refused\n"));
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
    // A browser that came with `?token=` keeps it in a cookie for the
    // page's own requests, and is sent on to `/` so that the token leaves
    // its address bar.
    let token = board.config.status_token.as_ref();
    if path == "/" {
        let set = q
            .get("token")
            .filter(|t| token.is_some_and(|k| k.matches(t)))
            .and_then(|t| {
                header(
                    "Set-Cookie",
                    &format!(
                        "{cookie}={t}; Path=/; Max-Age={COOKIE_MAX_AGE_S}; HttpOnly; SameSite=Lax"
                    ),
                )
            });
        // Back to the page with the rest of its query.
        let rest: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(q.iter().filter(|(k, _)| *k != "token"))
            .finish();
        let to = if rest.is_empty() {
            "./".to_string()
        } else {
            format!("./?{rest}")
        };
        if let (Some(c), Some(l)) = (set, header("Location", &to)) {
            return Route::Now(text(303, "see /\n").with_header(c).with_header(l));
        }
    }
    Route::Now(match path {
        "/metrics" => {
            // Before a first look, the age counts from the start: a daemon
            // that never manages one shows a status ever older.
            let since = board.look().map_or(board.started, |l| l.at);
            board.metrics.set_status_age(since.elapsed());
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
                "/status" if q.get("brief").is_some_and(|b| b == "1") => {
                    match crate::page::brief(&look.status) {
                        Ok(v) => json(200, &v),
                        Err(e) => text(500, &format!("{e}\n")),
                    }
                }
                "/status" => json(200, &*look.status),
                "/timeline" => {
                    let (since, until) = match (time("since"), time("until")) {
                        (Ok(s), Ok(u)) => (s, u),
                        (Err(r), _) | (_, Err(r)) => return Route::Now(r),
                    };
                    let to = until.map_or(i64::MAX, |t| t.0);
                    // Nothing older than the retention is asked for; a
                    // moment within a second of the look's start is the
                    // look's (the page sends milliseconds).
                    let retention = board.config.retention_us.min(i64::MAX as u64) as i64;
                    let oldest = now.0.saturating_sub(retention);
                    let from = since.map_or(look.timeline.from_us, |t| t.0).max(oldest);
                    let from = if (look.timeline.from_us - 1_000_000..look.timeline.from_us)
                        .contains(&from)
                    {
                        look.timeline.from_us
                    } else {
                        from
                    };
                    if to <= from {
                        error_json(400, "until= must be later than since=".into())
                    } else if from >= look.timeline.from_us {
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
                    match page {
                        Ok(p) => with_type(200, "text/html; charset=utf-8", p.into_bytes()),
                        Err(e) => text(500, &format!("{e}\n")),
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
    async fn answer(self, board: Arc<Board>) -> Response {
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
                Err(e @ (HealthError::Unpaired(_) | HealthError::NotHere { .. })) => {
                    error_json(400, e.to_string())
                }
                Err(e) => error_json(500, e.to_string()),
            },
            Ask::Timeline(from, to) => {
                // The look runs in a task of its own, holding `wide`: a
                // request that gives up at the deadline leaves it running,
                // and its result is kept for the next request.
                let b = board.clone();
                let look = tokio::spawn(async move {
                    let mut wide = b.wide.lock().await;
                    let kept = wide
                        .as_ref()
                        .filter(|(at, t)| at.elapsed() < b.every && t.from_us <= from)
                        .map(|(_, t)| t.clone());
                    if let Some(t) = kept {
                        return Ok(t);
                    }
                    let (_, t) = health::site(&b.config, Some(Timestamp(from)), ASK_TIMEOUT)
                        .await
                        .map_err(|e| e.to_string())?;
                    let t = Arc::new(t);
                    *wide = Some((Instant::now(), t.clone()));
                    Ok::<_, String>(t)
                });
                match look.await {
                    Ok(Ok(t)) => json(200, &live(&t.cut(from, to), &board)),
                    Ok(Err(e)) => error_json(500, e),
                    Err(e) => error_json(500, e.to_string()),
                }
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
