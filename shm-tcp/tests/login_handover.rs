//! The acceptor's two halves apart, as a server uses them: a [`LoginListener`] on one thread
//! reads the hellos and sends each [`PendingLogin`] through a channel to the thread that owns
//! the pair's [`Connection`] ([`Connection::from_login`] for the first login,
//! [`Connection::take_login`] for the next). Refusals reach the client with their reason, a
//! re-login loses and duplicates nothing in either direction, a hello never finished is dropped,
//! and a listener's poll does bounded work.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::now;
use shm_channel::SegmentName;
use shm_tcp::frame::{self, Kind, PROTOCOL_VERSION};
use shm_tcp::hello::{Hello, MAX_HELLO_PAYLOAD};
use shm_tcp::login::ACCEPTS_PER_POLL;
use shm_tcp::{
    AcceptorOptions, Connection, ConnectionError, ConnectionOptions, LinkState, ListenerEvent,
    LoginListener, PendingLogin,
};
use spsc_core::{MessageReceiver, MessageSender, SendSlot};

const C: usize = 1 << 16;
const MS: u64 = 1_000_000;
/// Everything here finishes far sooner; the bound only keeps a broken test from hanging.
const LIMIT: u64 = 20_000 * MS;

fn options(dir: &Path) -> ConnectionOptions {
    ConnectionOptions::new()
        .dir(dir)
        .reconnect_backoff_ns(MS, 20 * MS)
}

fn listener(options: &ConnectionOptions) -> LoginListener {
    LoginListener::bind("server", "day1", &AcceptorOptions::new(options.clone())).unwrap()
}

/// Runs `step` until it returns `Some`, for at most [`LIMIT`].
fn until<T>(what: &str, mut step: impl FnMut() -> Option<T>) -> T {
    let start = now();
    loop {
        if let Some(value) = step() {
            return value;
        }
        assert!(now() - start < LIMIT, "gave up waiting for {what}");
        thread::sleep(Duration::from_micros(100));
    }
}

/// Polls `listener` until it reports a login, polling `client` meanwhile (so it connects).
fn next_login(listener: &mut LoginListener, client: &mut Connection<C>) -> PendingLogin {
    until("a login", || {
        let _ = client.poll(now());
        match listener.poll(now()) {
            Some(ListenerEvent::Login(login)) => Some(login),
            Some(other) => panic!("{other:?}"),
            None => None,
        }
    })
}

/// Polls `client` until it reports an error.
fn client_error(client: &mut Connection<C>) -> ConnectionError {
    until("the client's error", || client.poll(now()).err())
}

#[test]
fn the_halves_are_send_and_a_login_is_one_pointer() {
    fn send<T: Send>() {}
    send::<LoginListener>();
    send::<PendingLogin>();
    send::<ListenerEvent>();
    send::<Connection<C>>();
    assert_eq!(
        std::mem::size_of::<PendingLogin>(),
        std::mem::size_of::<usize>()
    );
}

// ---------------------------------------------------------------------------------------------
// A listener thread and a group thread, as a server has them.

/// What the group thread saw.
struct GroupReport {
    /// The payloads it popped (each the sender's sequence number), in order.
    received: Vec<u64>,
    /// Logins applied.
    logins: usize,
    /// The errors its connection's `poll` reported.
    errors: Vec<String>,
    /// The state file moved aside for the first login (none: the pair is new).
    moved_aside: Option<std::path::PathBuf>,
}

/// The listener's thread: polls until `stop`, sending every login to the group; returns the
/// failures it saw.
fn run_listener(
    mut listener: LoginListener,
    to_group: mpsc::Sender<PendingLogin>,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let mut failures = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        while let Some(event) = listener.poll(now()) {
            match event {
                ListenerEvent::Login(login) => to_group.send(login).unwrap(),
                ListenerEvent::Failed { error, .. } => failures.push(error.to_string()),
                other => panic!("{other:?}"),
            }
        }
        thread::sleep(Duration::from_micros(50));
    }
    failures
}

