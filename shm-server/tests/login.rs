//! Logins against a real server: login and logout, refusals with their reason (the login check,
//! a duplicate live name, a capacity mismatch, the connection limits, another uid), garbage and
//! half-sent logins on the socket, sessions that survive logouts and server restarts, a polling
//! client's reconnects, a new server name starting sessions afresh, moves between groups with
//! every message exactly once, heartbeat timeouts, and the folder lock.
//!
//! The server runs in the test thread (or its split halves in threads); clients run in threads,
//! and the other-uid clients in child processes (this binary re-executed with an ignored
//! `role_*` test, dropped to `nobody`). Every wait has a deadline on the real clock
//! ([`monotonic_nanos`]) and fails saying what it waited for; nothing asserts on how long
//! anything took.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use shm_channel::{monotonic_nanos, SegmentName};
use shm_server::wire::{Answer, ClientRecord, LoginHello, PROTOCOL_VERSION, RECORD_LEN};
use shm_server::{
    Client, ClientError, ClientEvent, ClientOptions, CloseReason, Control, Decision, Group,
    MoveError, Server, ServerConfig, ServerError, ServerEvent, MAX_PENDING_LOGINS,
};
use spsc_core::{MessageReceiver, MessageSender};

type Srv = Server<4096>;
type Cli = Client<4096>;

/// The uid (and gid) of `nobody`, the other user of the uid tests.
const NOBODY: u32 = 65534;

/// Taken for writing around every process spawn of this binary, and for reading by each test
/// that needs `flock`-based exclusivity to be exact: restarting a server on a folder (its lock
/// file `login.lock`) and expecting a segment removed by its last closer. Between `fork` and
/// `exec` a child shares every open file of this process, and so its `flock`s: a server dropped
/// in that instant still "holds" its folder, and the next `Server::new` sees `AlreadyRunning`.
/// A reader never spawns while it holds the guard (the lock is not reentrant).
static SPAWNING: RwLock<()> = RwLock::new(());

/// The guard of a test that depends on flock-based exclusivity (see [`SPAWNING`]).
fn no_spawn_meanwhile() -> RwLockReadGuard<'static, ()> {
    SPAWNING.read().unwrap_or_else(PoisonError::into_inner)
}

/// The guard of a process spawn: held until `spawn` has returned (the child has called `exec`,
/// closing this process's descriptors, which are all close-on-exec).
fn spawning() -> RwLockWriteGuard<'static, ()> {
    SPAWNING.write().unwrap_or_else(PoisonError::into_inner)
}

/// A deadline `seconds` from now on the monotonic clock.
fn deadline(seconds: u64) -> u64 {
    monotonic_nanos() + seconds * 1_000_000_000
}

/// Fails the test saying what it waited for, if `deadline` has passed.
fn check_deadline(deadline: u64, what: &str) {
    assert!(monotonic_nanos() < deadline, "timed out waiting for {what}");
}

/// The doc example's check: the least loaded group with room, else a refusal.
fn least_loaded(login: &shm_server::LoginRequest<'_>) -> Decision {
    match login.least_loaded_group() {
        Some(group) => Decision::Accept { group },
        None => Decision::Reject("every group is full".into()),
    }
}

/// A server named `name` in `folder` with the least-loaded check.
fn start(config: ServerConfig) -> Srv {
    Srv::new(config, least_loaded).expect("the server starts")
}

fn config(name: &str, folder: &Path) -> ServerConfig {
    ServerConfig::new(name, folder).unwrap()
}

/// Echoes each request with its tag and payload.
fn echo(request: &shm_server::Request<'_>, reply: &mut shm_server::Reply<'_, 4096>) {
    let _ = reply.send(request.tag(), request.payload());
}

/// One round of everything: control, then every group with the echo handler.
fn serve(server: &mut Srv) -> usize {
    let now = monotonic_nanos();
    let mut work = server.poll_control(now);
    let mut group = 0;
    while let Some(g) = server.group(group) {
        work += g.poll(now, echo);
        group += 1;
    }
    work
}

/// Runs `client` on a thread while serving `server`, and returns what it returned.
fn serving<T: Send + 'static>(server: &mut Srv, client: impl FnOnce() -> T + Send + 'static) -> T {
    let thread = std::thread::spawn(client);
    let end = deadline(30);
    while !thread.is_finished() {
        serve(server);
        check_deadline(end, "a client thread to finish");
    }
    thread.join().expect("the client thread panicked")
}

/// `Client::connect` on a thread while `server` is served.
fn connect<const C: usize>(
    server: &mut Srv,
    folder: &Path,
    name: &str,
    options: ClientOptions,
) -> Result<Client<C>, ClientError> {
    let folder = folder.to_path_buf();
    let name = name.to_string();
    serving(server, move || {
        Client::<C>::connect(&folder, &name, &options)
    })
}

/// Serves `server` until `client` has a message; returns its tag and payload (popped).
fn recv(server: &mut Srv, client: &mut Cli) -> (u16, Vec<u8>) {
    let end = deadline(20);
    loop {
        serve(server);
        if let Some(event) = client.poll(monotonic_nanos()).expect("client poll") {
            panic!("unexpected client event while waiting for a message: {event:?}");
        }
        if let Ok(message) = client.front() {
            let got = (message.tag(), message.payload().to_vec());
            client.pop().unwrap();
            return got;
        }
        check_deadline(end, "a message to the client");
    }
}

/// Every event the control side recorded so far.
fn events(server: &mut Srv) -> Vec<ServerEvent> {
    std::iter::from_fn(|| server.control().next_event()).collect()
}

/// Serves until an event matches `wanted`; returns it. Other events are collected in `seen`.
fn wait_event(
    server: &mut Srv,
    seen: &mut Vec<ServerEvent>,
    what: &str,
    mut wanted: impl FnMut(&ServerEvent) -> bool,
) -> ServerEvent {
    let end = deadline(20);
    loop {
        serve(server);
        while let Some(event) = server.control().next_event() {
            if wanted(&event) {
                return event;
            }
            seen.push(event);
        }
        check_deadline(end, what);
    }
}

/// Polls `client` (serving `server`, if given) until it reports an event.
fn client_event(server: Option<&mut Srv>, client: &mut Cli, what: &str) -> ClientEvent {
    let end = deadline(20);
    let mut server = server;
    loop {
        if let Some(server) = server.as_deref_mut() {
            serve(server);
        }
        match client.poll(monotonic_nanos()) {
            Ok(Some(event)) => return event,
            Ok(None) => {}
            Err(error) => panic!("client poll failed while waiting for {what}: {error}"),
        }
        check_deadline(end, what);
    }
}

