//! TCP clients (`shm-tcp` connections) in the same groups as shared-memory clients: one poll
//! loop and one handler serve both, whichever transport a client uses; a TCP client that
//! drops its connection and logs in again gets every echo exactly once, in order.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shm_channel::monotonic_nanos;
use shm_server::{
    Client, ClientOptions, Decision, LoginTransport, Server, ServerConfig, ServerEvent,
};
use shm_tcp::{AcceptorOptions, Connection, ConnectionOptions};
use spsc_core::{MessageReceiver, MessageSender, RecvError, SendError};

const C: usize = 1 << 16;
type Srv = Server<C>;

fn tcp_options(dir: &Path) -> ConnectionOptions {
    ConnectionOptions::new()
        .dir(dir)
        .heartbeat_interval_ns(20_000_000)
        .peer_timeout_ns(2_000_000_000)
        .reconnect_backoff_ns(1_000_000, 20_000_000)
}

/// A server with TCP on, groups chosen by transport: shared memory in group 0, TCP in group 1
/// unless `spread` (then by the name's last digit, mixing both), every login's transport
/// recorded.
fn server(dir: &Path, spread: bool, logins: Arc<Mutex<Vec<(String, LoginTransport)>>>) -> Srv {
    let state = dir.join("server-tcp");
    std::fs::create_dir_all(&state).unwrap();
    let config = ServerConfig::new("hub", dir.join("srv"))
        .unwrap()
        .groups(2, 8)
        .tcp(AcceptorOptions::new(tcp_options(&state)));
    Srv::new(config, move |login| {
        logins
            .lock()
            .unwrap()
            .push((login.name().as_str().into(), login.transport()));
        let group = match (spread, login.transport()) {
            // "shm-0" and "tcp-0" to group 0, "shm-1" and "tcp-1" to group 1: both transports
            // in each group (by name, not by load: a client may finish before another logs in).
            (true, _) => usize::from(login.name().as_str().ends_with('1')),
            (false, LoginTransport::SharedMemory { .. }) => 0,
            (false, LoginTransport::Tcp { .. }) => 1,
        };
        Decision::Accept { group }
    })
    .expect("the server starts")
}

/// The payload of message `seq`: its number, then bytes that depend on it (1 to 300 long).
fn payload(seq: u64) -> Vec<u8> {
    let len = 8 + (seq * 37 % 293) as usize;
    let mut bytes = vec![0u8; len];
    bytes[..8].copy_from_slice(&seq.to_le_bytes());
    for (index, byte) in bytes[8..].iter_mut().enumerate() {
        *byte = (seq as usize * 31 + index) as u8;
    }
    bytes
}

/// Polls the server (both groups, echoing) until `done` or the deadline.
fn serve_until(server: &mut Srv, done: &AtomicBool, served: &Mutex<Vec<String>>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done.load(Ordering::Acquire) {
        assert!(
            Instant::now() < deadline,
            "the clients did not finish in 60 s"
        );
        let now = monotonic_nanos();
        server.poll_control(now);
        for group in 0..2 {
            // The same handler whatever the transport.
            server.poll_group(group, now, |request, reply| {
                let mut log = served.lock().unwrap();
                if log.last().map(String::as_str) != Some(request.client().as_str()) {
                    log.push(request.client().as_str().into());
                }
                let _ = reply.send(request.tag(), request.payload());
            });
        }
    }
}

/// Sends `count` messages over `link` (a window of up to 16 in flight) and checks each echo
/// arrives exactly once, in order, intact. `poll` keeps the link alive.
fn echo_stream<L: MessageSender + MessageReceiver>(
    link: &mut L,
    from: u64,
    count: u64,
    mut poll: impl FnMut(&mut L),
) {
    let (mut next_send, mut next_echo) = (from, from);
    let deadline = Instant::now() + Duration::from_secs(50);
    while next_echo < from + count {
        assert!(Instant::now() < deadline, "echo {next_echo} never came");
        poll(link);
        while next_send < from + count && next_send < next_echo + 16 {
            match link.send(1, &payload(next_send)) {
                Ok(()) => next_send += 1,
                Err(SendError::Full) => break,
                Err(error) => panic!("send {next_send}: {error}"),
            }
        }
        match link.front() {
            Ok(message) => {
                assert_eq!(message.payload(), payload(next_echo), "echo {next_echo}");
                link.pop().unwrap();
                next_echo += 1;
            }
            Err(RecvError::Empty) => std::thread::yield_now(),
            Err(error) => panic!("receive: {error}"),
        }
    }
}

