//! Restarts within one process: connections and acceptors are dropped and made again from the
//! same folder (what a restarted process does), and every message is delivered exactly once and
//! in order; a new session, a lost file and a restored backup are refused with their typed
//! errors under `RecoveryPolicy::Refuse`, touching no file, or start afresh under
//! `RecoveryPolicy::StartAfresh`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::now;
use shm_tcp::{
    Acceptor, AcceptorEvent, AcceptorOptions, Connection, ConnectionError, ConnectionOptions,
    RecoveryError, RecoveryPolicy,
};
use spsc_core::{MessageReceiver, MessageSender, RecvError, SendError, SendSlot};

const C: usize = 1 << 14;
const MS: u64 = 1_000_000;

fn options(dir: &Path) -> ConnectionOptions {
    ConnectionOptions::new()
        .dir(dir)
        .reconnect_backoff_ns(MS, 20 * MS)
        .handshake_timeout_ns(1_000 * MS)
}

fn bind(dir: &Path, session: &str, at: Option<SocketAddr>) -> Acceptor<C> {
    let mut acceptor_options = AcceptorOptions::new(options(dir));
    if let Some(addr) = at {
        acceptor_options = acceptor_options.listen_on(addr);
    }
    Acceptor::bind("server", session, acceptor_options).unwrap()
}

fn client(dir: &Path, addr: SocketAddr, policy: RecoveryPolicy) -> Connection<C> {
    Connection::client(
        addr,
        "client",
        "server",
        &options(dir).recovery_policy(policy),
    )
    .unwrap()
}

/// An acceptor and a client in one folder, polled together; errors and events are collected,
/// not fatal (disconnects are what these tests make).
struct World {
    dir: PathBuf,
    acceptor: Option<Acceptor<C>>,
    client: Option<Connection<C>>,
    events: Vec<AcceptorEvent>,
    client_errors: Vec<ConnectionError>,
    server_errors: Vec<ConnectionError>,
}

impl World {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            acceptor: None,
            client: None,
            events: Vec::new(),
            client_errors: Vec::new(),
            server_errors: Vec::new(),
        }
    }

    fn acceptor(&mut self) -> &mut Acceptor<C> {
        self.acceptor.as_mut().expect("an acceptor")
    }

    fn client(&mut self) -> &mut Connection<C> {
        self.client.as_mut().expect("a client")
    }

    fn server(&mut self) -> &mut Connection<C> {
        let acceptor = self.acceptor();
        let id = acceptor.find("client").expect("the client logged in once");
        acceptor.connection(id).unwrap()
    }

    fn addr(&mut self) -> SocketAddr {
        self.acceptor().local_addr()
    }

    fn poll(&mut self) {
        let t = now();
        if let Some(acceptor) = self.acceptor.as_mut() {
            while let Some(event) = acceptor.poll(t, |_| Ok(())) {
                self.events.push(event);
            }
            for (_, conn) in acceptor.connections() {
                if let Err(error) = conn.poll(t) {
                    self.server_errors.push(error);
                }
            }
        }
        if let Some(client) = self.client.as_mut() {
            if let Err(error) = client.poll(t) {
                self.client_errors.push(error);
            }
        }
    }

    /// Polls until `done`, for at most 5 s.
    fn until(&mut self, what: &str, mut done: impl FnMut(&mut Self) -> bool) {
        let start = now();
        while !done(self) {
            assert!(
                now() - start < 5_000 * MS,
                "gave up waiting for {what}; client errors {:?}, server errors {:?}, events {:?}",
                self.client_errors,
                self.server_errors,
                self.events
            );
            self.poll();
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }

    fn connected(&mut self) -> bool {
        let client = self.client.as_ref().is_some_and(Connection::is_connected);
        let acceptor = self.acceptor.as_mut().expect("an acceptor");
        client && acceptor.connections().any(|(_, c)| c.is_connected())
    }

    /// The acceptor's side's refusals: of sockets failed before the handover (`Failed` events),
    /// then of the pair connection (a login handed over and refused is its `poll`'s error).
    /// Disconnects (a peer dropped by the test) are left out.
    fn server_failures(&self) -> Vec<&ConnectionError> {
        self.events
            .iter()
            .filter_map(|e| match e {
                AcceptorEvent::Failed { error, .. } => Some(error),
                _ => None,
            })
            .chain(&self.server_errors)
            .filter(|e| {
                !matches!(
                    e,
                    ConnectionError::Closed { .. } | ConnectionError::Io { .. }
                )
            })
            .collect()
    }

    fn wait_connected(&mut self) {
        self.until("the pair to connect", Self::connected);
    }

    /// Receives the next message on the client (`true`) or server side and returns its number.
    fn recv(&mut self, at_client: bool) -> u64 {
        let mut got = None;
        self.until("a message", |w| {
            let conn = if at_client { w.client() } else { w.server() };
            match conn.front() {
                Ok(message) => {
                    assert_eq!(message.tag(), if at_client { 2 } else { 1 });
                    got = Some(u64::from_le_bytes(message.payload().try_into().unwrap()));
                    conn.pop().unwrap();
                    true
                }
                Err(RecvError::Empty) => false,
                Err(other) => panic!("{other:?}"),
            }
        });
        got.unwrap()
    }

    /// Whether nothing is buffered for the client (`true`) or server side, after some polling.
    fn nothing_more(&mut self, at_client: bool) -> bool {
        let start = now();
        while now() - start < 50 * MS {
            self.poll();
            let conn = if at_client {
                self.client()
            } else {
                self.server()
            };
            if conn.front().is_ok() {
                return false;
            }
        }
        true
    }

    /// Acknowledgements settled: each side's queue holds exactly what the other has not popped.
    fn settle(&mut self, c2s: &Stream, s2c: &Stream) {
        self.until("the acknowledgements", |w| {
            w.client().unacknowledged() == c2s.pushed - c2s.popped
                && w.server().unacknowledged() == s2c.pushed - s2c.popped
        });
    }
}