fn name(text: &str) -> SegmentName {
    SegmentName::new(text).unwrap()
}

/// A well-formed login record for `client`.
fn login_record(client: &str, capacity: u64) -> [u8; RECORD_LEN] {
    ClientRecord::Login(LoginHello {
        name: name(client),
        last_server: None,
        capacity,
    })
    .encode()
}

/// Serves until `stream` (non-blocking) delivers a whole answer, and decodes it.
fn read_answer(server: &mut Srv, stream: &mut UnixStream) -> Answer {
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; RECORD_LEN];
    let mut filled = 0;
    let end = deadline(20);
    while filled < RECORD_LEN {
        serve(server);
        match stream.read(&mut buf[filled..]) {
            Ok(0) => panic!("the server closed the socket after {filled} bytes of its answer"),
            Ok(read) => filled += read,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => panic!("reading the answer: {error}"),
        }
        check_deadline(end, "the server's answer");
    }
    Answer::decode(&buf).expect("the server's answer is well-formed")
}

/// `true` once the server has closed `stream` (end of stream, or reset).
fn closed_by_server(stream: &mut UnixStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => panic!("the server sent data on a dropped login"),
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

// ---------------------------------------------------------------------------------------------
// Login, logout, refusals.
// ---------------------------------------------------------------------------------------------

#[test]
fn login_echo_and_logout() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(config("gw", dir.path()));
    let mut client =
        connect::<4096>(&mut server, dir.path(), "trader-1", ClientOptions::new()).expect("login");
    assert_eq!(client.server().as_str(), "gw");
    assert_eq!(client.name().as_str(), "trader-1");
    assert_eq!(client.group(), 0);
    assert!(client.is_connected());
    client.send(7, b"ping").unwrap();
    assert_eq!(recv(&mut server, &mut client), (7, b"ping".to_vec()));

    let mut seen = Vec::new();
    let logged_in = seen_or_wait(&mut server, &mut seen, "the login event", |event| {
        matches!(event, ServerEvent::LoggedIn { .. })
    });
    let ServerEvent::LoggedIn {
        id,
        name: logged,
        group,
        pid,
        new_session,
    } = logged_in
    else {
        unreachable!()
    };
    assert_eq!(logged.as_str(), "trader-1");
    assert_eq!((group, pid, new_session), (0, std::process::id(), false));
    assert_eq!(server.control().find("trader-1"), Some((id, 0)));
    assert_eq!(server.control().connections(), 1);

    client.logout();
    let closed = wait_event(&mut server, &mut seen, "the logout", |event| {
        matches!(event, ServerEvent::Closed { .. })
    });
    assert_eq!(
        closed,
        ServerEvent::Closed {
            id,
            name: name("trader-1"),
            reason: CloseReason::Logout
        }
    );
    assert_eq!(server.control().connections(), 0);
    assert_eq!(server.control().find("trader-1"), None);
    let stats = server.control().stats();
    assert_eq!((stats.logins, stats.closed, stats.rejected), (1, 1, 0));
    let group = server.control().group_stats(0).unwrap();
    assert_eq!((group.requests, group.replies), (1, 1));
    // The group has applied the close by now (control saw its `Closed`).
    assert_eq!(group.connections, 0);
    assert!(server.group(0).unwrap().is_empty());
}

/// The event matching `wanted`, from `seen` if it is already there, else by waiting.
fn seen_or_wait(
    server: &mut Srv,
    seen: &mut Vec<ServerEvent>,
    what: &str,
    mut wanted: impl FnMut(&ServerEvent) -> bool,
) -> ServerEvent {
    seen.extend(events(server));
    if let Some(index) = seen.iter().position(&mut wanted) {
        return seen.remove(index);
    }
    wait_event(server, seen, what, wanted)
}

#[test]
fn a_dropped_client_is_seen_at_once_by_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(config("gw", dir.path()));
    let client = connect::<4096>(&mut server, dir.path(), "short-lived", ClientOptions::new())
        .expect("login");
    drop(client); // no logout: the socket's end tells the server
    let mut seen = Vec::new();
    let closed = wait_event(&mut server, &mut seen, "the close", |event| {
        matches!(event, ServerEvent::Closed { .. })
    });
    assert!(
        matches!(
            closed,
            ServerEvent::Closed {
                reason: CloseReason::ClientGone,
                ..
            }
        ),
        "{closed:?}"
    );
    assert_eq!(server.control().connections(), 0);
}

#[test]
fn the_login_check_refuses_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let seen_by_check = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen_by_check);
    let mut server = Srv::new(config("gw", dir.path()), move |login| {
        log.lock()
            .unwrap()
            .push((login.name().as_str().to_string(), login.uid(), login.pid()));
        if login.name().as_str().starts_with("bad") {
            Decision::Reject(format!("{} is not on the list", login.name()))
        } else {
            Decision::Accept { group: 0 }
        }
    })
    .unwrap();

    let error = connect::<4096>(&mut server, dir.path(), "bad-1", ClientOptions::new())
        .expect_err("refused");
    match &error {
        ClientError::Rejected { server, reason } => {
            assert_eq!(server, "gw");
            assert_eq!(reason, "bad-1 is not on the list");
        }
        other => panic!("not a rejection: {other:?}"),
    }
    assert!(!error.is_transient());
    assert!(error.to_string().contains("bad-1 is not on the list"));

    // Others still get in.
    let good = connect::<4096>(&mut server, dir.path(), "good-1", ClientOptions::new());
    assert!(good.is_ok(), "{good:?}");

    let events = events(&mut server);
    assert!(events.contains(&ServerEvent::Rejected {
        name: Some(name("bad-1")),
        reason: "bad-1 is not on the list".into()
    }));
    assert_eq!(server.control().stats().rejected, 1);
    assert_eq!(server.control().stats().logins, 1);
    let calls = seen_by_check.lock().unwrap().clone();
    let pid = std::process::id();
    assert_eq!(calls.len(), 2);
    assert_eq!((calls[0].0.as_str(), calls[0].2), ("bad-1", Some(pid)));
    assert_eq!((calls[1].0.as_str(), calls[1].2), ("good-1", Some(pid)));
    assert_eq!(calls[0].1, calls[1].1, "both from this process's uid");
}

