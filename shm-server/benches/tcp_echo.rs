//! The echo round trip of a TCP client through the server (a `shm_tcp::Connection` logged in
//! to a [`Server`] with [`ServerConfig::tcp`], echoed by the group's handler) ÷ raw TCP (two
//! non-blocking, `TCP_NODELAY` loopback sockets echoing the same bytes), 64 bytes.
//!
//! Two threads, each busy-polling its side: the client thread measures, the server thread
//! serves. Every round alternates blocks of round trips on the two links (the server thread
//! serves only the link of the current block), so the machine's drifts hit both alike; the
//! ratio is taken within each round (p50 ÷ p50) and reported as the median over the rounds with
//! its range, next to both links' percentiles over the whole run. Nothing is asserted.
//!
//! `cargo bench -p shm-server --bench tcp_echo`; `SHM_BENCH_ROUNDS=N` (default 7).

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use shm_channel::monotonic_nanos;
use shm_server::{Decision, Server, ServerConfig};
use shm_tcp::{AcceptorOptions, Connection, ConnectionOptions};
use spsc_core::{MessageReceiver, MessageSender, RecvError};

const C: usize = 1 << 16;
const SIZE: usize = 64;
const BLOCK: usize = 2_000;
const BLOCKS_PER_ROUND: usize = 10;
const WARMUP: usize = 5_000;

const RAW: u8 = 0;
const OURS: u8 = 1;
const STOP: u8 = 2;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("bounds are valid")
}

/// The server side: serves whichever link `phase` names until it says stop.
fn serve(phase: &AtomicU8, mut server: Server<C>, mut raw: TcpStream) {
    let mut buf = [0u8; 4096];
    let mut polls = 0u32;
    loop {
        match phase.load(Ordering::Acquire) {
            RAW => match raw.read(&mut buf) {
                Ok(0) => return,
                Ok(read) => raw.write_all(&buf[..read]).expect("raw echo"),
                Err(error) if error.kind() == ErrorKind::WouldBlock => {}
                Err(error) => panic!("raw echo: {error}"),
            },
            OURS => {
                let now = monotonic_nanos();
                polls = polls.wrapping_add(1);
                if polls.is_multiple_of(1024) {
                    server.poll_control(now);
                }
                server.poll_group(0, now, |request, reply| {
                    let _ = reply.send(request.tag(), request.payload());
                });
            }
            _ => return,
        }
    }
}

/// One raw round trip.
fn raw_round_trip(stream: &mut TcpStream, message: &[u8; SIZE]) {
    stream.write_all(message).expect("raw write");
    let mut got = 0;
    let mut buf = [0u8; SIZE];
    while got < SIZE {
        match stream.read(&mut buf[got..]) {
            Ok(0) => panic!("raw echo closed"),
            Ok(read) => got += read,
            Err(error) if error.kind() == ErrorKind::WouldBlock => {}
            Err(error) => panic!("raw read: {error}"),
        }
    }
}

/// One round trip through the server.
fn our_round_trip(conn: &mut Connection<C>, message: &[u8; SIZE], count: u64) {
    conn.send(1, message).expect("send through the server");
    loop {
        match conn.front() {
            Ok(_) => break,
            Err(RecvError::Empty) => {}
            Err(error) => panic!("receive through the server: {error}"),
        }
    }
    conn.pop().expect("pop");
    if count.is_multiple_of(256) {
        let _ = conn.poll(monotonic_nanos());
    }
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return; // `cargo test --benches` lists benches; there are none to list here
    }
    let rounds: usize = std::env::var("SHM_BENCH_ROUNDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(7);
    let dir = tempfile::tempdir().expect("a temporary folder");
    let state = dir.path().join("server-tcp");
    let client_state = dir.path().join("client-tcp");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::create_dir_all(&client_state).unwrap();
    let config = ServerConfig::new("bench", dir.path().join("srv"))
        .unwrap()
        .groups(1, 4)
        .tcp(AcceptorOptions::new(ConnectionOptions::new().dir(&state)));
    let mut server = Server::<C>::new(config, |_| Decision::Accept { group: 0 }).unwrap();
    let addr = server.control().tcp_addr().unwrap();

    // Log the TCP client in, polling the server meanwhile.
    let mut conn = Connection::<C>::client(
        addr,
        "echo",
        "bench",
        &ConnectionOptions::new().dir(&client_state),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !conn.is_connected() {
        assert!(Instant::now() < deadline, "the TCP client never logged in");
        let now = monotonic_nanos();
        let _ = conn.poll(now);
        server.poll_control(now);
        server.poll_group(0, now, |_, _| {});
    }

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut raw_client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (raw_server, _) = listener.accept().unwrap();
    for stream in [&raw_client, &raw_server] {
        stream.set_nodelay(true).unwrap();
        stream.set_nonblocking(true).unwrap();
    }
    raw_client.set_nonblocking(true).unwrap();

    let phase = Arc::new(AtomicU8::new(OURS));
    let server_phase = Arc::clone(&phase);
    let server_thread = std::thread::spawn(move || serve(&server_phase, server, raw_server));

    let message = [7u8; SIZE];
    let mut count = 0u64;
    for _ in 0..WARMUP {
        our_round_trip(&mut conn, &message, count);
        count += 1;
    }
    phase.store(RAW, Ordering::Release);
    for _ in 0..WARMUP {
        raw_round_trip(&mut raw_client, &message);
    }

    let (mut all_raw, mut all_ours) = (histogram(), histogram());
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let (mut raw, mut ours) = (histogram(), histogram());
        for block in 0..BLOCKS_PER_ROUND * 2 {
            // Alternate, starting with the other link each round.
            let use_ours = (block + round) % 2 == 0;
            phase.store(if use_ours { OURS } else { RAW }, Ordering::Release);
            for _ in 0..BLOCK {
                let start = Instant::now();
                if use_ours {
                    our_round_trip(&mut conn, &message, count);
                    count += 1;
                } else {
                    raw_round_trip(&mut raw_client, &message);
                }
                let took = start.elapsed().as_nanos() as u64;
                let histogram = if use_ours { &mut ours } else { &mut raw };
                histogram.record(took.max(1)).unwrap();
            }
        }
        let ratio = ours.value_at_quantile(0.5) as f64 / raw.value_at_quantile(0.5) as f64;
        println!(
            "round {round}: raw TCP p50 {} ns, through the server p50 {} ns, ratio {ratio:.3}",
            raw.value_at_quantile(0.5),
            ours.value_at_quantile(0.5)
        );
        ratios.push(ratio);
        all_raw.add(&raw).unwrap();
        all_ours.add(&ours).unwrap();
    }
    phase.store(STOP, Ordering::Release);
    server_thread.join().unwrap();

    ratios.sort_by(f64::total_cmp);
    println!();
    println!("| 64 B echo round trip | p50 | p90 | p99 | p99.9 |");
    println!("|---|---:|---:|---:|---:|");
    for (name, histogram) in [
        ("raw TCP (two sockets)", &all_raw),
        ("TCP client through the server", &all_ours),
    ] {
        println!(
            "| {name} | {} ns | {} ns | {} ns | {} ns |",
            histogram.value_at_quantile(0.5),
            histogram.value_at_quantile(0.9),
            histogram.value_at_quantile(0.99),
            histogram.value_at_quantile(0.999)
        );
    }
    println!(
        "\nthrough the server ÷ raw TCP, p50, median over {rounds} rounds: {:.3} (range {:.3}–{:.3})",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
}