/// The group's thread: owns the pair's connection, made from the first login and given every
/// later one; pushes `to_send` messages (payload: the message's sequence number) as room
/// allows, pops everything; runs until `stop`.
fn run_group(
    logins: mpsc::Receiver<PendingLogin>,
    options: ConnectionOptions,
    to_send: u64,
    stop: Arc<AtomicBool>,
) -> GroupReport {
    let mut conn: Option<Connection<C>> = None;
    let mut report = GroupReport {
        received: Vec::new(),
        logins: 0,
        errors: Vec::new(),
        moved_aside: None,
    };
    while !stop.load(Ordering::Relaxed) {
        while let Ok(login) = logins.try_recv() {
            assert_eq!(login.client_name().as_str(), "client");
            assert_eq!(login.acceptor_name().as_str(), "server");
            match conn.as_mut() {
                None => {
                    let (made, moved) = Connection::from_login(login, &options, now()).unwrap();
                    report.moved_aside = moved;
                    conn = Some(made);
                }
                Some(conn) => conn.take_login(login, now()).unwrap(),
            }
            report.logins += 1;
        }
        let Some(conn) = conn.as_mut() else {
            thread::sleep(Duration::from_micros(50));
            continue;
        };
        if let Err(error) = conn.poll(now()) {
            report.errors.push(error.to_string());
        }
        while conn.next_seq() < to_send {
            let seq = conn.next_seq();
            let Ok(mut slot) = conn.alloc(8, 1) else {
                break;
            };
            slot.payload_mut().copy_from_slice(&seq.to_le_bytes());
            slot.push();
        }
        while let Ok(value) =
            conn.recv_with(|m| u64::from_le_bytes(m.payload().try_into().unwrap()))
        {
            report.received.push(value);
        }
        thread::sleep(Duration::from_micros(20));
    }
    report
}

/// A server as two threads (listener, group) on the state folder `dir`.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    listener: thread::JoinHandle<Vec<String>>,
    group: thread::JoinHandle<GroupReport>,
}

impl Server {
    fn start(dir: &Path, to_send: u64) -> Self {
        let options = options(dir);
        let listener = listener(&options);
        let addr = listener.local_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let listener = {
            let stop = stop.clone();
            thread::spawn(move || run_listener(listener, tx, stop))
        };
        let group = {
            let stop = stop.clone();
            thread::spawn(move || run_group(rx, options, to_send, stop))
        };
        Self {
            addr,
            stop,
            listener,
            group,
        }
    }

    fn stop(self) -> (Vec<String>, GroupReport) {
        self.stop.store(true, Ordering::Relaxed);
        (self.listener.join().unwrap(), self.group.join().unwrap())
    }
}

/// One step of the client: polls, pushes what room allows of `to_send` (payload: sequence
/// number), pops everything into `received`.
fn client_step(client: &mut Connection<C>, to_send: u64, received: &mut Vec<u64>) {
    let _ = client.poll(now());
    while client.next_seq() < to_send {
        let seq = client.next_seq();
        let Ok(mut slot) = client.alloc(8, 2) else {
            break;
        };
        slot.payload_mut().copy_from_slice(&seq.to_le_bytes());
        slot.push();
    }
    while let Ok(value) = client.recv_with(|m| u64::from_le_bytes(m.payload().try_into().unwrap()))
    {
        received.push(value);
    }
}

fn in_order(count: u64) -> Vec<u64> {
    (0..count).collect()
}

#[test]
fn a_listener_thread_hands_logins_to_a_connection_owned_by_another() {
    let dir = tempfile::tempdir().unwrap();
    let (up, down) = (500, 700);
    let server = Server::start(dir.path(), down);
    let mut client =
        Connection::<C>::client(server.addr, "client", "server", &options(dir.path())).unwrap();
    let mut received = Vec::new();
    until("both streams through", || {
        client_step(&mut client, up, &mut received);
        (received.len() as u64 == down && client.unacknowledged() == 0).then_some(())
    });
    assert!(client.is_connected());
    let (failures, report) = server.stop();
    assert_eq!(received, in_order(down));
    assert_eq!(report.received, in_order(up));
    assert_eq!(report.logins, 1);
    assert!(report.moved_aside.is_none());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn a_relogin_after_the_client_dropped_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (up, down) = (3000, 3000);
    let server = Server::start(dir.path(), down);
    let options = options(dir.path());
    let mut received = Vec::new();
    let mut client = Connection::<C>::client(server.addr, "client", "server", &options).unwrap();
    // Stop the first client mid-stream in both directions: part of each stream popped, part
    // unacknowledged or in flight.
    until("both streams a third through", || {
        client_step(&mut client, up / 2, &mut received);
        (received.len() >= 1000 && client.next_seq() >= 1000).then_some(())
    });
    // A few more sent right before the end: surely not acknowledged yet (acknowledgements are
    // read only by `poll`, `front`, or an `alloc` that finds the queue full).
    for _ in 0..10 {
        let seq = client.next_seq();
        client.send(2, &seq.to_le_bytes()).unwrap();
    }
    assert!(client.unacknowledged() >= 10);
    let popped_before = client.popped();
    assert_eq!(popped_before, received.len() as u64);
    drop(client); // the process would be gone: its socket closes, its state file stays

    // The same client again: reopens its state file and logs in once more.
    let mut client = Connection::<C>::client(server.addr, "client", "server", &options).unwrap();
    assert_eq!(client.popped(), popped_before);
    until("both streams through", || {
        client_step(&mut client, up, &mut received);
        (received.len() as u64 == down && client.next_seq() == up && client.unacknowledged() == 0)
            .then_some(())
    });
    assert_eq!(client.stats().handshakes, 1);
    let (failures, report) = server.stop();
    assert_eq!(
        received,
        in_order(down),
        "client side: a gap or a duplicate"
    );
    assert_eq!(
        report.received,
        in_order(up),
        "server side: a gap or a duplicate"
    );
    assert_eq!(report.logins, 2);
    // The first socket's end is the only thing the group's connection may report.
    assert!(report.errors.len() <= 1, "{:?}", report.errors);
    assert!(
        report
            .errors
            .iter()
            .all(|e| e.contains("closed") || e.contains("failed")),
        "{:?}",
        report.errors
    );
    assert!(failures.is_empty(), "{failures:?}");
}