#[test]
fn a_second_live_login_of_a_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(config("gw", dir.path()));
    let first = connect::<4096>(&mut server, dir.path(), "solo", ClientOptions::new())
        .expect("first login");
    let error = connect::<4096>(&mut server, dir.path(), "solo", ClientOptions::new())
        .expect_err("second login");
    match &error {
        ClientError::AlreadyLoggedIn { name, holder_pid } => {
            assert_eq!(name, "solo");
            assert_eq!(*holder_pid, std::process::id());
        }
        other => panic!("not AlreadyLoggedIn: {other:?}"),
    }
    assert!(events(&mut server).iter().any(|event| matches!(
        event,
        ServerEvent::Rejected { name: Some(n), reason } if n.as_str() == "solo" && reason.contains("already logged in")
    )));
    // Once the first logs out, the name is free again (connect rides out "still closing").
    first.logout();
    let again = connect::<4096>(&mut server, dir.path(), "solo", ClientOptions::new());
    assert!(again.is_ok(), "{again:?}");
    assert_eq!(server.control().stats().logins, 2);
}

#[test]
fn a_login_right_after_the_holder_left_is_not_called_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("login.sock");
    let mut server = start(config("gw", dir.path()));
    for leave in ["logout", "drop"] {
        let first = connect::<4096>(&mut server, dir.path(), "solo", ClientOptions::new())
            .expect("first login");
        // The holder leaves, then a new login of its name comes, both before control's next
        // poll: the login must not be refused as a duplicate of a client already gone.
        match leave {
            "logout" => first.logout(),
            _ => drop(first),
        }
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream.write_all(&login_record("solo", 4096)).unwrap();
        match read_answer(&mut server, &mut stream) {
            Answer::RetryLater { reason, .. } => assert!(reason.contains("still closing")),
            Answer::Accepted { .. } => {}
            other => panic!("after a {leave}: {other:?}"),
        }
        drop(stream);
        let end = deadline(20);
        while server.control().connections() > 0 {
            serve(&mut server);
            check_deadline(end, "the connections to close");
        }
    }
}

#[test]
fn a_capacity_mismatch_names_both_capacities() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(config("gw", dir.path()));
    let error = connect::<8192>(&mut server, dir.path(), "wide", ClientOptions::new())
        .expect_err("mismatch");
    assert!(
        matches!(
            error,
            ClientError::CapacityMismatch {
                client: 8192,
                server: 4096
            }
        ),
        "{error:?}"
    );
    assert_eq!(server.control().stats().rejected, 1);
    assert_eq!(server.control().connections(), 0);
}

#[test]
fn the_connection_limits_refuse_the_next_login_with_a_reason() {
    // The server's limit: 1 group of 2.
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(config("gw", dir.path()).groups(1, 2));
    let _a = connect::<4096>(&mut server, dir.path(), "a", ClientOptions::new()).unwrap();
    let _b = connect::<4096>(&mut server, dir.path(), "b", ClientOptions::new()).unwrap();
    let error = connect::<4096>(&mut server, dir.path(), "c", ClientOptions::new())
        .expect_err("third login");
    match &error {
        ClientError::Rejected { reason, .. } => {
            assert!(reason.contains("full"), "{reason}");
        }
        other => panic!("not a rejection: {other:?}"),
    }
    assert_eq!(server.control().connections(), 2);

    // A group's limit, when the check picks a full group.
    let dir = tempfile::tempdir().unwrap();
    let mut server = Srv::new(config("gw", dir.path()).groups(2, 1), |_: &_| {
        Decision::Accept { group: 0 }
    })
    .unwrap();
    let _a = connect::<4096>(&mut server, dir.path(), "a", ClientOptions::new()).unwrap();
    let error = connect::<4096>(&mut server, dir.path(), "b", ClientOptions::new())
        .expect_err("group 0 is full");
    match &error {
        ClientError::Rejected { reason, .. } => {
            assert!(reason.contains("group 0 is full"), "{reason}");
        }
        other => panic!("not a rejection: {other:?}"),
    }
    // A check choosing a group that does not exist is refused too, saying so.
    let dir = tempfile::tempdir().unwrap();
    let mut server = Srv::new(config("gw", dir.path()), |_: &_| Decision::Accept {
        group: 3,
    })
    .unwrap();
    let error = connect::<4096>(&mut server, dir.path(), "a", ClientOptions::new())
        .expect_err("no group 3");
    assert!(
        matches!(&error, ClientError::Rejected { reason, .. } if reason.contains("group 3")),
        "{error:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Garbage, half-sent and silent logins; bounded work.
// ---------------------------------------------------------------------------------------------

/// A few bytes of a deterministic pseudo-random stream (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[test]
fn garbage_logins_are_refused_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(config("gw", dir.path()));
    let socket = dir.path().join("login.sock");

    let mut random = noise(0x5eed, RECORD_LEN);
    random[0] = 0xff; // surely not the magic
    let mut wrong_magic = login_record("x", 4096);
    wrong_magic[..8].copy_from_slice(b"SHMLOGIX");
    let mut wrong_version = login_record("x", 4096);
    wrong_version[8..10].copy_from_slice(&(PROTOCOL_VERSION + 8).to_le_bytes());
    let mut bad_name = login_record("x", 4096);
    bad_name[32] = b'/';
    let logout = ClientRecord::Logout.encode();

    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("random bytes", random, "magic"),
        ("a wrong magic", wrong_magic.to_vec(), "magic"),
        (
            "a wrong version",
            wrong_version.to_vec(),
            format!("version {}", PROTOCOL_VERSION + 8).leak(),
        ),
        ("a bad name", bad_name.to_vec(), "client name"),
        ("a logout first", logout.to_vec(), "logout"),
    ];
    for (count, (what, bytes, expected)) in cases.iter().enumerate() {
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream.write_all(bytes).unwrap();
        match read_answer(&mut server, &mut stream) {
            Answer::Rejected {
                server: name,
                reason,
            } => {
                assert_eq!(name.as_str(), "gw");
                assert!(
                    reason.contains(expected),
                    "{what}: the reason {reason:?} does not name {expected:?}"
                );
            }
            other => panic!("{what}: not a rejection: {other:?}"),
        }
        // Then the server hangs up.
        let end = deadline(20);
        while !closed_by_server(&mut stream) {
            serve(&mut server);
            check_deadline(end, "the server to hang up on garbage");
        }
        assert_eq!(server.control().stats().garbage, count as u64 + 1, "{what}");
    }
    let stats = server.control().stats();
    assert_eq!((stats.logins, stats.abandoned), (0, 0));
    assert_eq!(stats.rejected, cases.len() as u64);
    // The server is none the worse.
    assert!(connect::<4096>(&mut server, dir.path(), "fine", ClientOptions::new()).is_ok());
}

