//! The HTTP endpoint `monitor --metrics-addr` serves: one GET per
//! connection, answered with whatever the caller renders.
//!
//! The endpoint must answer Prometheus while any local user floods it, or
//! no alert can fire, and it must never cost the agent its descriptors (a
//! thousand idle connections once took them all: discovery then read an
//! empty /proc and detection went blind). So:
//!
//! - at most [`Limits::max_connections`] connections are held at once;
//! - a connection is *idle* until its whole request head has arrived, and
//!   when the slots run out the oldest idle one is closed to make room for
//!   the newcomer. A scraper sends its request at once and becomes busy
//!   within a millisecond, so it always outlives the idle ones; a flood of
//!   connections that send nothing, or half a request, only evicts itself;
//! - an idle connection must send its first byte within
//!   [`Limits::first_byte`] and its whole head within [`Limits::read`];
//!   writing the response has [`Limits::write`].
//!
//! Why not hyper: a scrape is one small GET, and the defence above lives in
//! the accept loop, which hyper (and hyper-util's server) leave to the
//! caller: they offer a header-read timeout, but no bound on connections
//! and no eviction. Hyper would add a dozen crates to a tool that runs with
//! BPF privileges and still need this loop around it.

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::{AbortHandle, JoinHandle},
    time::{timeout, timeout_at},
};

/// A response body and its content type.
pub struct Rendered {
    pub content_type: &'static str,
    pub body: String,
}

/// Renders the body of a `GET /metrics`.
pub trait Render: Send + Sync + 'static {
    /// `accept` is the request's Accept header, if any: the format is the
    /// renderer's to negotiate.
    fn render(&self, accept: Option<&str>) -> Rendered;
}

/// What one client may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections held at once, idle and busy together.
    pub max_connections: usize,
    /// From accept to the first byte of the request.
    pub first_byte: Duration,
    /// From accept to the end of the request head.
    pub read: Duration,
    /// For writing the whole response.
    pub write: Duration,
}

impl Default for Limits {
    /// A scrape's request arrives within milliseconds and its response is
    /// tens of kilobytes; Prometheus itself gives up after 10 s.
    fn default() -> Limits {
        Limits {
            max_connections: 64,
            first_byte: Duration::from_secs(1),
            read: Duration::from_secs(3),
            write: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// The defaults, with at most an eighth of `fd_limit` descriptors for
    /// connections: the rest are the agent's (programs, maps, /proc reads).
    pub fn within(fd_limit: u64) -> Limits {
        let d = Limits::default();
        let share = usize::try_from(fd_limit / 8).unwrap_or(usize::MAX);
        Limits { max_connections: d.max_connections.min(share).max(1), ..d }
    }
}

/// Larger request heads are refused; a scrape's is a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// After the response, what the client still sends is read (so the close
/// does not reset the connection) for at most this long.
const DRAIN: Duration = Duration::from_secs(1);
/// How long the accept loop waits for an evicted connection to let go of
/// its slot before it gives up on the newcomer.
const EVICTION_WAIT: Duration = Duration::from_millis(100);
/// Evictions are logged at most this often, with their count.
const EVICTION_LOG_EVERY: Duration = Duration::from_secs(60);

/// Binds `addr`, then serves `GET /metrics` on it until the task is aborted.
pub async fn serve(addr: SocketAddr, body: Arc<dyn Render>, limits: Limits) -> Result<JoinHandle<()>> {
    Ok(serve_listener(bind(addr)?, body, limits))
}

/// Connections the kernel queues for accept. tokio's own bind queues 128:
/// a burst of connections then fills the queue, and a scraper's SYN is
/// dropped and only retried a second later. The kernel caps it at
/// net.core.somaxconn (4,096 by default).
const LISTEN_BACKLOG: u32 = 1024;

/// A listener on `addr` with a [`LISTEN_BACKLOG`] queue.
pub fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let bound = || {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    bound().with_context(|| format!("cannot listen for metrics on {addr}"))
}

/// The connections held now. Those that have not sent a whole request
/// yet, or have been answered and drain, are idle; the oldest idle one
/// (the lowest id, in accept order) is evicted first.
#[derive(Default)]
struct Registry {
    next_id: u64,
    tasks: HashMap<u64, AbortHandle>,
    idle: BTreeSet<u64>,
}

type Shared = Arc<Mutex<Registry>>;

fn lock(registry: &Shared) -> MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Closes the oldest idle connection; false when every connection is busy.
fn evict_oldest(registry: &Shared) -> bool {
    let mut r = lock(registry);
    let Some(id) = r.idle.pop_first() else { return false };
    if let Some(task) = r.tasks.remove(&id) {
        task.abort();
    }
    true
}

/// Counts evictions for a log line every [`EVICTION_LOG_EVERY`].
struct EvictionLog {
    since: Instant,
    count: u64,
}

impl EvictionLog {
    fn evicted(&mut self) {
        self.count += 1;
        if self.since.elapsed() >= EVICTION_LOG_EVERY {
            log::warn!(
                "metrics endpoint: closed {} idle connections in {:?} to keep room for scrapes",
                self.count,
                self.since.elapsed()
            );
            *self = EvictionLog { since: Instant::now(), count: 0 };
        }
    }
}

/// Serves `GET /metrics` on an already bound listener (tests bind port 0).
pub fn serve_listener(listener: TcpListener, body: Arc<dyn Render>, limits: Limits) -> JoinHandle<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let registry: Shared = Arc::default();
    tokio::spawn(async move {
        let mut evictions = EvictionLog { since: Instant::now(), count: 0 };
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors, typically: wait instead of spinning.
                    log::warn!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let slot = match Arc::clone(&slots).try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) if evict_oldest(&registry) => {
                    evictions.evicted();
                    // The evicted task lets go of its slot when it is dropped, at once.
                    match timeout(EVICTION_WAIT, Arc::clone(&slots).acquire_owned()).await {
                        Ok(Ok(slot)) => slot,
                        _ => continue,
                    }
                }
                Err(_) => {
                    log::debug!("metrics endpoint: {} requests in progress, closing {peer}", limits.max_connections);
                    continue;
                }
            };
            spawn_connection(stream, peer, slot, &registry, Arc::clone(&body), limits);
            // Let the newcomer read its request (a scraper's is already
            // there) before the next accept can evict it.
            tokio::task::yield_now().await;
        }
    })
}