// ---------------------------------------------------------------------------------------------
// Refusals.

#[test]
fn a_login_rejected_on_another_thread_reaches_the_client_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(dir.path()).reconnect_backoff_ns(10_000 * MS, 10_000 * MS);
    let mut listener = listener(&options);
    let mut client =
        Connection::<C>::client(listener.local_addr(), "client", "server", &options).unwrap();
    let login = next_login(&mut listener, &mut client);
    assert_eq!(login.client_name().as_str(), "client");
    assert_eq!(login.session(), None, "a fresh client knows no session");
    assert!(login.peer().ip().is_loopback());
    assert_eq!(login.acceptor_name().as_str(), "server");
    assert_eq!(login.acceptor_session().as_str(), "day1");
    assert_eq!(
        (
            login.hello().first_unacked,
            login.hello().next_seq,
            login.hello().popped
        ),
        (0, 0, 0)
    );
    assert!(format!("{login:?}").contains("client"));
    thread::spawn(move || login.reject("closed for maintenance"))
        .join()
        .unwrap()
        .unwrap();
    match client_error(&mut client) {
        ConnectionError::Rejected { reason, .. } => assert_eq!(reason, "closed for maintenance"),
        other => panic!("{other:?}"),
    }
    assert_eq!(client.state(), LinkState::Disconnected);
    assert_eq!(listener.pending(), 0);
}