#[test]
fn half_sent_and_silent_logins_are_dropped_after_the_timeout_while_others_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(config("gw", dir.path()).login_timeout(Duration::from_millis(200)));
    let socket = dir.path().join("login.sock");

    // 200 of 432 bytes, then nothing.
    let mut half = UnixStream::connect(&socket).unwrap();
    half.write_all(&login_record("half", 4096)[..200]).unwrap();
    // Connects and sends nothing.
    let mut silent = UnixStream::connect(&socket).unwrap();
    // Sends part of a record, then hangs up: dropped at once, no timeout needed.
    let mut quitter = UnixStream::connect(&socket).unwrap();
    quitter
        .write_all(&login_record("quitter", 4096)[..100])
        .unwrap();

    // Control's clock stands still (the groups' runs), so neither can time out while a real
    // client logs in past them.
    let frozen = monotonic_nanos();
    server.poll_control(frozen);
    drop(quitter);
    let folder = dir.path().to_path_buf();
    let thread = std::thread::spawn(move || {
        let mut client = Cli::connect(&folder, "meanwhile", &ClientOptions::new())?;
        client.send(1, b"still served")?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(client)
    });
    let end = deadline(30);
    while !thread.is_finished() {
        server.poll_control(frozen);
        let now = monotonic_nanos();
        server.group(0).unwrap().poll(now, echo);
        check_deadline(end, "the other client's login");
    }
    let mut client = thread
        .join()
        .unwrap()
        .expect("logged in past the pending ones");
    let stats = server.control().stats();
    assert_eq!(stats.logins, 1);
    assert_eq!(stats.abandoned, 1, "only the quitter, so far");
    assert!(!closed_by_server(&mut half));
    assert!(!closed_by_server(&mut silent));

    // Real time again: both are dropped, with no answer.
    let end = deadline(20);
    while server.control().stats().abandoned < 3 {
        serve(&mut server);
        check_deadline(end, "the half-sent and silent logins to be dropped");
    }
    assert!(closed_by_server(&mut half));
    assert!(closed_by_server(&mut silent));
    let stats = server.control().stats();
    assert_eq!((stats.garbage, stats.rejected, stats.logins), (0, 0, 1));
    // The client that got in is served.
    assert_eq!(
        recv(&mut server, &mut client),
        (1, b"still served".to_vec())
    );
}

#[test]
fn each_control_poll_handles_a_bounded_number_of_logins() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(config("gw", dir.path()).logins_per_poll(2));
    let socket = dir.path().join("login.sock");
    let mut streams: Vec<UnixStream> = (0..5)
        .map(|_| {
            let mut stream = UnixStream::connect(&socket).unwrap();
            stream.write_all(&noise(9, RECORD_LEN)).unwrap();
            stream
        })
        .collect();
    server.poll_control(monotonic_nanos());
    assert!(server.control().stats().garbage <= 2);
    let end = deadline(20);
    while server.control().stats().garbage < 5 {
        let before = server.control().stats().garbage;
        server.poll_control(monotonic_nanos());
        assert!(server.control().stats().garbage - before <= 2);
        check_deadline(end, "all five logins to be answered");
    }
    for stream in &mut streams {
        assert!(matches!(
            read_answer(&mut server, stream),
            Answer::Rejected { .. }
        ));
    }
}

#[test]
fn a_client_told_to_retry_until_its_timeout_gets_retry_later() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(config("gw", dir.path()).login_timeout(Duration::from_secs(30)));
    let socket = dir.path().join("login.sock");
    let now = monotonic_nanos();
    let mut silent = Vec::new();
    for _ in 0..MAX_PENDING_LOGINS {
        silent.push(UnixStream::connect(&socket).unwrap());
        server.poll_control(now);
    }
    let folder = dir.path().to_path_buf();
    let client = std::thread::spawn(move || {
        let options = ClientOptions::new().login_timeout(Duration::from_millis(300));
        Cli::connect(&folder, "late", &options)
    });
    let end = deadline(20);
    while !client.is_finished() {
        server.poll_control(now); // the silent ones never time out: the table stays full
        check_deadline(end, "the client's retries");
    }
    match client.join().unwrap() {
        Err(error @ ClientError::RetryLater { .. }) => {
            assert!(error.is_transient());
            assert!(error.to_string().contains("already in progress"), "{error}");
        }
        other => panic!("not RetryLater: {other:?}"),
    }
    drop(silent);
}

#[test]
fn logins_past_the_pending_table_are_told_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(config("gw", dir.path()).login_timeout(Duration::from_secs(30)));
    let socket = dir.path().join("login.sock");
    // A full table of clients that send nothing (control's clock stands still: none times out).
    let now = monotonic_nanos();
    let mut silent = Vec::new();
    for _ in 0..MAX_PENDING_LOGINS {
        silent.push(UnixStream::connect(&socket).unwrap());
        server.poll_control(now);
    }
    let mut one_more = UnixStream::connect(&socket).unwrap();
    one_more.set_nonblocking(true).unwrap();
    let mut buf = [0u8; RECORD_LEN];
    let mut filled = 0;
    let end = deadline(20);
    while filled < RECORD_LEN {
        server.poll_control(now);
        match one_more.read(&mut buf[filled..]) {
            Ok(0) => panic!("closed without an answer"),
            Ok(read) => filled += read,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => panic!("{error}"),
        }
        check_deadline(end, "the answer past the pending table");
    }
    match Answer::decode(&buf).unwrap() {
        Answer::RetryLater { reason, .. } => {
            assert!(reason.contains("already in progress"), "{reason}")
        }
        other => panic!("not a retry-later: {other:?}"),
    }
    assert_eq!(server.control().stats().rejected, 1);
    for stream in &mut silent {
        assert!(!closed_by_server(stream));
    }
}

// ---------------------------------------------------------------------------------------------
// Another uid.
// ---------------------------------------------------------------------------------------------

/// Runs this test binary's ignored test `role` as a child process as `nobody`, with `env` set
/// and its stdout piped.
fn child_as_nobody(role: &str, env: &[(&str, String)]) -> std::process::Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            role,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(Stdio::piped())
        .uid(NOBODY)
        .gid(NOBODY);
    for (key, value) in env {
        command.env(key, value);
    }
    let _no_close_meanwhile = spawning();
    command.spawn().unwrap()
}

