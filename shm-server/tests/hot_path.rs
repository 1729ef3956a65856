//! No allocation once running (issue 14): fixed-capacity tables, proven by a counting global
//! allocator over the poll loops under load.
//!
//! A server of two groups (TCP on) serves three shared-memory clients and one `shm-tcp` client,
//! each on its own thread streaming echo requests with a window in flight. After a warm-up
//! (logins done, every client's first hundreds of echoes back, heartbeats gone both ways), the
//! thread running the server counts its allocations over tens of thousands of handled messages:
//! [`Server::poll_group`] (the handler replying in place, heartbeats written, TCP links polled)
//! and [`Server::poll_control`] (no login in flight: `accept`, `epoll_wait` over the live login
//! sockets, the TCP listener), counted apart; both must be exactly zero. Each client thread
//! counts its own: [`Client::poll`] (heartbeats, the login socket's check) with `send`, `front`
//! and `pop`, and the TCP client's `poll`/`send`/`front`/`pop`, must be zero too.
//!
//! Two more: a client that stops reading (the server's replies refused with `Full`, counted)
//! costs the group no allocation either, and an idle server's `poll_control` allocates nothing,
//! while the same measurement does see the allocations of a login (so the zeros are not
//! vacuous). The counting is per thread (a thread-local switch), as in `shm-channel`'s and
//! `shm-tcp`'s `tests/hot_path.rs`, so tests running in parallel do not count each other's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shm_channel::monotonic_nanos;
use shm_server::{Client, ClientOptions, Decision, Server, ServerConfig};
use shm_tcp::{AcceptorOptions, Connection, ConnectionOptions};
use spsc_core::{MessageReceiver, MessageSender, RecvError, SendError};