#[test]
fn a_login_handed_to_another_pairs_connection_is_refused_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(dir.path()).reconnect_backoff_ns(10_000 * MS, 10_000 * MS);
    let mut listener = listener(&options);
    let mut a = Connection::<C>::client(listener.local_addr(), "a", "server", &options).unwrap();
    let login = next_login(&mut listener, &mut a);
    let (mut conn_a, _) = Connection::<C>::from_login(login, &options, now()).unwrap();
    until("a connected", || {
        let _ = conn_a.poll(now());
        let _ = a.poll(now());
        (a.is_connected() && conn_a.is_connected()).then_some(())
    });

    let mut b = Connection::<C>::client(listener.local_addr(), "b", "server", &options).unwrap();
    let login = next_login(&mut listener, &mut b);
    let error = conn_a.take_login(login, now()).unwrap_err();
    match &error {
        ConnectionError::Misrouted {
            login, connection, ..
        } => assert_eq!(
            (login.as_str(), connection.as_str()),
            ("server_b", "server_a")
        ),
        other => panic!("{other:?}"),
    }
    assert!(error.to_string().contains("server_b"), "{error}");
    match client_error(&mut b) {
        ConnectionError::Rejected { reason, .. } => {
            assert!(reason.contains("server_b"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // `a`'s pair goes on as if nothing happened.
    a.send(3, b"still here").unwrap();
    let got = until("a's message", || {
        let _ = a.poll(now());
        conn_a.poll(now()).unwrap();
        conn_a.recv_with(|m| m.payload().to_vec()).ok()
    });
    assert_eq!(got, b"still here");
    assert_eq!(conn_a.stats().handshakes, 1);
}

#[test]
fn a_first_login_whose_pair_is_in_use_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(dir.path()); // the client retries within milliseconds
    let mut listener = listener(&options);
    let mut client =
        Connection::<C>::client(listener.local_addr(), "client", "server", &options).unwrap();
    let first = next_login(&mut listener, &mut client);
    let (_holder, _) = Connection::<C>::from_login(first, &options, now()).unwrap();
    // The client logs in again (say its first socket was lost) and the application wrongly
    // makes a second connection for the pair instead of handing it to the first.
    client.disconnect();
    let again = next_login(&mut listener, &mut client);
    let error = Connection::<C>::from_login(again, &options, now()).unwrap_err();
    assert!(
        matches!(
            error,
            ConnectionError::Queue(shm_tcp::QueueError::InUse { .. })
        ),
        "{error:?}"
    );
    match client_error(&mut client) {
        ConnectionError::Rejected { reason, .. } => assert!(reason.contains("in use"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets that never log in, and the listener's bounds.

fn raw_hello_frame() -> Vec<u8> {
    let hello = Hello {
        authenticated: false,
        max_payload: 1000,
        first_unacked: 0,
        next_seq: 0,
        popped: 0,
        nonce: [9; 16],
        name: SegmentName::new("client").unwrap(),
        peer_name: SegmentName::new("server").unwrap(),
        session: None,
    };
    let mut payload = [0u8; MAX_HELLO_PAYLOAD];
    let len = hello.encode(&mut payload);
    let mut out = Vec::new();
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(16 + len as u32).to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&[Kind::Hello as u8, PROTOCOL_VERSION, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&payload[..len]);
    out.resize(frame::frame_size(len as u32), 0);
    out
}

/// Reads `stream` until it is closed (the listener drops a socket when it reports it failed).
fn until_closed(stream: &mut TcpStream) {
    stream.set_nonblocking(true).unwrap();
    until("the socket closed", || {
        let mut buf = [0u8; 512];
        match stream.read(&mut buf) {
            Ok(0) => Some(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Ok(_) => None,      // a refusal, then the close
            Err(_) => Some(()), // reset
        }
    });
}

#[test]
fn a_hello_never_finished_is_dropped_and_garbage_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let timeout = 500 * MS;
    let options = options(dir.path()).handshake_timeout_ns(timeout);
    let mut listener = listener(&options);
    let whole = raw_hello_frame();
    let mut half = TcpStream::connect(listener.local_addr()).unwrap();
    half.write_all(&whole[..whole.len() / 2]).unwrap();
    let mut garbage = TcpStream::connect(listener.local_addr()).unwrap();
    garbage.write_all(&[0xee; 64]).unwrap();
    let start = now();
    let first = until("the garbage refused", || listener.poll(now()));
    match first {
        ListenerEvent::Failed {
            error: ConnectionError::Frame { .. },
            peer,
        } => assert_eq!(peer, garbage.local_addr().unwrap()),
        other => panic!("expected the garbage first, got {other:?}"),
    }
    assert!(
        now() - start < timeout,
        "garbage is refused without waiting"
    );
    until_closed(&mut garbage);
    let second = until("the half hello timed out", || listener.poll(now()));
    match second {
        ListenerEvent::Failed {
            error:
                ConnectionError::TimedOut {
                    waiting_for,
                    waited_ns,
                    ..
                },
            peer,
        } => {
            assert_eq!(waiting_for, "the client's hello");
            assert!(waited_ns > timeout);
            assert_eq!(peer, half.local_addr().unwrap());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(listener.pending(), 0);
    until_closed(&mut half);
    // The rest of a hello now comes too late: nobody reads it. A whole one still logs in.
    let _ = half.write_all(&whole[whole.len() / 2..]);
    let mut fresh = TcpStream::connect(listener.local_addr()).unwrap();
    fresh.write_all(&whole).unwrap();
    let login = until("the whole hello", || match listener.poll(now()) {
        Some(ListenerEvent::Login(login)) => Some(login),
        Some(other) => panic!("{other:?}"),
        None => None,
    });
    assert_eq!(login.peer(), fresh.local_addr().unwrap());
    assert_eq!(listener.pending(), 0);
}

#[test]
fn a_poll_accepts_a_bounded_number_of_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let mut listener = listener(&options(dir.path()));
    let count = ACCEPTS_PER_POLL + 4;
    let sockets: Vec<TcpStream> = (0..count)
        .map(|_| TcpStream::connect(listener.local_addr()).unwrap())
        .collect();
    thread::sleep(Duration::from_millis(100)); // every connection in the kernel's backlog
    assert!(listener.poll(now()).is_none());
    assert_eq!(listener.pending(), ACCEPTS_PER_POLL);
    until("the rest accepted", || {
        assert!(listener.poll(now()).is_none());
        (listener.pending() == count).then_some(())
    });
    drop(sockets);
    until("the closed sockets dropped", || {
        while let Some(event) = listener.poll(now()) {
            assert!(
                matches!(
                    event,
                    ListenerEvent::Failed {
                        error: ConnectionError::Closed { .. },
                        ..
                    }
                ),
                "{event:?}"
            );
        }
        (listener.pending() == 0).then_some(())
    });
}