/// One direction's messages: numbered from 0, each payload its number.
#[derive(Clone, Copy, Debug, Default)]
struct Stream {
    pushed: u64,
    popped: u64,
}

fn push(conn: &mut Connection<C>, tag: u16, stream: &mut Stream, burst: bool) {
    let mut slot = match conn.alloc(8, tag) {
        Ok(slot) => slot,
        Err(SendError::Full) => panic!("queue full"),
        Err(other) => panic!("{other:?}"),
    };
    slot.payload_mut()
        .copy_from_slice(&stream.pushed.to_le_bytes());
    if burst {
        slot.push_more();
    } else {
        slot.push();
    }
    stream.pushed += 1;
}

impl World {
    fn push_c2s(&mut self, s: &mut Stream, n: u64) {
        for i in 0..n {
            push(self.client(), 1, s, i % 3 == 1);
        }
    }

    fn push_s2c(&mut self, s: &mut Stream, n: u64) {
        for i in 0..n {
            push(self.server(), 2, s, i % 3 == 1);
        }
    }

    /// Pops `n` messages at the server: exactly the next numbers.
    fn pop_c2s(&mut self, s: &mut Stream, n: u64) {
        for _ in 0..n {
            assert_eq!(self.recv(false), s.popped, "client-to-server message");
            s.popped += 1;
        }
    }

    fn pop_s2c(&mut self, s: &mut Stream, n: u64) {
        for _ in 0..n {
            assert_eq!(self.recv(true), s.popped, "server-to-client message");
            s.popped += 1;
        }
    }

    /// Both sides' persisted counts agree with what the test pushed and popped.
    fn check_counts(&mut self, c2s: &Stream, s2c: &Stream) {
        let (client, server) = (
            (self.client().next_seq(), self.client().popped()),
            (self.server().next_seq(), self.server().popped()),
        );
        assert_eq!(client, (c2s.pushed, s2c.popped), "client: next_seq, popped");
        assert_eq!(server, (s2c.pushed, c2s.popped), "server: next_seq, popped");
    }

    /// Drains both directions: every message not yet popped comes, once, in order, then nothing.
    fn drain(&mut self, c2s: &mut Stream, s2c: &mut Stream) {
        self.pop_c2s(c2s, c2s.pushed - c2s.popped);
        self.pop_s2c(s2c, s2c.pushed - s2c.popped);
        assert!(self.nothing_more(false), "a duplicate at the server");
        assert!(self.nothing_more(true), "a duplicate at the client");
        self.check_counts(c2s, s2c);
    }
}

fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Checks `path` still holds `before`, naming the first changed bytes otherwise.
fn assert_unchanged(path: &Path, before: &[u8], what: &str) {
    let now = file_bytes(path);
    if now == before {
        return;
    }
    let changed: Vec<usize> = (0..now.len().max(before.len()))
        .filter(|&i| now.get(i) != before.get(i))
        .collect();
    let first = changed[0];
    let end = (first + 16).min(now.len()).min(before.len());
    panic!(
        "{what} ({}) was changed: {} bytes differ, the first at offset {first}: \
         {:?} became {:?} (lengths {} and {})",
        path.display(),
        changed.len(),
        &before[first..end],
        &now[first..end],
        before.len(),
        now.len()
    );
}

#[test]
fn messages_pushed_while_disconnected_are_delivered_after_connect() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(dir.path());
    // The client queues before any acceptor exists (the address is reserved, not listening).
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    w.client = Some(client(dir.path(), addr, RecoveryPolicy::Refuse));
    let (mut c2s, mut s2c) = (Stream::default(), Stream::default());
    w.push_c2s(&mut c2s, 20);
    // Polling a client with nobody listening: connects fail, and it keeps its queue.
    w.until("a refused connect", |w| !w.client_errors.is_empty());
    w.client_errors.clear();
    assert_eq!(w.client().unacknowledged(), 20);
    w.acceptor = Some(bind(dir.path(), "day1", Some(addr)));
    w.wait_connected();
    w.pop_c2s(&mut c2s, 20);
    // The server queues for a client that has gone; it gets them when it comes back.
    w.client = None;
    w.until("the server to see the client go", |w| {
        !w.server().is_connected()
    });
    w.push_s2c(&mut s2c, 15);
    w.client = Some(client(dir.path(), addr, RecoveryPolicy::Refuse));
    w.wait_connected();
    w.drain(&mut c2s, &mut s2c);
    assert!(w
        .events
        .iter()
        .any(|e| matches!(e, AcceptorEvent::LoggedIn { new: false, .. })));
}

#[test]
fn a_restarted_client_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(dir.path());
    w.acceptor = Some(bind(dir.path(), "day1", None));
    let addr = w.addr();
    let (mut c2s, mut s2c) = (Stream::default(), Stream::default());
    for round in 0..6u64 {
        w.client = Some(client(dir.path(), addr, RecoveryPolicy::Refuse));
        w.wait_connected();
        w.check_counts(&c2s, &s2c);
        // Mid-stream: some popped, some delivered but unpopped, some still in flight, both ways.
        w.push_c2s(&mut c2s, 10 + round);
        w.push_s2c(&mut s2c, 7 + 2 * round);
        w.pop_c2s(&mut c2s, 3 + round);
        w.pop_s2c(&mut s2c, 2 + round);
        for _ in 0..5 {
            w.poll();
        }
        w.push_c2s(&mut c2s, 4);
        w.push_s2c(&mut s2c, 4);
        // The restart.
        w.client = None;
    }
    w.client = Some(client(dir.path(), addr, RecoveryPolicy::Refuse));
    w.wait_connected();
    w.drain(&mut c2s, &mut s2c);
    assert!(w.client().stats().resent > 0);
}

#[test]
fn a_restarted_acceptor_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(dir.path());
    w.acceptor = Some(bind(dir.path(), "day1", None));
    let addr = w.addr();
    w.client = Some(client(dir.path(), addr, RecoveryPolicy::Refuse));
    let (mut c2s, mut s2c) = (Stream::default(), Stream::default());
    for round in 0..4u64 {
        w.wait_connected();
        w.check_counts(&c2s, &s2c);
        w.push_c2s(&mut c2s, 9 + round);
        w.push_s2c(&mut s2c, 11);
        w.pop_c2s(&mut c2s, 4);
        w.pop_s2c(&mut s2c, 5 + round);
        w.push_s2c(&mut s2c, 3);
        // The acceptor's process restarts, on the same port; the client keeps polling and
        // pushing while it is gone.
        w.acceptor = None;
        w.until("the client to notice", |w| !w.client().is_connected());
        w.push_c2s(&mut c2s, 2);
        w.acceptor = Some(bind(dir.path(), "day1", Some(addr)));
    }
    w.wait_connected();
    w.drain(&mut c2s, &mut s2c);

    // Both restart, the acceptor on a new port.
    w.push_c2s(&mut c2s, 5);
    w.push_s2c(&mut s2c, 6);
    w.pop_s2c(&mut s2c, 1);
    w.client = None;
    w.acceptor = None;
    w.acceptor = Some(bind(dir.path(), "day1", None));
    let new_addr = w.addr();
    assert_ne!(new_addr, addr);
    w.client = Some(client(dir.path(), new_addr, RecoveryPolicy::Refuse));
    w.wait_connected();
    w.drain(&mut c2s, &mut s2c);
    let unexpected: Vec<_> = w
        .events
        .iter()
        .filter(|e| {
            matches!(
                e,
                AcceptorEvent::Failed { .. } | AcceptorEvent::Refused { .. }
            )
        })
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
}