fn child_env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} not set: run only as a child role"))
}

/// Whether this process may start children as another user.
fn running_as_root() -> bool {
    let uid = std::fs::metadata("/proc/self").map(|meta| {
        use std::os::unix::fs::MetadataExt;
        meta.uid()
    });
    uid.is_ok_and(|uid| uid == 0)
}

/// Serves `server` until `child` exits, then returns the `OUTCOME:` line it printed.
fn child_outcome(server: &mut Srv, mut child: std::process::Child) -> String {
    let end = deadline(30);
    let status = loop {
        serve(server);
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if monotonic_nanos() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child did not finish");
        }
    };
    let mut output = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    assert!(status.success(), "child failed ({status}): {output}");
    output
        .lines()
        // With `--nocapture` the harness's "test role_... ... " precedes it on its line.
        .find_map(|line| line.split_once("OUTCOME:").map(|(_, outcome)| outcome))
        .unwrap_or_else(|| panic!("no outcome in the child's output: {output}"))
        .to_string()
}

/// A folder `nobody` can reach (a tempdir is 0700).
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Child role: logs in to `SHM_FOLDER` as `SHM_NAME`, sends one message and waits for its echo;
/// prints `OUTCOME:` and what happened.
#[test]
#[ignore = "child role of the other-uid tests"]
fn role_login_as_other_uid() {
    let folder = child_env("SHM_FOLDER");
    let options = ClientOptions::new().login_timeout(Duration::from_secs(10));
    let outcome = match Cli::connect(&folder, &child_env("SHM_NAME"), &options) {
        Ok(mut client) => {
            client.send(5, b"from another uid").unwrap();
            let end = deadline(20);
            let echo = loop {
                client.poll(monotonic_nanos()).unwrap();
                if let Ok(message) = client.front() {
                    break message.payload().to_vec();
                }
                check_deadline(end, "the echo");
            };
            client.pop().unwrap();
            client.logout();
            format!("accepted:{}", String::from_utf8_lossy(&echo))
        }
        Err(ClientError::Rejected { reason, .. }) => format!("rejected:{reason}"),
        Err(other) => format!("error:{other}"),
    };
    println!("OUTCOME:{outcome}");
}

#[test]
fn a_client_of_another_uid_is_refused_by_its_credentials() {
    if !running_as_root() {
        eprintln!("skipped: only root can start a child as nobody");
        return;
    }
    let dir = shared_dir();
    let mut server = start(config("gw", dir.path()).socket_mode(0o666));
    let child = child_as_nobody(
        "role_login_as_other_uid",
        &[
            ("SHM_FOLDER", dir.path().display().to_string()),
            ("SHM_NAME", "outsider".into()),
        ],
    );
    let outcome = child_outcome(&mut server, child);
    let reason = outcome
        .strip_prefix("rejected:")
        .unwrap_or_else(|| panic!("not refused: {outcome}"));
    assert!(reason.contains(&format!("uid {NOBODY}")), "{reason}");
    let stats = server.control().stats();
    assert_eq!((stats.rejected, stats.logins), (1, 0));
    assert!(events(&mut server).iter().any(|event| matches!(
        event,
        ServerEvent::Rejected { name: Some(n), .. } if n.as_str() == "outsider"
    )));
}

