//! Self-test of the fault-injecting proxy in `tests/common/proxy.rs`, against small std
//! servers (echo, source, sink) on threads: faithful forwarding, one-byte writes, delays, cuts
//! after an exact prefix in either direction or in total, `cut_all_now`, refusal, a target that
//! is down, determinism of the seed, and a clean drop. Independent of the shm-tcp library.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

// Works with or without a `tests/common/mod.rs`: a crate root's inline module looks for
// `common/proxy.rs` next to this file.
mod common;
use common::proxy::{CutBudget, CutScope, FaultPlan, Proxy, SplitMix64};

/// Upper bound on any single blocking read in these tests (a hang fails instead of stalling).
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `handler` on its own thread for every connection accepted on a fresh listener.
fn spawn_server<F>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) + Send + Sync + 'static,
{
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let handler = Arc::clone(&handler);
            thread::spawn(move || handler(stream));
        }
    });
    addr
}

/// Echoes until end of file, then half-closes.
fn echo(mut s: TcpStream) {
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

fn payload(seed: u64, len: usize) -> Vec<u8> {
    SplitMix64::new(seed).bytes(len)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s
}

/// Reads until end of file or a reset; returns the bytes. Panics on a read timeout.
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("read timed out after {} bytes", got.len())
            }
            Err(_) => return got,
        }
    }
}

/// Sends `data` from a writer thread (then half-closes; write errors just stop it) while
/// reading everything back until the connection ends.
fn send_and_collect(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = connect(addr);
    let mut w = s.try_clone().unwrap();
    let data = data.to_vec();
    let writer = thread::spawn(move || {
        for chunk in data.chunks(64 * 1024) {
            if w.write_all(chunk).is_err() {
                return;
            }
        }
        let _ = w.shutdown(Shutdown::Write);
    });
    let got = read_until_closed(&mut s);
    writer.join().unwrap();
    got
}

fn assert_same(got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("first difference at byte {i}");
    }
}

fn assert_prefix(got: &[u8], sent: &[u8]) {
    assert!(got.len() <= sent.len(), "got more than was sent");
    assert_same(got, &sent[..got.len()]);
}

#[test]
fn forwards_a_megabyte_both_ways() {
    let proxy = Proxy::start(spawn_server(echo), FaultPlan::default(), 1);
    let data = payload(11, 1 << 20);
    let got = send_and_collect(proxy.addr(), &data);
    assert_same(&got, &data);
    assert!(proxy.wait_until(Duration::from_secs(2), |s| s.active == 0));
    let s = proxy.stats();
    assert_eq!(s.accepted, 1);
    assert_eq!(s.cuts, 0);
    assert_eq!(s.bytes_client_to_target, 1 << 20);
    assert_eq!(s.bytes_target_to_client, 1 << 20);
    let c = proxy.connection(0).unwrap();
    assert_eq!(c.budget, CutBudget::Never);
    assert!(c.closed && !c.cut);
}

#[test]
fn one_byte_writes_stay_exact() {
    // The sink records the size of each read: one-byte writes with TCP_NODELAY arrive
    // fragmented.
    let (tx, rx) = mpsc::channel();
    let sink = spawn_server(move |mut s: TcpStream| {
        let mut got = Vec::new();
        let mut reads = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
            reads += 1;
        }
        let _ = tx.send((got, reads));
    });
    let plan = FaultPlan {
        one_byte_writes: true,
        ..FaultPlan::default()
    };
    let proxy = Proxy::start(sink, plan.clone(), 2);
    let data = payload(22, 64 * 1024);
    let mut c = connect(proxy.addr());
    c.write_all(&data).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (got, reads) = rx.recv_timeout(READ_TIMEOUT).unwrap();
    assert_same(&got, &data);
    assert!(reads > 1, "one-byte writes arrived in {reads} read(s)");

    // Both directions, through the echo server.
    let proxy = Proxy::start(spawn_server(echo), plan, 3);
    let data = payload(33, 64 * 1024);
    assert_same(&send_and_collect(proxy.addr(), &data), &data);
}