/// Runs a first session with traffic both ways, leaving messages unpopped each way; returns the
/// streams. Drops both sides.
fn first_day(w: &mut World) -> (Stream, Stream) {
    w.acceptor = Some(bind(&w.dir.clone(), "day1", None));
    let addr = w.addr();
    w.client = Some(client(&w.dir.clone(), addr, RecoveryPolicy::Refuse));
    w.wait_connected();
    let (mut c2s, mut s2c) = (Stream::default(), Stream::default());
    w.push_c2s(&mut c2s, 5);
    w.push_s2c(&mut s2c, 4);
    w.pop_c2s(&mut c2s, 3);
    w.pop_s2c(&mut s2c, 2);
    w.settle(&c2s, &s2c);
    w.check_counts(&c2s, &s2c);
    w.client = None;
    w.acceptor = None;
    w.events.clear();
    w.client_errors.clear();
    w.server_errors.clear();
    (c2s, s2c)
}

#[test]
fn a_new_session_moves_the_acceptors_file_aside_and_the_client_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(dir.path());
    first_day(&mut w);
    let client_file = dir.path().join("client_server");
    let server_file = dir.path().join("server_client");
    let client_before = file_bytes(&client_file);
    let server_before = file_bytes(&server_file);

    w.acceptor = Some(bind(dir.path(), "day2", None));
    let addr = w.addr();
    w.client = Some(client(dir.path(), addr, RecoveryPolicy::Refuse));
    w.until("the client's refusal", |w| !w.client_errors.is_empty());
    match &w.client_errors[0] {
        ConnectionError::Recovery {
            error: RecoveryError::SessionMismatch { ours, theirs },
            moved_to: None,
            ..
        } => assert_eq!((ours.as_str(), theirs.as_str()), ("day1", "day2")),
        other => panic!("{other:?}"),
    }
    let text = w.client_errors[0].to_string();
    assert!(
        text.contains("\"day1\"") && text.contains("\"day2\""),
        "{text}"
    );
    assert!(text.contains("no file was touched"), "{text}");
    // The acceptor moved its old file aside and started the pair afresh in day2.
    let moved = w
        .events
        .iter()
        .find_map(|e| match e {
            AcceptorEvent::LoggedIn { moved_aside, .. } => Some(moved_aside.clone()),
            _ => None,
        })
        .expect("a login event");
    let moved = moved.unwrap_or_else(|| {
        panic!(
            "the old state was not moved aside: events {:?}, server errors {:?}",
            w.events, w.server_errors
        )
    });
    assert_eq!(moved.parent(), Some(dir.path()));
    assert!(
        moved.to_string_lossy().ends_with(".stale")
            && moved
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("server_client."),
        "{moved:?}"
    );
    assert_unchanged(&moved, &server_before, "the moved-aside state");
    assert_eq!(w.server().session().unwrap().as_str(), "day2");
    assert_eq!((w.server().next_seq(), w.server().popped()), (0, 0));
    // It keeps refusing, still touching nothing.
    w.until("a second refusal", |w| w.client_errors.len() >= 2);
    assert!(matches!(
        &w.client_errors[1],
        ConnectionError::Recovery {
            error: RecoveryError::SessionMismatch { .. },
            moved_to: None,
            ..
        }
    ));
    assert!(!w.client().is_connected());
    // Closed (its claim on the ring released), the client's file is as it was.
    w.client = None;
    assert_unchanged(&client_file, &client_before, "the client's file");
}

