//! The HTTP endpoint `monitor --metrics-addr` serves: one GET per
//! connection, answered with whatever the caller renders.
//!
//! A scrape is a single small GET, so a hand-written HTTP/1.1 responder on
//! tokio is enough and keeps hyper and its stack out of a tool that runs with
//! BPF privileges. The agent must outlive whatever connects to it: a
//! thousand idle connections once took every file descriptor, discovery
//! then read an empty /proc and detection went blind. So connections are
//! bounded ([`Limits::max_connections`]; beyond it a connection is closed as
//! soon as it is accepted), and each one has deadlines for reading the
//! request and for writing the response.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinHandle,
    time::timeout,
};

/// Renders the body of a `GET /metrics`, and names its content type.
pub trait Render: Send + Sync + 'static {
    fn content_type(&self) -> &'static str;
    fn render(&self) -> String;
}

/// What one client may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are closed when accepted.
    pub max_connections: usize,
    /// From accept to the end of the request head.
    pub read: Duration,
    /// For writing the whole response.
    pub write: Duration,
}

impl Default for Limits {
    /// A scrape's request arrives within milliseconds and its response is
    /// tens of kilobytes; Prometheus itself gives up after 10 s.
    fn default() -> Limits {
        Limits { max_connections: 32, read: Duration::from_secs(5), write: Duration::from_secs(10) }
    }
}

/// Larger request heads are refused; a scrape's is a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// After the response, what the client still sends is read (so the close
/// does not reset the connection) for at most this long.
const DRAIN: Duration = Duration::from_secs(1);

/// Binds `addr`, then serves `GET /metrics` on it until the task is aborted.
pub async fn serve(addr: SocketAddr, body: Arc<dyn Render>, limits: Limits) -> Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen for metrics on {addr}"))?;
    Ok(serve_listener(listener, body, limits))
}

/// Serves `GET /metrics` on an already bound listener (tests bind port 0).
pub fn serve_listener(listener: TcpListener, body: Arc<dyn Render>, limits: Limits) -> JoinHandle<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
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
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                log::debug!(
                    "metrics endpoint: {} connections open, closing the one from {peer}",
                    limits.max_connections
                );
                drop(stream);
                continue;
            };
            let body = Arc::clone(&body);
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &*body, limits).await {
                    log::debug!("metrics request from {peer}: {e:#}");
                }
                drop(slot);
            });
        }
    })
}

/// Reads one request head and writes one response, then closes.
async fn answer(mut stream: TcpStream, body: &dyn Render, limits: Limits) -> Result<()> {
    let head = match timeout(limits.read, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => anyhow::bail!("no whole request within {:?}", limits.read),
    };
    let Some(head) = head else { return Ok(()) }; // closed before a full request
    let (status, content_type, text) = route(&head, body);
    let written = timeout(limits.write, respond(&mut stream, status, content_type, &text)).await;
    match written {
        Ok(r) => r?,
        Err(_) => anyhow::bail!("the response was not taken within {:?}", limits.write),
    }
    drain(&mut stream).await;
    Ok(())
}

/// The request head, `Some("")` when it is too large, None when the client
/// closed first.
async fn read_head(stream: &mut TcpStream) -> Result<Option<String>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.context("reading the request")?;
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
        "GET" => ("200 OK", body.content_type(), body.render()),
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
        fn content_type(&self) -> &'static str {
            "text/plain"
        }
        fn render(&self) -> String {
            self.0.clone()
        }
    }

    async fn start(body: &str, limits: Limits) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
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
    /// server's descriptors, are closed at the read deadline, and a scrape
    /// gets through once they are.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_are_bounded_and_timed_out() {
        let limits = Limits { max_connections: 8, read: Duration::from_millis(500), write: Duration::from_secs(2) };
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
        // Every idle client is closed by the server: at once beyond the
        // limit, at the read deadline within it.
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
        let limits =
            Limits { max_connections: 1, read: Duration::from_millis(500), write: Duration::from_millis(1500) };
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
}