#[test]
fn an_allowed_uid_logs_in_and_is_served() {
    if !running_as_root() {
        eprintln!("skipped: only root can start a child as nobody");
        return;
    }
    let dir = shared_dir();
    let uids = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&uids);
    let mut server = Srv::new(
        config("gw", dir.path())
            .socket_mode(0o666)
            .segment_mode(0o666)
            .allow_uid(NOBODY),
        move |login| {
            log.lock().unwrap().push(login.uid());
            Decision::Accept { group: 0 }
        },
    )
    .unwrap();
    let child = child_as_nobody(
        "role_login_as_other_uid",
        &[
            ("SHM_FOLDER", dir.path().display().to_string()),
            ("SHM_NAME", "insider".into()),
        ],
    );
    let outcome = child_outcome(&mut server, child);
    assert_eq!(outcome, "accepted:from another uid");
    assert_eq!(*uids.lock().unwrap(), [Some(NOBODY)]);
    let mode = std::fs::metadata(dir.path().join("gw").join("insider"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666);
    let end = deadline(20);
    while server.control().stats().closed < 1 {
        serve(&mut server);
        check_deadline(end, "the child's logout");
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions across logouts and restarts.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_session_keeps_every_unconsumed_message_across_a_logout_and_a_server_restart() {
    let _exclusive = no_spawn_meanwhile();
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(config("gw", dir.path()));
    let mut client =
        connect::<4096>(&mut server, dir.path(), "keeper", ClientOptions::new()).expect("login");
    // Three requests the server answers (replies left unread by the client)...
    for i in 0..3u8 {
        client.send(1, &[b'a', i]).unwrap();
    }
    let end = deadline(20);
    while server.control().group_stats(0).unwrap().replies < 3 {
        serve(&mut server);
        check_deadline(end, "three replies");
    }
    // ...and three it never sees (control polled, not the group).
    for i in 0..3u8 {
        client.send(2, &[b'b', i]).unwrap();
    }
    server.poll_control(monotonic_nanos());
    client.logout();
    let end = deadline(20);
    while server.control().stats().closed < 1 {
        server.poll_control(monotonic_nanos());
        server.group(0).unwrap().poll(monotonic_nanos(), |_, _| {
            panic!("no request is handled before the restart")
        });
        check_deadline(end, "the logout");
    }
    drop(server);

    let mut server = start(config("gw", dir.path()));
    let mut client = connect::<4096>(&mut server, dir.path(), "keeper", ClientOptions::new())
        .expect("login again");
    // The unread replies first, then the echoes of the requests the old server never saw.
    for i in 0..3u8 {
        assert_eq!(recv(&mut server, &mut client), (1, vec![b'a', i]));
    }
    for i in 0..3u8 {
        assert_eq!(recv(&mut server, &mut client), (2, vec![b'b', i]));
    }
    // And nothing else.
    for _ in 0..100 {
        serve(&mut server);
    }
    assert!(client.front().is_err());
    assert_eq!(server.control().group_stats(0).unwrap().requests, 3);
}

#[test]
fn a_polling_client_reconnects_after_a_server_restart_with_messages_sent_meanwhile() {
    let _exclusive = no_spawn_meanwhile();
    let dir = tempfile::tempdir().unwrap();
    let options = ClientOptions::new()
        .heartbeat_interval(Duration::from_millis(10))
        .server_timeout(Duration::from_millis(300))
        .retry(Duration::from_millis(5), Duration::from_millis(20));
    let mut server = start(config("gw", dir.path()));
    let mut client =
        connect::<4096>(&mut server, dir.path(), "persistent", options).expect("login");
    client.send(1, b"before").unwrap();
    assert_eq!(recv(&mut server, &mut client), (1, b"before".to_vec()));

    drop(server);
    let event = client_event(None, &mut client, "the client to see the server gone");
    assert!(
        matches!(event, ClientEvent::Disconnected { .. }),
        "{event:?}"
    );
    assert!(!client.is_connected());
    // Sent during the outage: waits in the session's ring.
    client.send(2, b"during").unwrap();
    // An outage longer than the client's server timeout: the old server's last heartbeat is
    // older than that when the new server takes the login.
    let end = monotonic_nanos() + 400_000_000;
    while monotonic_nanos() < end {
        assert_eq!(client.poll(monotonic_nanos()).unwrap(), None);
        std::thread::sleep(Duration::from_millis(1));
    }

    let mut server = start(config("gw", dir.path()));
    let event = client_event(Some(&mut server), &mut client, "the reconnect");
    assert_eq!(
        event,
        ClientEvent::Reconnected {
            server: name("gw"),
            new_session: false
        }
    );
    assert!(client.is_connected());
    assert_eq!(recv(&mut server, &mut client), (2, b"during".to_vec()));
    // The reconnected login holds: no spurious disconnect from the old server's stale
    // heartbeat, for a while longer than the client's server timeout.
    let end = monotonic_nanos() + 500_000_000;
    while monotonic_nanos() < end {
        serve(&mut server);
        let event = client.poll(monotonic_nanos()).unwrap();
        assert_eq!(event, None, "after the reconnect");
    }
    client.send(3, b"after").unwrap();
    assert_eq!(recv(&mut server, &mut client), (3, b"after".to_vec()));
    let mut seen = Vec::new();
    let logged_in = seen_or_wait(&mut server, &mut seen, "the login", |event| {
        matches!(event, ServerEvent::LoggedIn { .. })
    });
    assert!(
        matches!(
            logged_in,
            ServerEvent::LoggedIn {
                new_session: false,
                ..
            }
        ),
        "{logged_in:?}"
    );
}

/// Runs this test binary's ignored test `role` as a child process (same user), with `env`.
fn child(role: &str, env: &[(&str, String)]) -> std::process::Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            role,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let _no_close_meanwhile = spawning();
    command.spawn().unwrap()
}

/// Child role: an echo server named `gw` on `SHM_FOLDER`, served until the process is killed
/// (or a minute has passed).
#[test]
#[ignore = "child role of a_client_comes_back_after_its_server_was_killed"]
fn role_serve_until_killed() {
    let mut server = start(config("gw", Path::new(&child_env("SHM_FOLDER"))));
    let end = deadline(60);
    while monotonic_nanos() < end {
        serve(&mut server);
    }
}

#[test]
fn a_client_comes_back_after_its_server_was_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut process = child(
        "role_serve_until_killed",
        &[("SHM_FOLDER", dir.path().display().to_string())],
    );
    let options = ClientOptions::new()
        .login_timeout(Duration::from_secs(20))
        .heartbeat_interval(Duration::from_millis(10))
        .server_timeout(Duration::from_millis(300))
        .retry(Duration::from_millis(5), Duration::from_millis(20));
    let mut client = Cli::connect(dir.path(), "survivor", &options).expect("login");
    client.send(1, b"before").unwrap();
    let end = deadline(20);
    loop {
        assert_eq!(client.poll(monotonic_nanos()).unwrap(), None);
        if let Ok(message) = client.front() {
            assert_eq!(message.payload(), b"before");
            break;
        }
        check_deadline(end, "the killed server's echo");
    }
    client.pop().unwrap();

    // A crash: nothing of the server runs, its heartbeat stays in the segment as it was.
    process.kill().unwrap();
    process.wait().unwrap();
    let event = client_event(None, &mut client, "the client to see its server die");
    assert!(
        matches!(event, ClientEvent::Disconnected { .. }),
        "{event:?}"
    );
    client.send(2, b"during").unwrap();
    // Down for longer than the client's server timeout.
    let end = monotonic_nanos() + 400_000_000;
    while monotonic_nanos() < end {
        assert_eq!(client.poll(monotonic_nanos()).unwrap(), None);
        std::thread::sleep(Duration::from_millis(1));
    }

    // A new server of the same name (this process) takes over the folder and the session.
    let mut server = start(config("gw", dir.path()));
    let event = client_event(Some(&mut server), &mut client, "the reconnect");
    assert_eq!(
        event,
        ClientEvent::Reconnected {
            server: name("gw"),
            new_session: false
        }
    );
    assert_eq!(recv(&mut server, &mut client), (2, b"during".to_vec()));
    // The login holds: the dead server's stale heartbeat does not count against the new one.
    let end = monotonic_nanos() + 500_000_000;
    while monotonic_nanos() < end {
        serve(&mut server);
        assert_eq!(
            client.poll(monotonic_nanos()).unwrap(),
            None,
            "after the reconnect"
        );
    }
    client.send(3, b"after").unwrap();
    assert_eq!(recv(&mut server, &mut client), (3, b"after".to_vec()));
}