#[test]
fn a_client_starting_afresh_follows_the_acceptor_into_a_new_session() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(dir.path());
    first_day(&mut w);
    let client_file = dir.path().join("client_server");
    let client_before = file_bytes(&client_file);

    w.acceptor = Some(bind(dir.path(), "day2", None));
    let addr = w.addr();
    w.client = Some(client(dir.path(), addr, RecoveryPolicy::StartAfresh));
    w.wait_connected();
    let moved_to = w
        .client_errors
        .iter()
        .find_map(|e| match e {
            ConnectionError::Recovery {
                error: RecoveryError::SessionMismatch { ours, theirs },
                moved_to,
                ..
            } => {
                assert_eq!((ours.as_str(), theirs.as_str()), ("day1", "day2"));
                moved_to.clone()
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no session mismatch: {:?}", w.client_errors));
    let text = w
        .client_errors
        .iter()
        .find(|e| matches!(e, ConnectionError::Recovery { .. }))
        .unwrap()
        .to_string();
    assert!(
        text.contains("moved to") && text.contains(".stale"),
        "{text}"
    );
    assert_unchanged(&moved_to, &client_before, "the moved-aside state");
    // Both sides start from zero in day2, and messages flow.
    assert_eq!(w.client().session().unwrap().as_str(), "day2");
    let (mut c2s, mut s2c) = (Stream::default(), Stream::default());
    w.check_counts(&c2s, &s2c);
    w.push_c2s(&mut c2s, 3);
    w.push_s2c(&mut s2c, 2);
    w.drain(&mut c2s, &mut s2c);
}

#[test]
fn a_lost_acceptor_file_is_refused_touching_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(dir.path());
    let (c2s, s2c) = first_day(&mut w);
    // 5 pushed by the client, 3 popped by the server; 4 pushed by the server, 2 popped.
    assert_eq!(
        (c2s.pushed, c2s.popped, s2c.pushed, s2c.popped),
        (5, 3, 4, 2)
    );
    std::fs::remove_file(dir.path().join("server_client")).unwrap();
    let client_file = dir.path().join("client_server");
    let client_before = file_bytes(&client_file);

    w.acceptor = Some(bind(dir.path(), "day1", None));
    let addr = w.addr();
    w.client = Some(client(dir.path(), addr, RecoveryPolicy::Refuse));
    w.until("both refusals", |w| {
        !w.client_errors.is_empty() && !w.server_failures().is_empty()
    });
    // The client: the acceptor reports 0 of its messages popped, but acknowledged 3 before.
    match &w.client_errors[0] {
        ConnectionError::Recovery {
            error:
                RecoveryError::PeerForgotPopped {
                    peer_popped: 0,
                    our_first_unacked: 3,
                },
            moved_to: None,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    let text = w.client_errors[0].to_string();
    assert!(
        text.contains("reports 0") && text.contains("acknowledged 3"),
        "{text}"
    );
    // The acceptor: the client popped 2 of its messages, but its (new) file has sent none.
    let failed = w.server_failures();
    assert!(
        matches!(
            failed[0],
            ConnectionError::Recovery {
                error: RecoveryError::PeerPoppedUnsent {
                    peer_popped: 2,
                    our_next: 0
                },
                moved_to: None,
                ..
            }
        ),
        "{failed:?}"
    );
    // Again, with the acceptor restarted: still refused, nothing touched (the acceptor's new
    // file included). Files are compared closed, their ring claims released.
    w.acceptor = None;
    let server_file = dir.path().join("server_client");
    let server_now = file_bytes(&server_file);
    w.acceptor = Some(bind(dir.path(), "day1", Some(addr)));
    let seen = w.client_errors.len();
    w.until("another refusal", |w| w.client_errors.len() > seen);
    assert!(matches!(
        w.client_errors[seen],
        ConnectionError::Recovery {
            error: RecoveryError::PeerForgotPopped { .. },
            ..
        }
    ));
    w.client = None;
    w.acceptor = None;
    assert_unchanged(&client_file, &client_before, "the client's file");
    assert_unchanged(&server_file, &server_now, "the acceptor's file");
}

#[test]
fn a_lost_client_file_is_refused_touching_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(dir.path());
    first_day(&mut w);
    std::fs::remove_file(dir.path().join("client_server")).unwrap();
    let server_file = dir.path().join("server_client");
    let server_before = file_bytes(&server_file);

    w.acceptor = Some(bind(dir.path(), "day1", None));
    let addr = w.addr();
    w.client = Some(client(dir.path(), addr, RecoveryPolicy::Refuse));
    w.until("both refusals", |w| {
        !w.client_errors.is_empty() && !w.server_failures().is_empty()
    });
    // The fresh client: the acceptor popped 3 of its messages, but it has sent none.
    assert!(
        matches!(
            w.client_errors[0],
            ConnectionError::Recovery {
                error: RecoveryError::PeerPoppedUnsent {
                    peer_popped: 3,
                    our_next: 0
                },
                moved_to: None,
                ..
            }
        ),
        "{:?}",
        w.client_errors
    );
    // The acceptor: the client reports 0 of its messages popped, after acknowledging 2.
    let server_side = w.server_failures();
    assert!(
        matches!(
            server_side[0],
            ConnectionError::Recovery {
                error: RecoveryError::PeerForgotPopped {
                    peer_popped: 0,
                    our_first_unacked: 2
                },
                ..
            }
        ),
        "{server_side:?}"
    );
    // The client's new file recorded no session: it never completed a handshake.
    assert_eq!(w.client().session(), None);
    w.acceptor = None;
    assert_unchanged(&server_file, &server_before, "the acceptor's file");
}

#[test]
fn a_restored_backup_is_refused_touching_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(dir.path());
    w.acceptor = Some(bind(dir.path(), "day1", None));
    let addr = w.addr();
    w.client = Some(client(dir.path(), addr, RecoveryPolicy::Refuse));
    w.wait_connected();
    let (mut c2s, mut s2c) = (Stream::default(), Stream::default());
    w.push_c2s(&mut c2s, 4);
    w.push_s2c(&mut s2c, 3);
    w.pop_c2s(&mut c2s, 4);
    w.pop_s2c(&mut s2c, 3);
    w.settle(&c2s, &s2c);
    // The backup, taken while the client is stopped.
    w.client = None;
    let client_file = dir.path().join("client_server");
    let backup = file_bytes(&client_file);
    // The pair moves on.
    w.client = Some(client(dir.path(), addr, RecoveryPolicy::Refuse));
    w.wait_connected();
    w.push_c2s(&mut c2s, 2);
    w.push_s2c(&mut s2c, 2);
    w.pop_c2s(&mut c2s, 2);
    w.pop_s2c(&mut s2c, 2);
    w.settle(&c2s, &s2c);
    w.check_counts(&c2s, &s2c);
    // Client (first unacked, next, popped) = (6, 6, 5), acceptor (5, 5, 6); the backup holds
    // the client's (4, 4, 3). Restore it.
    w.client = None;
    let current = file_bytes(&client_file);
    std::fs::write(&client_file, &backup).unwrap();
    let server_file = dir.path().join("server_client");
    let server_before = file_bytes(&server_file);
    w.client_errors.clear();
    w.server_errors.clear();
    w.events.clear();
    w.client = Some(client(dir.path(), addr, RecoveryPolicy::Refuse));
    w.until("both refusals", |w| {
        !w.client_errors.is_empty() && !w.server_failures().is_empty()
    });
    match &w.client_errors[0] {
        ConnectionError::Recovery {
            error:
                RecoveryError::PeerPoppedUnsent {
                    peer_popped: 6,
                    our_next: 4,
                },
            moved_to: None,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    let text = w.client_errors[0].to_string();
    assert!(
        text.contains("popped 6") && text.contains("only 4"),
        "{text}"
    );
    assert!(text.contains("restored"), "{text}");
    let failed = w.server_failures()[0];
    assert!(
        matches!(
            failed,
            ConnectionError::Recovery {
                error: RecoveryError::PeerForgotPopped {
                    peer_popped: 3,
                    our_first_unacked: 5
                },
                moved_to: None,
                ..
            }
        ),
        "{failed:?}"
    );
    assert!(failed.to_string().contains("reports 3"), "{failed}");
    // (The acceptor's file is compared open before and after: the same claims.)
    assert_unchanged(&server_file, &server_before, "the acceptor's file");
    w.client = None;
    assert_unchanged(&client_file, &backup, "the restored file");
    // Putting the right file back lets the pair resume, with nothing lost.
    std::fs::write(&client_file, &current).unwrap();
    w.client = Some(client(dir.path(), addr, RecoveryPolicy::Refuse));
    w.wait_connected();
    w.push_c2s(&mut c2s, 3);
    w.push_s2c(&mut s2c, 3);
    w.drain(&mut c2s, &mut s2c);
}
