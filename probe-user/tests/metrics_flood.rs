//! /metrics answers every scrape while local users flood it (issue 21,
//! defect 3): a thousand idle connections held open, and a hundred a second
//! more that connect, send nothing or half a request, and hold on. Before,
//! 32 slots and a 5 s read deadline let such a flood reset every scrape.
//! No root needed: the endpoint runs in this process, on 127.0.0.1.

use std::{
    collections::VecDeque,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use reclaimscope::{
    kernel::preflight,
    output::{http, metrics::Metrics},
};

const IDLE: usize = 1000;
/// The churn's pace: one connection every 10 ms.
const CHURN_EVERY: Duration = Duration::from_millis(10);
/// How long each churning connection is held before it is dropped.
const CHURN_HOLD: Duration = Duration::from_secs(2);
const SCRAPES: usize = 20;
const SCRAPE_EVERY: Duration = Duration::from_millis(250);
/// Prometheus's own default scrape timeout.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// No loop here runs longer, whatever happens.
const TEST_BOUND: Duration = Duration::from_secs(90);

const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// The endpoint on its own two-worker runtime, as in the agent.
fn start(limits: http::Limits) -> (SocketAddr, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let metrics = Arc::new(Metrics::new());
    for r in reclaimscope::detect::rules::ALL {
        metrics.declare_finding(r.id, r.severity.name());
    }
    metrics.set_probe("reclaim", "tracepoint", true, true);
    let addr = rt.block_on(async {
        let listener = http::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        drop(http::serve_listener(listener, metrics, limits));
        addr
    });
    (addr, rt)
}

/// One scrape: Ok with its latency when the answer is a 200 with the whole
/// body (as long as Content-Length says, ending as its format ends).
fn scrape(addr: SocketAddr, accept: Option<&str>) -> Result<Duration, String> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(SCRAPE_TIMEOUT)).unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}\r\n").map_err(|e| format!("send: {e}"))?;
    let mut response = Vec::new();
    s.read_to_end(&mut response).map_err(|e| format!("read after {:?}: {e}", t.elapsed()))?;
    let latency = t.elapsed();
    let response = String::from_utf8(response).map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or(format!("no head in {response:?}"))?;
    if !head.starts_with("HTTP/1.1 200 OK\r\n") {
        return Err(format!("answered {head:?}"));
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .ok_or("no Content-Length")?;
    let whole = body.len() == length
        && body.contains("reclaimscope_findings_total{rule=\"RS301\",severity=\"failure\"} 0\n")
        && (accept.is_empty() || body.ends_with("# EOF\n"));
    if !whole {
        return Err(format!("{} of {length} bytes: {:?}", body.len(), body.get(body.len().saturating_sub(80)..)));
    }
    Ok(latency)
}

/// Descriptors this process holds for connections the endpoint accepted:
/// sockets whose local port is `port` and that have a peer (the listener
/// has none).
fn server_sockets(port: u16) -> usize {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.into_iter()
        .filter(|&fd| {
            // SAFETY: plain sockaddr buffers of the length passed; a descriptor
            // closed or reused since the listing fails or answers for the new one.
            unsafe {
                let mut addr: libc::sockaddr_in = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                let local = libc::getsockname(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut len) == 0
                    && addr.sin_family == libc::AF_INET as libc::sa_family_t
                    && u16::from_be(addr.sin_port) == port;
                let mut peer: libc::sockaddr_in = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                local && libc::getpeername(fd, &mut peer as *mut _ as *mut libc::sockaddr, &mut len) == 0
            }
        })
        .count()
}

/// Connects every CHURN_EVERY, sends nothing or half a request, holds each
/// connection CHURN_HOLD, until `stop`.
fn churn(addr: SocketAddr, stop: Arc<AtomicBool>, made: Arc<AtomicU64>) -> thread::JoinHandle<Duration> {
    thread::spawn(move || {
        let t = Instant::now();
        let mut held: VecDeque<(Instant, TcpStream)> = VecDeque::new();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) && t.elapsed() < TEST_BOUND {
            let next = t + CHURN_EVERY * (n as u32 + 1);
            if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                if n % 2 == 1 {
                    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
                }
                held.push_back((Instant::now(), s));
                made.fetch_add(1, Ordering::Relaxed);
            }
            n += 1;
            while held.front().is_some_and(|(at, _)| at.elapsed() > CHURN_HOLD) {
                held.pop_front();
            }
            thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        t.elapsed()
    })
}

#[test]
fn every_scrape_is_answered_under_a_connection_flood() {
    // Both ends live in this process: 1,000 idle, about 200 churning, the server's share.
    preflight::raise_descriptor_limit().unwrap();
    assert!(preflight::descriptor_limit() >= 2048, "RLIMIT_NOFILE's hard limit is below 2048: cannot hold the flood");
    let limits = http::Limits::default();
    let (addr, rt) = start(limits);
    let t = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut idle = Vec::new();
    while idle.len() < IDLE && t.elapsed() < TEST_BOUND {
        let c = Instant::now();
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            idle.push(s);
        }
        slowest = slowest.max(c.elapsed());
    }
    assert_eq!(idle.len(), IDLE, "the flood could not even connect");
    eprintln!("{IDLE} idle connections open in {:?} (slowest connect {slowest:?})", t.elapsed());
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let churner = churn(addr, Arc::clone(&stop), Arc::clone(&made));
    thread::sleep(Duration::from_millis(500));

    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    let mut most_held = 0;
    let start = Instant::now();
    for i in 0..SCRAPES {
        let due = start + SCRAPE_EVERY * i as u32;
        thread::sleep(due.saturating_duration_since(Instant::now()));
        // Prometheus's header and none at all (curl, older scrapers) in turn.
        let accept = (i % 2 == 0).then_some(OPENMETRICS);
        match scrape(addr, accept) {
            Ok(l) => latencies.push(l),
            Err(e) => failures.push(format!("scrape {i}: {e}")),
        }
        most_held = most_held.max(server_sockets(addr.port()));
        assert!(t.elapsed() < TEST_BOUND, "the test ran past its bound");
    }
    stop.store(true, Ordering::Relaxed);
    let churned_for = churner.join().unwrap();
    let churned = made.load(Ordering::Relaxed);
    let churn_rate = churned as f64 / churned_for.as_secs_f64();
    drop(idle);
    rt.shutdown_timeout(Duration::from_secs(1));

    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    eprintln!(
        "{} of {SCRAPES} scrapes answered under {IDLE} idle + {churned} churning connections ({churn_rate:.0}/s); \
         latency median {:.1} ms, max {:.1} ms; at most {most_held} server sockets held",
        latencies.len(),
        latencies.get(latencies.len() / 2).map_or(f64::NAN, |d| ms(*d)),
        latencies.last().map_or(f64::NAN, |d| ms(*d)),
    );
    assert!(failures.is_empty(), "{} scrapes failed:\n{}", failures.len(), failures.join("\n"));
    // A second or more is a SYN dropped from a full listen queue and sent again.
    let slowest = latencies.last().copied().unwrap_or_default();
    assert!(slowest < Duration::from_secs(1), "a scrape took {slowest:?}");
    assert!(churn_rate >= 50.0, "the churn ran at only {churn_rate:.0} connections/s");
    // A newcomer is accepted before the idle connection it evicts is
    // closed, and the kernel's table is not read at one instant.
    assert!(most_held <= limits.max_connections + 1, "the endpoint held {most_held} connections");
}