/// Counts the allocations of threads that have counting switched on (see `counted`).
struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with`: during thread teardown the locals may be gone; nothing is being measured then.
    let _ = COUNTING.try_with(|counting| {
        if counting.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counting is a side
// effect on const-initialised thread locals, which allocates nothing.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: forwarded with the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: forwarded unchanged; `ptr` and `layout` are the caller's, from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Runs `body` on this thread with allocation counting on, adds its allocations to `total`,
/// and returns what `body` returned.
fn counted<R>(total: &mut usize, body: impl FnOnce() -> R) -> R {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    let result = body();
    COUNTING.with(|c| c.set(false));
    *total += ALLOCATIONS.with(Cell::get);
    result
}

const C: usize = 1 << 16;
const SHM_CLIENTS: usize = 3;
const CLIENTS: usize = SHM_CLIENTS + 1;
/// Requests a client keeps in flight.
const WINDOW: u64 = 32;
/// Echoes every client must have back before the measurement starts.
const WARM_ECHOES: u64 = 300;
/// Messages the server must handle while counting.
const MEASURED_MESSAGES: usize = 60_000;

/// Heartbeats every 2 ms each way (so the heartbeat paths run hundreds of times while counted),
/// timeouts long enough for a loaded two-core machine.
const HEARTBEAT: Duration = Duration::from_millis(2);
const TIMEOUT: Duration = Duration::from_secs(10);

const WARMING: u8 = 0;
const MEASURING: u8 = 1;
const STOPPING: u8 = 2;

fn tcp_options(dir: &Path) -> ConnectionOptions {
    ConnectionOptions::new()
        .dir(dir)
        .heartbeat_interval_ns(HEARTBEAT.as_nanos() as u64)
        .peer_timeout_ns(TIMEOUT.as_nanos() as u64)
        .reconnect_backoff_ns(1_000_000, 20_000_000)
}

fn client_options() -> ClientOptions {
    ClientOptions::new()
        .login_timeout(Duration::from_secs(10))
        .heartbeat_interval(HEARTBEAT)
        .server_timeout(TIMEOUT)
}

/// A server named "hub" in `dir/srv` with two groups, TCP on, logins spread by load.
fn server(dir: &Path) -> Server<C> {
    let state = dir.join("server-tcp");
    std::fs::create_dir_all(&state).unwrap();
    let config = ServerConfig::new("hub", dir.join("srv"))
        .unwrap()
        .groups(2, 8)
        .heartbeat_interval(HEARTBEAT)
        .heartbeat_timeout(TIMEOUT)
        .tcp(AcceptorOptions::new(tcp_options(&state)));
    Server::<C>::new(config, |login| match login.least_loaded_group() {
        Some(group) => Decision::Accept { group },
        None => Decision::Reject("full".into()),
    })
    .expect("the server starts")
}

/// Writes request `seq` of client `client` into `buf` and returns its length (16 to 111
/// bytes): the sequence number, the client, then bytes that depend on both. No allocation.
fn request(client: usize, seq: u64, buf: &mut [u8; 112]) -> usize {
    let len = 16 + (seq * 37 % 96) as usize;
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&(client as u64).to_le_bytes());
    for (index, byte) in buf[16..len].iter_mut().enumerate() {
        *byte = (seq as usize * 31 + client * 7 + index) as u8;
    }
    len
}

/// What one client thread reports.
#[derive(Debug)]
struct ClientReport {
    /// Echoes received while counting.
    measured_echoes: u64,
    /// Allocations made while counting.
    allocations: usize,
}

/// Streams echo requests over `link` (a window of [`WINDOW`] in flight), checking every echo
/// arrives once, in order, intact. Counts its allocations from when it sees `phase` at
/// [`MEASURING`] until it sees [`STOPPING`]. `echoes` is shared with the server thread.
fn stream<L: MessageSender + MessageReceiver>(
    client: usize,
    link: &mut L,
    phase: &AtomicU8,
    echoes: &AtomicU64,
    mut poll: impl FnMut(&mut L),
) -> ClientReport {
    let mut buf = [0u8; 112];
    let mut expected = [0u8; 112];
    let (mut next_send, mut next_echo) = (0u64, 0u64);
    let mut allocations = 0;
    let mut measured_echoes = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut step = |link: &mut L, next_send: &mut u64, next_echo: &mut u64| {
        assert!(Instant::now() < deadline, "client {client} ran past 120 s");
        poll(link);
        while *next_send < *next_echo + WINDOW {
            let len = request(client, *next_send, &mut buf);
            match link.send(1, &buf[..len]) {
                Ok(()) => *next_send += 1,
                Err(SendError::Full) => break,
                Err(error) => panic!("client {client} send {next_send}: {error}"),
            }
        }
        let mut got = 0;
        loop {
            match link.front() {
                Ok(message) => {
                    let len = request(client, *next_echo, &mut expected);
                    assert!(
                        message.tag() == 1 && message.payload() == &expected[..len],
                        "client {client}: echo {next_echo} wrong"
                    );
                    link.pop().unwrap();
                    *next_echo += 1;
                    got += 1;
                }
                Err(RecvError::Empty) => break,
                Err(error) => panic!("client {client} receive: {error}"),
            }
        }
        if got == 0 {
            // Two cores for five busy threads: let the server run.
            std::thread::yield_now();
        } else {
            echoes.store(*next_echo, Ordering::Relaxed);
        }
        got
    };
    while phase.load(Ordering::Acquire) == WARMING {
        step(link, &mut next_send, &mut next_echo);
    }
    counted(&mut allocations, || {
        while phase.load(Ordering::Acquire) == MEASURING {
            measured_echoes += step(link, &mut next_send, &mut next_echo);
        }
    });
    ClientReport {
        measured_echoes,
        allocations,
    }
}

fn tcp_client(addr: std::net::SocketAddr, name: &str, dir: &Path) -> Connection<C> {
    let state = dir.join(format!("client-{name}"));
    std::fs::create_dir_all(&state).unwrap();
    let mut conn = Connection::<C>::client(addr, name, "hub", &tcp_options(&state)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !conn.is_connected() {
        assert!(Instant::now() < deadline, "{name} never connected");
        let _ = conn.poll(monotonic_nanos());
        std::thread::yield_now();
    }
    conn
}

/// The echo handler: the reply written in place, a copy of the request.
fn echo(request: &shm_server::Request<'_>, reply: &mut shm_server::Reply<'_, C>) {
    if let Ok(body) = reply.alloc(request.payload().len() as u32, request.tag()) {
        body.copy_from_slice(request.payload());
    }
}

#[test]
fn the_counter_sees_allocations() {
    // Guards against a vacuous pass: the same measurement does see a real allocation.
    let mut count = 0;
    counted(&mut count, || drop(std::hint::black_box(vec![1u8; 64])));
    assert_eq!(count, 1);
}

#[test]
fn polling_groups_and_control_under_load_allocates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server(dir.path());
    let addr = server.control().tcp_addr().expect("TCP is on");
    let folder = dir.path().join("srv");
    let phase = Arc::new(AtomicU8::new(WARMING));
    let echoes: Arc<[AtomicU64; CLIENTS]> = Arc::new(Default::default());
    let mut threads = Vec::new();
    for index in 0..SHM_CLIENTS {
        let (folder, phase, echoes) = (folder.clone(), phase.clone(), echoes.clone());
        threads.push(std::thread::spawn(move || {
            let name = format!("shm-{index}");
            let mut client = Client::<C>::connect(&folder, &name, &client_options()).unwrap();
            let report = stream(index, &mut client, &phase, &echoes[index], |client| {
                let event = client.poll(monotonic_nanos());
                assert!(matches!(event, Ok(None)), "{event:?}");
            });
            assert!(client.is_connected());
            report
        }));
    }
    {
        let (clients_dir, phase, echoes) =
            (dir.path().to_path_buf(), phase.clone(), echoes.clone());
        threads.push(std::thread::spawn(move || {
            let index = SHM_CLIENTS;
            let mut conn = tcp_client(addr, "tcp-0", &clients_dir);
            let report = stream(index, &mut conn, &phase, &echoes[index], |conn| {
                conn.poll(monotonic_nanos()).unwrap();
            });
            assert!(conn.is_connected());
            assert_eq!(conn.stats().handshakes, 1, "the TCP link was never lost");
            report
        }));
    }

    // Warm-up: every login done and answered, every client's first echoes back, a few
    // heartbeat intervals gone by.
    let deadline = Instant::now() + Duration::from_secs(60);
    let warm_start = Instant::now();
    loop {
        assert!(
            Instant::now() < deadline,
            "the warm-up did not finish in 60 s"
        );
        assert!(!threads.iter().any(|t| t.is_finished()), "a client failed");
        let now = monotonic_nanos();
        server.poll_control(now);
        for group in 0..2 {
            server.poll_group(group, now, echo);
        }
        let warm = echoes
            .iter()
            .all(|echoes| echoes.load(Ordering::Relaxed) >= WARM_ECHOES);
        if warm && warm_start.elapsed() > 20 * HEARTBEAT {
            break;
        }
    }
    assert_eq!(server.control().stats().logins, CLIENTS as u64);
    assert_eq!(server.control().connections(), CLIENTS);
    let loads = server.control().group_loads().to_vec();
    assert_eq!(loads, [2, 2], "both groups serve clients");
    while server.control().next_event().is_some() {}
    let stats_before: Vec<_> = (0..2)
        .map(|group| server.control().group_stats(group).unwrap())
        .collect();

    // Measured: the groups' polls and control's, counted apart.
    phase.store(MEASURING, Ordering::Release);
    let (mut group_allocations, mut control_allocations) = (0, 0);
    let (mut handled, mut control_work, mut rounds) = (0usize, 0usize, 0u64);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(60);
    while handled < MEASURED_MESSAGES || start.elapsed() < 100 * HEARTBEAT {
        assert!(
            Instant::now() < deadline,
            "only {handled} messages handled in 60 s"
        );
        let now = monotonic_nanos();
        control_work += counted(&mut control_allocations, || server.poll_control(now));
        for group in 0..2 {
            handled += counted(&mut group_allocations, || {
                server.poll_group(group, now, echo)
            });
        }
        rounds += 1;
    }
    let measured_for = start.elapsed();
    phase.store(STOPPING, Ordering::Release);
    let reports: Vec<ClientReport> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    assert_eq!(
        group_allocations, 0,
        "poll_group allocated while handling {handled} messages in {rounds} rounds"
    );
    assert_eq!(
        control_allocations, 0,
        "an idle poll_control allocated (over {rounds} polls)"
    );
    assert!(handled >= MEASURED_MESSAGES, "{handled}");
    assert_eq!(
        control_work, 0,
        "control had work while no login was in flight"
    );
    // Nothing changed meanwhile: no login, close or time-out, and every message was answered.
    assert!(server.control().next_event().is_none());
    assert_eq!(server.control().connections(), CLIENTS);
    let mut replies = 0;
    for (group, before) in stats_before.iter().enumerate() {
        let after = server.control().group_stats(group).unwrap();
        assert_eq!(after.timed_out, before.timed_out);
        assert_eq!(after.replies_full, before.replies_full);
        assert_eq!(after.connections, 2);
        assert!(after.requests > before.requests, "group {group} was served");
        replies += after.replies - before.replies;
    }
    assert_eq!(replies, handled as u64);
    for (client, report) in reports.iter().enumerate() {
        assert_eq!(
            report.allocations, 0,
            "client {client} (poll, send, front, pop) allocated: {report:?}"
        );
        assert!(
            report.measured_echoes >= 100,
            "client {client} was barely measured: {report:?}"
        );
    }
    eprintln!(
        "measured {handled} messages in {measured_for:?} ({rounds} rounds); clients: {reports:?}"
    );
}

#[test]
fn a_client_that_stops_reading_costs_the_group_no_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server(dir.path());
    let folder = dir.path().join("srv");
    let connecting =
        std::thread::spawn(move || Client::<C>::connect(&folder, "slow", &client_options()));
    while !connecting.is_finished() {
        let now = monotonic_nanos();
        server.poll_control(now);
        server.poll_group(0, now, echo);
        server.poll_group(1, now, echo);
    }
    let mut client = connecting.join().unwrap().unwrap();
    let group = client.group() as usize;
    // The client sends and never reads: the server's replies fill its ring, then are refused.
    let payload = [5u8; 1000];
    let mut full_seen = false;
    let poll_round = |server: &mut Server<C>, client: &mut Client<C>| {
        let now = monotonic_nanos();
        assert!(matches!(client.poll(now), Ok(None)));
        while client.send(2, &payload).is_ok() {}
        server.poll_control(now);
        server.poll_group(group, now, echo)
    };
    while !full_seen {
        poll_round(&mut server, &mut client);
        full_seen = server.control().group_stats(group).unwrap().replies_full > 0;
    }
    let full_before = server.control().group_stats(group).unwrap().replies_full;
    let (mut allocations, mut handled) = (0, 0);
    let start = Instant::now();
    counted(&mut allocations, || {
        while handled < 20_000 || start.elapsed() < 50 * HEARTBEAT {
            assert!(start.elapsed() < Duration::from_secs(60));
            handled += poll_round(&mut server, &mut client);
        }
    });
    assert_eq!(allocations, 0, "refused replies allocated");
    let full = server.control().group_stats(group).unwrap().replies_full - full_before;
    assert_eq!(full, handled as u64, "every reply was refused with Full");
    assert!(client.is_connected());
}

#[test]
fn an_idle_poll_control_allocates_nothing_and_a_login_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server(dir.path());
    let mut idle = 0;
    for _ in 0..20_000 {
        assert_eq!(
            counted(&mut idle, || server.poll_control(monotonic_nanos())),
            0
        );
    }
    assert_eq!(idle, 0, "an idle poll_control allocated");
    // The same measurement over a login: opening its segment allocates, and is seen.
    let folder = dir.path().join("srv");
    let connecting =
        std::thread::spawn(move || Client::<C>::connect(&folder, "one", &client_options()));
    let mut login = 0;
    while !connecting.is_finished() {
        counted(&mut login, || server.poll_control(monotonic_nanos()));
    }
    let client = connecting.join().unwrap().unwrap();
    assert!(login > 0, "a login through poll_control allocated nothing?");
    drop(client);
}