#[test]
fn a_server_under_a_new_name_starts_every_session_afresh() {
    let _exclusive = no_spawn_meanwhile();
    let dir = tempfile::tempdir().unwrap();
    let options = ClientOptions::new()
        .heartbeat_interval(Duration::from_millis(10))
        .retry(Duration::from_millis(5), Duration::from_millis(20));
    let mut server = start(config("gw-1", dir.path()));
    let mut client = connect::<4096>(&mut server, dir.path(), "roamer", options).expect("login");
    // Left unconsumed in the old session: the new one never sees it.
    client.send(1, b"old session").unwrap();
    server.poll_control(monotonic_nanos());
    drop(server);
    let event = client_event(None, &mut client, "the client to see the server gone");
    assert!(
        matches!(event, ClientEvent::Disconnected { .. }),
        "{event:?}"
    );
    assert!(dir.path().join("gw-1").join("roamer").exists());

    let mut server = start(config("gw-2", dir.path()));
    let event = client_event(Some(&mut server), &mut client, "the reconnect");
    assert_eq!(
        event,
        ClientEvent::Reconnected {
            server: name("gw-2"),
            new_session: true
        }
    );
    assert_eq!(client.server().as_str(), "gw-2");
    // The old session's segment went with it (both of its ends are closed).
    assert!(!dir.path().join("gw-1").join("roamer").exists());
    assert!(dir.path().join("gw-2").join("roamer").exists());
    client.send(2, b"new session").unwrap();
    assert_eq!(recv(&mut server, &mut client), (2, b"new session".to_vec()));
    assert!(client.front().is_err());
    assert_eq!(server.control().group_stats(0).unwrap().requests, 1);
    let mut seen = Vec::new();
    let logged_in = seen_or_wait(&mut server, &mut seen, "the login", |event| {
        matches!(event, ServerEvent::LoggedIn { .. })
    });
    assert!(
        matches!(logged_in, ServerEvent::LoggedIn { new_session: true, ref name, .. } if name.as_str() == "roamer"),
        "{logged_in:?}"
    );

    // A fresh process's login to the new name is a fresh session too.
    let mut other =
        connect::<4096>(&mut server, dir.path(), "newcomer", ClientOptions::new()).expect("login");
    assert!(other.front().is_err());
    other.send(3, b"hi").unwrap();
    assert_eq!(recv(&mut server, &mut other), (3, b"hi".to_vec()));
}

#[test]
fn a_second_server_on_a_folder_is_refused_while_the_first_lives() {
    let _exclusive = no_spawn_meanwhile();
    let dir = tempfile::tempdir().unwrap();
    let mut first = start(config("gw", dir.path()));
    match Srv::new(config("other", dir.path()), least_loaded) {
        Err(ServerError::AlreadyRunning { folder }) => assert_eq!(folder, dir.path()),
        other => panic!("not AlreadyRunning: {other:?}"),
    }
    // The refused one left the first's socket alone.
    assert!(connect::<4096>(&mut first, dir.path(), "a", ClientOptions::new()).is_ok());
    drop(first);
    let mut second = start(config("gw", dir.path()));
    assert!(connect::<4096>(&mut second, dir.path(), "b", ClientOptions::new()).is_ok());
}

#[test]
fn out_of_range_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for config in [
        config("gw", dir.path()).groups(0, 4),
        config("gw", dir.path()).groups(1, 0),
        config("gw", dir.path()).groups(1, 2000),
        config("gw", dir.path())
            .heartbeat_interval(Duration::from_millis(100))
            .heartbeat_timeout(Duration::from_millis(50)),
    ] {
        assert!(matches!(
            Srv::new(config, least_loaded),
            Err(ServerError::Config { .. })
        ));
    }
    assert!(ServerConfig::new("a/b", dir.path()).is_err());
}

// ---------------------------------------------------------------------------------------------
// Heartbeats.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_client_that_stops_polling_is_timed_out_then_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(
        config("gw", dir.path())
            .heartbeat_interval(Duration::from_millis(10))
            .heartbeat_timeout(Duration::from_millis(100)),
    );
    let options = ClientOptions::new()
        .heartbeat_interval(Duration::from_millis(10))
        .retry(Duration::from_millis(5), Duration::from_millis(20));
    let mut client = connect::<4096>(&mut server, dir.path(), "sleepy", options).expect("login");
    // The client stops calling `poll`: no heartbeats.
    let mut seen = Vec::new();
    let closed = wait_event(&mut server, &mut seen, "the heartbeat timeout", |event| {
        matches!(event, ServerEvent::Closed { .. })
    });
    assert!(
        matches!(
            closed,
            ServerEvent::Closed {
                reason: CloseReason::HeartbeatTimeout,
                ..
            }
        ),
        "{closed:?}"
    );
    let stats = server.control().group_stats(0).unwrap();
    assert_eq!((stats.timed_out, stats.connections), (1, 0));
    assert_eq!(server.control().connections(), 0);

    // Awake again: it sees the lost login, then logs back in to the same session.
    let event = client_event(Some(&mut server), &mut client, "the disconnect");
    assert!(
        matches!(event, ClientEvent::Disconnected { .. }),
        "{event:?}"
    );
    let event = client_event(Some(&mut server), &mut client, "the reconnect");
    assert_eq!(
        event,
        ClientEvent::Reconnected {
            server: name("gw"),
            new_session: false
        }
    );
    client.send(1, b"awake").unwrap();
    assert_eq!(recv(&mut server, &mut client), (1, b"awake".to_vec()));
    // Polled, it stays in.
    for _ in 0..1000 {
        serve(&mut server);
        assert_eq!(client.poll(monotonic_nanos()).unwrap(), None);
    }
    assert_eq!(server.control().group_stats(0).unwrap().timed_out, 1);
}

// ---------------------------------------------------------------------------------------------
// Moves between groups, with the server split over threads.
// ---------------------------------------------------------------------------------------------

/// Runs `group` on its own thread with the echo handler until `stop`; gives it back.
fn group_thread(
    mut group: Group<4096>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Group<4096>> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            group.poll(monotonic_nanos(), echo);
        }
        group
    })
}

/// Waits on `control` (polling it) until `done` holds.
fn poll_control_until(
    control: &mut Control<4096>,
    what: &str,
    mut done: impl FnMut(&mut Control<4096>) -> bool,
) {
    let end = deadline(20);
    while !done(control) {
        control.poll_control(monotonic_nanos());
        check_deadline(end, what);
    }
}