/// Starts serving one connection, registered as idle before it can run.
fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
    registry: &Shared,
    body: Arc<dyn Render>,
    limits: Limits,
) {
    let accepted = tokio::time::Instant::now();
    let shared = Arc::clone(registry);
    let mut registry = lock(registry);
    let id = registry.next_id;
    registry.next_id += 1;
    let mut conn = Connection { id, registry: shared, stream, _slot: slot };
    let task = tokio::spawn(async move {
        if let Err(e) = conn.answer(accepted, &*body, limits).await {
            log::debug!("metrics request from {peer}: {e:#}");
        }
    });
    registry.tasks.insert(id, task.abort_handle());
    registry.idle.insert(id);
}

/// One connection: its socket, its slot and its place in the registry, all
/// let go when its task ends or is aborted. The socket is closed before the
/// slot is freed (fields drop in order), so that the descriptors held never
/// exceed the slots.
struct Connection {
    id: u64,
    registry: Shared,
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut r = lock(&self.registry);
        r.tasks.remove(&self.id);
        r.idle.remove(&self.id);
    }
}

impl Connection {
    /// Reads one request head and writes one response, then closes.
    async fn answer(&mut self, accepted: tokio::time::Instant, body: &dyn Render, limits: Limits) -> Result<()> {
        let stream = &mut self.stream;
        let Some(head) = read_head(stream, accepted, limits).await? else { return Ok(()) };
        // Busy from here, unless it was just evicted.
        if !lock(&self.registry).idle.remove(&self.id) {
            return Ok(());
        }
        let (status, content_type, text) = route(&head, body);
        let written = timeout(limits.write, respond(stream, status, content_type, &text)).await;
        match written {
            Ok(r) => r?,
            Err(_) => anyhow::bail!("the response was not taken within {:?}", limits.write),
        }
        // Answered: evictable again while it drains, in its accept order.
        lock(&self.registry).idle.insert(self.id);
        drain(stream).await;
        Ok(())
    }
}

/// The request head, `Some("")` when it is too large, None when the client
/// closed first. Fails at the first-byte or head deadline.
async fn read_head(stream: &mut TcpStream, accepted: tokio::time::Instant, limits: Limits) -> Result<Option<String>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let (deadline, what) = if head.is_empty() {
            (accepted + limits.first_byte.min(limits.read), "no first byte")
        } else {
            (accepted + limits.read, "no whole request")
        };
        let n = match timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(n) => n.context("reading the request")?,
            Err(_) => anyhow::bail!("{what} within {:?}", deadline - accepted),
        };
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return Ok(Some(String::new()));
        }
    }
    Ok(Some(String::from_utf8_lossy(&head).into_owned()))
}

