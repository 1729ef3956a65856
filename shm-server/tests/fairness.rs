//! A group's fairness: a client flooding its channel gets at most the budget per poll round, so
//! the others of its group are served in the same round; a client that stops reading gets `Full`
//! on the server's replies (counted), never a stall of its group.

use std::time::{Duration, Instant};

use shm_channel::monotonic_nanos;
use shm_server::{Client, ClientOptions, Decision, Server, ServerConfig};
use spsc_core::{MessageReceiver, MessageSender, RecvError, SendError};

const C: usize = 1 << 14;
const BUDGET: u32 = 8;

/// A server of one group with a budget of [`BUDGET`], and clients logged in under `names`.
fn server_and_clients(dir: &std::path::Path, names: &[&str]) -> (Server<C>, Vec<Client<C>>) {
    let config = ServerConfig::new("fair", dir)
        .unwrap()
        .groups(1, 8)
        .budget(BUDGET)
        .heartbeat_timeout(Duration::from_secs(30));
    let mut server = Server::<C>::new(config, |_| Decision::Accept { group: 0 }).unwrap();
    let mut clients = Vec::new();
    for name in names {
        let folder = dir.to_path_buf();
        let name = name.to_string();
        let login = std::thread::spawn(move || {
            Client::<C>::connect(&folder, &name, &ClientOptions::new()).unwrap()
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !login.is_finished() {
            assert!(Instant::now() < deadline, "login never answered");
            let now = monotonic_nanos();
            server.poll_control(now);
            server.poll_group(0, now, |_, _| {});
        }
        clients.push(login.join().unwrap());
    }
    // Let the group take both connections.
    let now = monotonic_nanos();
    server.poll_control(now);
    server.poll_group(0, now, |_, _| {});
    (server, clients)
}

#[test]
fn a_flooding_client_gets_its_budget_and_the_others_are_served_in_the_same_round() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, mut clients) = server_and_clients(dir.path(), &["flood", "quiet"]);
    let mut flooded = 0;
    while clients[0].send(1, &[0u8; 16]).is_ok() {
        flooded += 1;
    }
    assert!(flooded > 10 * BUDGET, "only {flooded} messages fit");
    clients[1].send(2, b"me too").unwrap();

    let mut seen = Vec::new();
    let handled = server.poll_group(0, monotonic_nanos(), |request, reply| {
        seen.push(request.client().as_str().to_string());
        let _ = reply.send(request.tag(), request.payload());
    });
    let from_flood = seen.iter().filter(|name| *name == "flood").count();
    assert_eq!(
        from_flood, BUDGET as usize,
        "the flooding client's share of one round"
    );
    assert!(
        seen.iter().any(|name| name == "quiet"),
        "quiet was not served: {seen:?}"
    );
    assert_eq!(handled, BUDGET as usize + 1);

    // The flood drains at the budget per round, the rest of its messages intact.
    let mut rounds = 1;
    let mut total = from_flood;
    while total < flooded as usize {
        let handled = server.poll_group(0, monotonic_nanos(), |_, reply| {
            let _ = reply.send(1, &[0u8; 16]);
        });
        assert!(handled <= BUDGET as usize);
        total += handled;
        rounds += 1;
        assert!(rounds < 10_000, "the flood never drained");
    }
    assert_eq!(total, flooded as usize);
}

#[test]
fn a_client_that_stops_reading_gets_full_replies_and_never_stalls_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, mut clients) = server_and_clients(dir.path(), &["deaf", "alive"]);
    let (deaf, alive) = clients.split_at_mut(1);
    let (deaf, alive) = (&mut deaf[0], &mut alive[0]);
    let mut echoes = 0u64;
    let mut sent_by_deaf = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    // The deaf client keeps sending and never pops; its replies fill its ring. The other client
    // keeps getting its echoes all along.
    while echoes < 500 {
        assert!(
            Instant::now() < deadline,
            "the group stalled at {echoes} echoes"
        );
        for _ in 0..4 {
            match deaf.send(1, &[1u8; 200]) {
                Ok(()) => sent_by_deaf += 1,
                Err(SendError::Full) => break,
                Err(error) => panic!("{error}"),
            }
        }
        alive.send(2, &echoes.to_le_bytes()).unwrap();
        let now = monotonic_nanos();
        server.poll_group(0, now, |request, reply| {
            let _ = reply.send(request.tag(), request.payload());
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match alive.front() {
                Ok(message) => {
                    assert_eq!(message.payload(), echoes.to_le_bytes());
                    break;
                }
                Err(RecvError::Empty) => {
                    assert!(Instant::now() < deadline, "echo {echoes} never came");
                    server.poll_group(0, monotonic_nanos(), |request, reply| {
                        let _ = reply.send(request.tag(), request.payload());
                    });
                }
                Err(error) => panic!("{error}"),
            }
        }
        alive.pop().unwrap();
        echoes += 1;
    }
    let stats = server.control().group_stats(0).unwrap();
    assert!(
        stats.replies_full > 0,
        "the deaf client's ring never filled"
    );
    let deaf_stats = server
        .group(0)
        .unwrap()
        .connections()
        .find(|(_, name, _)| name.as_str() == "deaf")
        .map(|(_, _, stats)| stats)
        .unwrap();
    // Every request was handled (popped), replies beyond the ring's room were refused.
    assert_eq!(deaf_stats.requests, sent_by_deaf);
    assert_eq!(deaf_stats.replies + deaf_stats.replies_full, sent_by_deaf);
    assert!(deaf_stats.replies_full > 0);
}