#[test]
fn a_moved_connection_keeps_every_message_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Srv::new(config("gw", dir.path()).groups(2, 4), |_: &_| {
        Decision::Accept { group: 0 }
    })
    .unwrap();
    let (control, groups) = server.split();
    let stop = Arc::new(AtomicBool::new(false));
    let mut group_threads: Vec<_> = groups
        .into_iter()
        .map(|group| group_thread(group, Arc::clone(&stop)))
        .collect();
    // Control on its own thread too: it does the moves when the counters say so.
    let control_stop = Arc::new(AtomicBool::new(false));
    let control_done = Arc::clone(&control_stop);
    // Set by control once the moves are done and more messages went through: the client then
    // stops sending and drains its echoes.
    let client_stop = Arc::new(AtomicBool::new(false));
    let client_done = Arc::clone(&client_stop);
    let control_thread = std::thread::spawn(move || {
        let mut control = control;
        let mut events = Vec::new();
        let take = |control: &mut Control<4096>, events: &mut Vec<ServerEvent>| {
            events.extend(std::iter::from_fn(|| control.next_event()));
        };
        poll_control_until(&mut control, "the login", |control| {
            control.find("mover").is_some()
        });
        let (id, group) = control.find("mover").unwrap();
        assert_eq!(group, 0);
        // Errors first: no such group; then a move, and a second while it is under way.
        assert_eq!(
            control.move_connection(id, 2),
            Err(MoveError::NoSuchGroup {
                group: 2,
                groups: 2
            })
        );
        assert_eq!(control.move_connection(id, 0), Ok(()), "already there");
        let mut hops = Vec::new();
        for (from, to) in [(0, 1), (1, 0), (0, 1)] {
            // Let some messages through the current group first.
            let start = control.group_stats(from).unwrap().requests;
            poll_control_until(&mut control, "requests before a move", |control| {
                control.group_stats(from).unwrap().requests >= start + 100
            });
            control.move_connection(id, to).unwrap();
            assert_eq!(control.move_connection(id, from), Err(MoveError::Busy(id)));
            assert_eq!(control.group_loads()[to], 1);
            poll_control_until(&mut control, "the move", |control| {
                control.find("mover") == Some((id, to))
            });
            take(&mut control, &mut events);
            hops.push((from, to));
        }
        let start = control.group_stats(1).unwrap().requests;
        poll_control_until(&mut control, "requests after the moves", |control| {
            control.group_stats(1).unwrap().requests >= start + 100
        });
        client_stop.store(true, Ordering::Relaxed);
        while !control_done.load(Ordering::Relaxed) {
            control.poll_control(monotonic_nanos());
        }
        take(&mut control, &mut events);
        (control, events, id, hops)
    });

    // The client: numbered messages, a window of them in flight, every echo checked in order.
    let folder = dir.path().to_path_buf();
    let client_thread = std::thread::spawn(move || {
        let mut client = Cli::connect(&folder, "mover", &ClientOptions::new()).unwrap();
        let (mut sent, mut received) = (0u64, 0u64);
        let end = deadline(60);
        loop {
            let stopping = client_done.load(Ordering::Relaxed);
            if stopping && received == sent {
                break;
            }
            client.poll(monotonic_nanos()).unwrap();
            while !stopping && sent - received < 64 {
                if client.send(9, &sent.to_le_bytes()).is_err() {
                    break;
                }
                sent += 1;
            }
            while let Ok(message) = client.front() {
                let number = u64::from_le_bytes(message.payload().try_into().unwrap());
                assert_eq!(number, received, "every echo once, in order");
                client.pop().unwrap();
                received += 1;
            }
            check_deadline(end, "every echo");
        }
        (client, sent)
    });
    let (client, messages) = client_thread
        .join()
        .expect("the client saw every echo once");
    control_stop.store(true, Ordering::Relaxed);
    let (control, events, id, hops) = control_thread.join().expect("control");
    stop.store(true, Ordering::Relaxed);
    let groups: Vec<Group<4096>> = group_threads.drain(..).map(|t| t.join().unwrap()).collect();

    assert_eq!(hops, [(0, 1), (1, 0), (0, 1)]);
    let moves: Vec<_> = events
        .iter()
        .filter_map(|event| match event {
            ServerEvent::Moved {
                id: moved,
                from,
                to,
            } => {
                assert_eq!(*moved, id);
                Some((*from, *to))
            }
            _ => None,
        })
        .collect();
    assert_eq!(moves, hops);
    assert_eq!(control.stats().moved, 3);
    assert_eq!(control.group_loads(), [0, 1]);
    let (s0, s1) = (
        control.group_stats(0).unwrap(),
        control.group_stats(1).unwrap(),
    );
    assert_eq!(s0.requests + s1.requests, messages);
    assert_eq!(s0.replies + s1.replies, messages);
    assert!(s0.requests >= 200 && s1.requests >= 100, "{s0:?} {s1:?}");
    assert_eq!((s0.connections, s1.connections), (0, 1));
    assert!(groups[0].is_empty());
    let held: Vec<_> = groups[1].connections().collect();
    assert_eq!(held.len(), 1);
    let (held_id, held_name, stats) = held[0];
    assert_eq!((held_id, held_name.as_str()), (id, "mover"));
    // The connection's own counters travelled with it.
    assert_eq!(
        (stats.requests, stats.replies, stats.replies_full),
        (messages, messages, 0)
    );
    assert_eq!(groups[1].stats(), control.group_stats(1).unwrap());
    drop(client);
}

#[test]
fn a_connection_closed_while_moving_is_closed_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Srv::new(config("gw", dir.path()).groups(2, 1), |_: &_| {
        Decision::Accept { group: 0 }
    })
    .unwrap();
    let client = connect::<4096>(&mut server, dir.path(), "leaver", ClientOptions::new()).unwrap();
    let (id, _) = server.control().find("leaver").unwrap();
    // A move, and the client gone before its old group gives it back.
    server.control().move_connection(id, 1).unwrap();
    drop(client);
    let end = deadline(20);
    while server.control().stats().closed < 1 {
        serve(&mut server);
        check_deadline(end, "the close");
    }
    let stats = server.control().stats();
    assert_eq!((stats.closed, stats.moved), (1, 0));
    assert_eq!(server.control().group_loads(), [0, 0]);
    assert_eq!(server.control().connections(), 0);
    assert_eq!(
        server.control().move_connection(id, 0),
        Err(MoveError::NoSuchConnection(id))
    );
    // Group 1 (the move's target) is free for a new login: nothing leaked.
    let _a = connect::<4096>(&mut server, dir.path(), "a", ClientOptions::new()).unwrap();
    let (new_id, _) = server.control().find("a").unwrap();
    assert_ne!(new_id, id);
    server.control().move_connection(new_id, 1).unwrap();
    let end = deadline(20);
    while server.control().find("a") != Some((new_id, 1)) {
        serve(&mut server);
        check_deadline(end, "the move");
    }
    // And group 1 is full now.
    let _b = connect::<4096>(&mut server, dir.path(), "b", ClientOptions::new()).unwrap();
    let (b_id, _) = server.control().find("b").unwrap();
    assert_eq!(
        server.control().move_connection(b_id, 1),
        Err(MoveError::GroupFull { group: 1, limit: 1 })
    );
}