/// The value of header `name` in a request head (case-insensitive name).
fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn route(head: &str, body: &dyn Render) -> (&'static str, &'static str, String) {
    if head.is_empty() {
        return ("431 Request Header Fields Too Large", "", String::new());
    }
    let mut words = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    if target.split('?').next() != Some("/metrics") {
        return ("404 Not Found", "text/plain", "not found; try /metrics\n".into());
    }
    match method {
        "GET" => {
            let r = body.render(header(head, "accept"));
            ("200 OK", r.content_type, r.body)
        }
        _ => ("405 Method Not Allowed", "text/plain", "use GET\n".into()),
    }
}

async fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) -> Result<()> {
    let mut response = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    if !content_type.is_empty() {
        response.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(body);
    stream.write_all(response.as_bytes()).await.context("writing the response")?;
    stream.shutdown().await.context("closing the connection")
}

/// Closing with unread input (a body, an oversized head) would reset the
/// connection, and a reset can discard the response before the client
/// reads it; so read what the client still sends, for a bounded time.
async fn drain(stream: &mut TcpStream) {
    let mut sink = [0u8; 1024];
    let _ = timeout(DRAIN, async {
        let mut drained = 0;
        while drained < MAX_HEAD * 8 {
            match stream.read(&mut sink).await {
                Ok(n) if n > 0 => drained += n,
                _ => break,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    struct Fixed(String);

    impl Render for Fixed {
        fn render(&self, _accept: Option<&str>) -> Rendered {
            Rendered { content_type: "text/plain", body: self.0.clone() }
        }
    }

    /// Answers with the Accept header it was given.
    struct Echo;

    impl Render for Echo {
        fn render(&self, accept: Option<&str>) -> Rendered {
            Rendered { content_type: "text/plain", body: format!("{accept:?}") }
        }
    }

    async fn start(body: &str, limits: Limits) -> (SocketAddr, JoinHandle<()>) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        (addr, serve_listener(listener, Arc::new(Fixed(body.into())), limits))
    }

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    const SCRAPE: &str = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

    /// Sockets this process holds open, as the kernel lists its descriptors.
    fn sockets() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")))
            .count()
    }

    #[tokio::test]
    async fn routes_and_answers() {
        let (addr, server) = start("hello\n", Limits::default()).await;
        let ok = get(addr, SCRAPE).await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\nhello\n"), "{ok}");
        assert!(ok.contains("Content-Length: 6\r\n") && ok.contains("Content-Type: text/plain\r\n"));
        // A request that arrives in pieces is still answered.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /metrics?x=1 HT").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        stream.write_all(b"TP/1.1\r\n\r\n").await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(get(addr, "GET / HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404 Not Found\r\n"));
        let post = get(addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(get(addr, &huge).await.starts_with("HTTP/1.1 431 "));
        server.abort();
    }

    #[tokio::test]
    async fn serve_reports_a_taken_port() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = serve(addr, Arc::new(Fixed(String::new())), Limits::default()).await.unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(&format!("cannot listen for metrics on {addr}")) && msg.contains("in use"), "{msg}");
    }

    /// A thousand idle connections hold at most `max_connections` of the
    /// server's descriptors, are closed at the first-byte deadline, and a
    /// scrape gets through once they are.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_are_bounded_and_timed_out() {
        let limits = Limits {
            max_connections: 8,
            first_byte: Duration::from_millis(300),
            read: Duration::from_millis(500),
            write: Duration::from_secs(2),
        };
        let (addr, server) = start("hello\n", limits).await;
        let before = sockets();
        let mut idle = Vec::new();
        for _ in 0..1000 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Other tests of this binary open sockets too: allow for a few of theirs.
        let held = sockets().saturating_sub(before + idle.len());
        assert!(held <= limits.max_connections + 24, "the server holds {held} sockets for 1000 idle clients");
        // Every idle client is closed by the server: evicted by newer ones
        // beyond the limit, at the first-byte deadline within it.
        let t = Instant::now();
        for c in &mut idle {
            let mut buf = [0u8; 16];
            let n = timeout(Duration::from_secs(3), c.read(&mut buf)).await;
            assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "an idle connection stayed open: {n:?}");
        }
        assert!(t.elapsed() < limits.read + Duration::from_secs(1), "closed after {:?}", t.elapsed());
        drop(idle);
        assert!(get(addr, SCRAPE).await.starts_with("HTTP/1.1 200 OK\r\n"));
        server.abort();
    }

    /// A client that trickles its request, or never reads the response, is
    /// cut at the deadline and its slot serves the next scrape.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_clients_are_cut_at_the_deadlines() {
        let limits = Limits {
            max_connections: 1,
            first_byte: Duration::from_millis(300),
            read: Duration::from_millis(500),
            write: Duration::from_millis(1500),
        };
        // Far more than the socket buffers hold, so a client that does not read blocks the write.
        let big = "x".repeat(32 << 20);
        let (addr, server) = start(&big, limits).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        let t = Instant::now();
        let mut cut = false;
        for b in SCRAPE.bytes().take(10) {
            if slow.write_all(&[b]).await.is_err() {
                cut = true;
                break;
            }
            let mut buf = [0u8; 1];
            if let Ok(Ok(0)) = timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
                cut = true;
                break;
            }
        }
        assert!(cut && t.elapsed() < Duration::from_secs(2), "a trickling client kept its slot {:?}", t.elapsed());
        // This one sends a whole request and never reads 32 MiB of answer.
        let mut deaf = TcpStream::connect(addr).await.unwrap();
        deaf.write_all(SCRAPE.as_bytes()).await.unwrap();
        tokio::time::sleep(limits.write + Duration::from_millis(700)).await;
        // Its slot is free again: the next scrape is answered (and read).
        let t = Instant::now();
        let response = timeout(Duration::from_secs(20), get(addr, SCRAPE)).await.expect("scrape answered");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "after {:?}", t.elapsed());
        drop(deaf);
        server.abort();
    }

    /// With every slot taken by idle connections, a scrape is answered at
    /// once: the oldest idle connection makes room, the younger ones stay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scrape_evicts_the_oldest_idle_connection() {
        let limits = Limits { max_connections: 4, first_byte: Duration::from_secs(30), ..Limits::default() };
        let (addr, server) = start("hello\n", limits).await;
        let mut idle = Vec::new();
        for _ in 0..limits.max_connections {
            idle.push(TcpStream::connect(addr).await.unwrap());
            // Accepted in this order.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Half a request is still idle.
        idle[1].write_all(b"GET /metr").await.unwrap();
        let t = Instant::now();
        let ok = timeout(Duration::from_secs(2), get(addr, SCRAPE)).await.expect("scrape answered");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("hello\n"), "{ok}");
        assert!(t.elapsed() < Duration::from_millis(500), "answered after {:?}", t.elapsed());
        let mut buf = [0u8; 16];
        let closed = |n: Result<Result<usize, std::io::Error>, _>| matches!(n, Ok(Ok(0)) | Ok(Err(_)));
        assert!(closed(timeout(Duration::from_secs(1), idle[0].read(&mut buf)).await), "the oldest stayed");
        // Once that scrape's connection is gone, a newcomer fills its slot,
        // and the next scrape evicts the next oldest: the half request.
        tokio::time::sleep(Duration::from_millis(100)).await;
        idle.push(TcpStream::connect(addr).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(get(addr, SCRAPE).await.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(closed(timeout(Duration::from_secs(1), idle[1].read(&mut buf)).await), "the next oldest stayed");
        for c in &mut idle[2..] {
            let n = timeout(Duration::from_millis(200), c.read(&mut buf)).await;
            assert!(n.is_err(), "a younger idle connection was closed: {n:?}");
        }
        server.abort();
    }

    #[tokio::test]
    async fn the_renderer_gets_the_accept_header() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = serve_listener(listener, Arc::new(Echo), Limits::default());
        let with = get(addr, "GET /metrics HTTP/1.1\r\naccept:  text/plain;version=0.0.4 \r\n\r\n").await;
        assert!(with.ends_with("\r\n\r\nSome(\"text/plain;version=0.0.4\")"), "{with}");
        assert!(get(addr, SCRAPE).await.ends_with("\r\n\r\nNone"));
        server.abort();
    }

    #[test]
    fn connections_take_a_small_share_of_the_descriptors() {
        assert_eq!(Limits::within(1 << 20).max_connections, Limits::default().max_connections);
        assert_eq!(Limits::within(4096).max_connections, 64);
        assert_eq!(Limits::within(64).max_connections, 8);
        assert_eq!(Limits::within(0).max_connections, 1);
    }
}