fn tcp_client(addr: SocketAddr, name: &str, dir: &Path) -> Connection<C> {
    let state = dir.join(format!("client-{name}"));
    std::fs::create_dir_all(&state).unwrap();
    let mut conn = Connection::<C>::client(addr, name, "hub", &tcp_options(&state)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !conn.is_connected() {
        assert!(Instant::now() < deadline, "{name} never connected");
        let _ = conn.poll(monotonic_nanos()); // a refusal to retry is retried after back-off
        std::thread::yield_now();
    }
    conn
}

fn tcp_poll(conn: &mut Connection<C>) {
    let _ = conn.poll(monotonic_nanos());
}

#[test]
fn shared_memory_and_tcp_clients_share_the_groups_and_the_handler() {
    let dir = tempfile::tempdir().unwrap();
    let logins = Arc::new(Mutex::new(Vec::new()));
    let mut server = server(dir.path(), true, Arc::clone(&logins));
    let addr = server.control().tcp_addr().expect("TCP is on");
    let done = Arc::new(AtomicBool::new(false));
    let folder = dir.path().join("srv");
    let clients_dir = dir.path().to_path_buf();
    let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut threads = Vec::new();
    for index in 0..2 {
        let (folder, finished, done) = (folder.clone(), finished.clone(), done.clone());
        threads.push(std::thread::spawn(move || {
            let name = format!("shm-{index}");
            let mut client = Client::<C>::connect(&folder, &name, &ClientOptions::new()).unwrap();
            echo_stream(&mut client, 0, 300, |client| {
                client.poll(monotonic_nanos()).unwrap();
            });
            if finished.fetch_add(1, Ordering::AcqRel) == 3 {
                done.store(true, Ordering::Release);
            }
        }));
    }
    for index in 0..2 {
        let (clients_dir, finished, done) = (clients_dir.clone(), finished.clone(), done.clone());
        threads.push(std::thread::spawn(move || {
            let mut conn = tcp_client(addr, &format!("tcp-{index}"), &clients_dir);
            echo_stream(&mut conn, 0, 300, tcp_poll);
            if finished.fetch_add(1, Ordering::AcqRel) == 3 {
                done.store(true, Ordering::Release);
            }
        }));
    }
    let served = Mutex::new(Vec::new());
    serve_until(&mut server, &done, &served);
    for thread in threads {
        thread.join().unwrap();
    }
    let logins = logins.lock().unwrap();
    let tcp = logins
        .iter()
        .filter(|(_, transport)| matches!(transport, LoginTransport::Tcp { .. }))
        .count();
    assert_eq!((logins.len(), tcp), (4, 2), "{logins:?}");
    // Spread over both groups, every client served by the one handler.
    let mut groups: Vec<usize> = (0..)
        .map_while(|_| server.control().next_event())
        .filter_map(|event| match event {
            ServerEvent::LoggedIn { group, .. } => Some(group),
            _ => None,
        })
        .collect();
    groups.sort();
    assert_eq!(groups, [0, 0, 1, 1]);
    let mut names = served.into_inner().unwrap();
    names.sort();
    names.dedup();
    assert_eq!(names, ["shm-0", "shm-1", "tcp-0", "tcp-1"]);
    let requests: u64 = (0..2)
        .map(|group| server.control().group_stats(group).unwrap().requests)
        .sum();
    assert_eq!(requests, 4 * 300);
}

#[test]
fn a_tcp_client_that_drops_and_logs_in_again_gets_every_echo_once() {
    let dir = tempfile::tempdir().unwrap();
    let logins = Arc::new(Mutex::new(Vec::new()));
    let mut server = server(dir.path(), false, Arc::clone(&logins));
    let addr = server.control().tcp_addr().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let clients_dir = dir.path().to_path_buf();
    let client = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            for round in 0..3u64 {
                let mut conn = tcp_client(addr, "again", &clients_dir);
                // Leave messages in flight both ways, then drop the connection.
                echo_stream(&mut conn, round * 200, 200, tcp_poll);
                for seq in 0..5 {
                    conn.send(2, &payload(10_000 + seq)).unwrap();
                }
                drop(conn);
                // The next login sees those 5 echoes first.
                let mut conn = tcp_client(addr, "again", &clients_dir);
                for seq in 0..5 {
                    let deadline = Instant::now() + Duration::from_secs(20);
                    let message = loop {
                        assert!(Instant::now() < deadline, "echo of {seq} lost");
                        tcp_poll(&mut conn);
                        match conn.front() {
                            Ok(message) => break message.payload().to_vec(),
                            Err(RecvError::Empty) => std::thread::yield_now(),
                            Err(error) => panic!("{error}"),
                        }
                    };
                    assert_eq!(message, payload(10_000 + seq), "round {round}");
                    conn.pop().unwrap();
                }
                drop(conn);
            }
            done.store(true, Ordering::Release);
        })
    };
    let served = Mutex::new(Vec::new());
    serve_until(&mut server, &done, &served);
    client.join().unwrap();
    // Some logins were told to retry while the old link closed; each admitted login is one.
    let admitted = (0..)
        .map_while(|_| server.control().next_event())
        .filter(|event| matches!(event, ServerEvent::LoggedIn { .. }))
        .count();
    assert_eq!(admitted, 6);
    assert_eq!(server.control().group_stats(1).unwrap().requests, 3 * 205);
}