#[test]
fn delays_stay_exact() {
    let plan = FaultPlan {
        delay: Some(Duration::from_millis(2)),
        ..FaultPlan::default()
    };
    let proxy = Proxy::start(spawn_server(echo), plan, 4);
    let data = payload(44, 64 * 1024);
    let mut c = connect(proxy.addr());
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut sent = 0;
    for chunk in data.chunks(4096) {
        c.write_all(chunk).unwrap();
        sent += chunk.len();
        while got.len() < sent {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "early end of file");
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert_same(&got, &data);
}

#[test]
fn cut_echo_returns_a_prefix() {
    let proxy = Proxy::start(spawn_server(echo), FaultPlan::cut_after(1, 100_000), 5);
    let data = payload(55, 128 * 1024);
    for i in 0..6 {
        let got = send_and_collect(proxy.addr(), &data);
        assert_prefix(&got, &data);
        assert!(proxy.wait_until(Duration::from_secs(3), |s| s.cuts == i + 1));
        let c = proxy.connection(i).unwrap();
        let CutBudget::PerDirection {
            client_to_target,
            target_to_client,
        } = c.budget
        else {
            panic!("budget {:?}", c.budget)
        };
        assert!(c.cut);
        assert!(got.len() as u64 <= client_to_target.min(target_to_client));
    }
}

/// A server that sends `data` and then closes.
fn source(data: Arc<Vec<u8>>) -> SocketAddr {
    spawn_server(move |mut s: TcpStream| {
        let _ = s.write_all(&data);
        let _ = s.shutdown(Shutdown::Write);
        // Wait for the other end to close before closing (no reset over unread data).
        let _ = s.set_read_timeout(Some(READ_TIMEOUT));
        let _ = read_until_closed(&mut s);
    })
}

#[test]
fn cut_lands_exactly_after_the_prefix_to_the_client() {
    let data = Arc::new(payload(66, 300_000));
    let proxy = Proxy::start(
        source(Arc::clone(&data)),
        FaultPlan::cut_after(1, 250_000),
        6,
    );
    let mut budgets = Vec::new();
    for i in 0..6 {
        // Alternate one-byte writes on the fly; the budget stays exact either way.
        proxy.update_plan(|p| p.one_byte_writes = i % 3 == 2);
        if i % 3 == 2 {
            proxy.update_plan(|p| p.cut_after = Some((1, 20_000)));
        } else {
            proxy.update_plan(|p| p.cut_after = Some((1, 250_000)));
        }
        let mut c = connect(proxy.addr());
        let got = read_until_closed(&mut c);
        let conn = proxy.connection(i).unwrap();
        let CutBudget::PerDirection {
            target_to_client, ..
        } = conn.budget
        else {
            panic!("budget {:?}", conn.budget)
        };
        assert_same(&got, &data[..target_to_client as usize]);
        assert!(conn.cut);
        budgets.push(target_to_client);
    }
    budgets.dedup();
    assert!(budgets.len() > 1, "budgets never varied: {budgets:?}");
    assert_eq!(proxy.stats().cuts, 6);
}

#[test]
fn cut_lands_exactly_after_the_prefix_to_the_target() {
    let (tx, rx) = mpsc::channel();
    let sink = spawn_server(move |mut s: TcpStream| {
        let _ = s.set_read_timeout(Some(READ_TIMEOUT));
        let _ = tx.send(read_until_closed(&mut s));
    });
    let proxy = Proxy::start(sink, FaultPlan::cut_after(1, 200_000), 7);
    let data = payload(77, 256 * 1024);
    for i in 0..5 {
        let mut c = connect(proxy.addr());
        // After the cut the proxy swallows the rest; the writes may also fail: either is fine.
        for chunk in data.chunks(32 * 1024) {
            if c.write_all(chunk).is_err() {
                break;
            }
        }
        let got = rx.recv_timeout(READ_TIMEOUT).unwrap();
        let conn = proxy.connection(i).unwrap();
        let CutBudget::PerDirection {
            client_to_target, ..
        } = conn.budget
        else {
            panic!("budget {:?}", conn.budget)
        };
        assert_same(&got, &data[..client_to_target as usize]);
        // The client reads end of file (or a reset) once the proxy cut.
        assert!(read_until_closed(&mut c).is_empty());
    }
}

#[test]
fn total_scope_counts_both_directions() {
    let data = Arc::new(payload(88, 100_000));
    let plan = FaultPlan {
        cut_after: Some((1, 90_000)),
        cut_scope: CutScope::Total,
        ..FaultPlan::default()
    };
    let proxy = Proxy::start(source(Arc::clone(&data)), plan, 8);
    for i in 0..3 {
        let mut c = connect(proxy.addr());
        let got = read_until_closed(&mut c);
        let CutBudget::Total(n) = proxy.connection(i).unwrap().budget else {
            panic!("not a total budget")
        };
        assert_same(&got, &data[..n as usize]);
    }
    // A zero budget cuts on setup.
    proxy.update_plan(|p| p.cut_after = Some((0, 0)));
    let mut c = connect(proxy.addr());
    assert!(read_until_closed(&mut c).is_empty());
    assert!(proxy.wait_until(Duration::from_secs(2), |s| s.cuts == 4));
}

#[test]
fn cut_all_now_cuts_live_connections() {
    let proxy = Proxy::start(spawn_server(echo), FaultPlan::default(), 9);
    let mut a = connect(proxy.addr());
    let mut b = connect(proxy.addr());
    for c in [&mut a, &mut b] {
        c.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
    }
    assert!(proxy.wait_until(Duration::from_secs(2), |s| s.active == 2));
    let t = Instant::now();
    assert_eq!(proxy.cut_all_now(), 2);
    assert!(read_until_closed(&mut a).is_empty());
    assert!(read_until_closed(&mut b).is_empty());
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(proxy.stats().cuts, 2);
    // Cutting again cuts nothing more; new connections still work.
    assert_eq!(proxy.cut_all_now(), 0);
    let data = payload(99, 10_000);
    assert_same(&send_and_collect(proxy.addr(), &data), &data);
    assert_eq!(proxy.stats().cuts, 2);
}

#[test]
fn cut_with_zero_linger_closes_at_once() {
    let proxy = Proxy::start(spawn_server(echo), FaultPlan::default(), 10);
    proxy.update_plan(|p| p.cut_linger = Duration::ZERO);
    let mut a = connect(proxy.addr());
    a.write_all(b"x").unwrap();
    let mut buf = [0u8; 1];
    a.read_exact(&mut buf).unwrap();
    assert_eq!(proxy.cut_all_now(), 1);
    assert!(read_until_closed(&mut a).is_empty());
    assert!(proxy.wait_until(Duration::from_secs(1), |s| s.active == 0));
}

#[test]
fn refuse_refuses_and_can_be_lifted() {
    let plan = FaultPlan {
        refuse: true,
        ..FaultPlan::default()
    };
    let proxy = Proxy::start(spawn_server(echo), plan, 11);
    let mut c = connect(proxy.addr());
    let _ = c.write_all(b"anyone?");
    assert!(read_until_closed(&mut c).is_empty());
    assert!(proxy.wait_until(Duration::from_secs(2), |s| s.refused == 1));
    proxy.set_plan(FaultPlan::default());
    let data = payload(111, 5000);
    assert_same(&send_and_collect(proxy.addr(), &data), &data);
    let s = proxy.stats();
    assert_eq!((s.accepted, s.refused), (2, 1));
}

#[test]
fn target_down_closes_the_client() {
    let dead = {
        let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        l.local_addr().unwrap()
    };
    let proxy = Proxy::start(dead, FaultPlan::default(), 12);
    let mut c = connect(proxy.addr());
    assert!(read_until_closed(&mut c).is_empty());
    assert!(proxy.wait_until(Duration::from_secs(3), |s| s.connect_failed == 1));
}

#[test]
fn same_seed_same_budgets() {
    let budgets = |seed| {
        let proxy = Proxy::start(
            spawn_server(echo),
            FaultPlan::cut_after(10, 1_000_000),
            seed,
        );
        let _c = connect(proxy.addr());
        assert!(proxy.wait_until(Duration::from_secs(2), |s| s.active == 1));
        proxy.connection(0).unwrap().budget
    };
    assert_eq!(budgets(42), budgets(42));
    assert_ne!(budgets(42), budgets(43));
}

#[test]
fn drop_stops_everything_promptly() {
    let proxy = Proxy::start(spawn_server(echo), FaultPlan::default(), 13);
    let mut c = connect(proxy.addr());
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).unwrap();
    let t = Instant::now();
    drop(proxy);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "drop took {:?}",
        t.elapsed()
    );
    assert!(read_until_closed(&mut c).is_empty());
}
