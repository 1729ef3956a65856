//! Publish/subscribe through the server: subscriptions checked by the hub, shared-memory
//! subscribers reading the topic's journal directly, forwarded subscriptions over the
//! connection, lag reported with exact numbers, and resumption without loss or duplicates.

// The journal is not built under `--cfg loom`.
#![cfg(not(loom))]

use std::time::{Duration, Instant};

use shm_channel::journal::{JournalOptions, ReadFrom, Retention};
use shm_channel::monotonic_nanos;
use shm_server::pubsub::{
    LagPolicy, PubSubConfig, SubscriptionError, Subscriptions, TopicEvent, TopicHub, TopicReader,
};
use shm_server::{Client, ClientOptions, Decision, Server, ServerConfig};
use spsc_core::MessageReceiver;

const C: usize = 1 << 16;

fn server_and_clients(dir: &std::path::Path, names: &[&str]) -> (Server<C>, Vec<Client<C>>) {
    let config = ServerConfig::new("pubsub", dir)
        .unwrap()
        .groups(1, 8)
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
    let now = monotonic_nanos();
    server.poll_control(now);
    server.poll_group(0, now, |_, _| {});
    (server, clients)
}

fn hub(dir: &std::path::Path, page_size: u64, retention: Retention) -> (PubSubConfig, TopicHub) {
    let config = PubSubConfig::new(dir.join("topics")).journal(
        JournalOptions::new()
            .page_size(page_size)
            .retention(retention),
    );
    std::fs::create_dir_all(config.dir()).unwrap();
    let hub = TopicHub::new(
        config.clone(),
        Box::new(|request| {
            if request.topic.starts_with("secret") {
                Err(format!("{} may not read {}", request.client, request.topic))
            } else {
                Ok(())
            }
        }),
    );
    (config, hub)
}

fn payload(seq: u64) -> Vec<u8> {
    let len = (seq % 97) as usize + 8;
    let mut bytes: Vec<u8> = (0..len).map(|i| (seq as usize + i) as u8).collect();
    bytes[..8].copy_from_slice(&seq.to_le_bytes());
    bytes
}

/// Polls the server (hub first in the handler, then forwarding) and collects the client's
/// publish/subscribe events until `done` says so.
fn pump(
    server: &mut Server<C>,
    hub: &mut TopicHub,
    client: &mut Client<C>,
    subs: &mut Subscriptions,
    mut on_event: impl FnMut(TopicEvent<'_>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no progress");
        let now = monotonic_nanos();
        server.poll_group(0, now, |request, reply| {
            assert!(hub.handle(request, reply), "only pub/sub messages here");
        });
        hub.forward(server.group(0).unwrap(), now, 64);
        client.poll(now).unwrap();
        while let Ok(message) = client.front() {
            let event = subs
                .on_message(message.tag(), message.payload())
                .unwrap()
                .expect("a pub/sub message");
            let done = on_event(event);
            client.pop().unwrap();
            if done {
                return;
            }
        }
    }
}

#[test]
fn direct_and_forwarded_subscribers_see_every_frame_once_and_the_check_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, mut clients) = server_and_clients(dir.path(), &["reader", "remote"]);
    let (config, mut hub) = hub(dir.path(), 64 * 1024, Retention::KeepAll);
    let mut publisher = config.publisher("quotes").unwrap();
    for seq in 0..500 {
        publisher.append(1, seq * 10, &payload(seq)).unwrap();
    }

    // A direct subscriber: the hub answers with the folder; the client reads it itself.
    let mut direct = Subscriptions::new();
    let (reader_client, rest) = clients.split_at_mut(1);
    let sub = direct
        .subscribe(&mut reader_client[0], "quotes", ReadFrom::Oldest, false)
        .unwrap();
    let mut folder = None;
    pump(
        &mut server,
        &mut hub,
        &mut reader_client[0],
        &mut direct,
        |event| {
            match event {
                TopicEvent::Subscribed {
                    sub: s,
                    folder: f,
                    start_seq,
                } => {
                    assert_eq!((s, start_seq), (sub, 0));
                    folder = Some(f.to_string());
                }
                other => panic!("{other:?}"),
            }
            true
        },
    );
    let folder = std::path::PathBuf::from(folder.unwrap());
    assert_eq!(folder, config.dir().join("quotes"));
    let mut reader = TopicReader::open(
        config.dir(),
        "quotes",
        ReadFrom::Oldest,
        LagPolicy::Report,
        None,
    )
    .unwrap();
    for seq in 0..500 {
        let frame = reader.front().unwrap();
        assert_eq!((frame.seq(), frame.payload()), (seq, &payload(seq)[..]));
        reader.pop().unwrap();
    }
    assert!(matches!(reader.front(), Err(SubscriptionError::Empty)));

    // Refused by the application's check, with its reason.
    let refused = direct
        .subscribe(
            &mut reader_client[0],
            "secret-orders",
            ReadFrom::Oldest,
            false,
        )
        .unwrap();
    pump(
        &mut server,
        &mut hub,
        &mut reader_client[0],
        &mut direct,
        |event| {
            match event {
                TopicEvent::Refused { sub, reason } => {
                    assert_eq!(sub, refused);
                    assert!(reason.contains("may not read secret-orders"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
            true
        },
    );
    assert_eq!(hub.stats().refused, 1);

    // A forwarded subscriber from seq 100: every frame once, in order, then live ones.
    let remote = &mut rest[0];
    let mut forwarded = Subscriptions::new();
    let sub = forwarded
        .subscribe(remote, "quotes", ReadFrom::Seq(100), true)
        .unwrap();
    let mut next = 100;
    let mut published_more = false;
    pump(
        &mut server,
        &mut hub,
        remote,
        &mut forwarded,
        |event| match event {
            TopicEvent::Subscribed { start_seq, .. } => {
                assert_eq!(start_seq, 100);
                false
            }
            TopicEvent::Frame {
                sub: s,
                seq,
                time,
                payload: bytes,
                ..
            } => {
                assert_eq!((s, seq, time), (sub, next, next * 10));
                assert_eq!(bytes, &payload(seq)[..]);
                next += 1;
                if next == 500 && !published_more {
                    published_more = true;
                    for seq in 500..600 {
                        publisher.append(1, seq * 10, &payload(seq)).unwrap();
                    }
                }
                next == 600
            }
            other => panic!("{other:?}"),
        },
    );
    assert_eq!(hub.forwarded_subscriptions(), 1);
    assert_eq!(hub.stats().forwarded, 500);
}

#[test]
fn a_forwarded_subscriber_that_lags_is_told_exactly_what_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, mut clients) = server_and_clients(dir.path(), &["slow"]);
    let (config, mut hub) = hub(dir.path(), 64 * 1024, Retention::KeepPages(2));
    let mut publisher = config.publisher("ticks").unwrap();
    publisher.append(1, 0, &payload(0)).unwrap();
    let mut subs = Subscriptions::new();
    let client = &mut clients[0];
    subs.subscribe(client, "ticks", ReadFrom::Oldest, true)
        .unwrap();
    pump(&mut server, &mut hub, client, &mut subs, |event| {
        assert!(
            matches!(event, TopicEvent::Subscribed { start_seq: 0, .. }),
            "{event:?}"
        );
        true
    });
    // The hub has not forwarded anything yet (no forward call since); the topic rolls over many
    // pages and retention removes all but two.
    let mut seq = 1;
    while publisher.current_page() < 6 {
        publisher.append(1, seq, &payload(seq)).unwrap();
        seq += 1;
        publisher.maintain(seq).unwrap();
    }
    let oldest = {
        let mut probe = TopicReader::open(
            config.dir(),
            "ticks",
            ReadFrom::Oldest,
            LagPolicy::Report,
            None,
        )
        .unwrap();
        let frame = probe.front().unwrap();
        frame.seq()
    };
    assert!(oldest > 0);
    // The hub's reader still maps page 0: it forwards page 0 to its end, then reports the lag.
    let mut expected = 0;
    let mut lag_seen = false;
    pump(
        &mut server,
        &mut hub,
        client,
        &mut subs,
        |event| match event {
            TopicEvent::Frame {
                seq: s,
                payload: bytes,
                ..
            } => {
                assert_eq!(s, expected, "frames in order, no gap but the reported one");
                assert_eq!(bytes, &payload(s)[..]);
                expected += 1;
                expected == seq
            }
            TopicEvent::Lagged {
                missed, resume_at, ..
            } => {
                assert!(!lag_seen);
                lag_seen = true;
                assert_eq!(resume_at, oldest);
                assert_eq!(missed, oldest - expected);
                expected = resume_at;
                false
            }
            other => panic!("{other:?}"),
        },
    );
    assert!(lag_seen);
    assert_eq!(hub.stats().lagged, 1);
}

/// The fault-injecting proxy of shm-tcp's tests (std only), shared by path.
#[path = "../../shm-tcp/tests/common/proxy.rs"]
mod proxy;

mod over_tcp {
    use super::*;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use shm_tcp::{AcceptorOptions, Connection, ConnectionOptions};

    fn tcp_options(dir: &Path) -> ConnectionOptions {
        ConnectionOptions::new()
            .dir(dir)
            .heartbeat_interval_ns(20_000_000)
            .peer_timeout_ns(2_000_000_000)
            .reconnect_backoff_ns(1_000_000, 20_000_000)
    }

    fn connect(addr: std::net::SocketAddr, dir: &Path) -> Connection<C> {
        let state = dir.join("client-state");
        std::fs::create_dir_all(&state).unwrap();
        let mut conn = Connection::<C>::client(addr, "far", "hub", &tcp_options(&state)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !conn.is_connected() {
            assert!(Instant::now() < deadline, "never connected");
            let _ = conn.poll(monotonic_nanos());
            std::thread::yield_now();
        }
        conn
    }

    /// A server with TCP on (one group), a hub over a 64 KiB-page topic `md` kept whole, and its
    /// publisher, for the remote-subscriber tests.
    struct TcpHub {
        dir: tempfile::TempDir,
        server: Server<C>,
        hub: TopicHub,
        publisher: shm_channel::journal::JournalWriter,
    }

    impl TcpHub {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join("server-tcp");
            std::fs::create_dir_all(&state).unwrap();
            let config = ServerConfig::new("hub", dir.path().join("srv"))
                .unwrap()
                .groups(1, 8)
                .tcp(AcceptorOptions::new(tcp_options(&state)));
            let server = Server::<C>::new(config, |_| Decision::Accept { group: 0 }).unwrap();
            let (pubsub, hub) = hub(dir.path(), 64 * 1024, Retention::KeepAll);
            let publisher = pubsub.publisher("md").unwrap();
            Self {
                dir,
                server,
                hub,
                publisher,
            }
        }

        fn addr(&mut self) -> std::net::SocketAddr {
            self.server.control().tcp_addr().unwrap()
        }

        /// Publishes `frames` frames (`per_pass` per pass of the loop, `maintain` every
        /// `maintain_every` frames) while serving the group and forwarding, until `done`.
        fn serve_until(
            &mut self,
            done: &AtomicBool,
            frames: u64,
            per_pass: u64,
            maintain_every: u64,
            timeout: Duration,
        ) {
            let deadline = Instant::now() + timeout;
            let mut published = 0;
            while !done.load(Ordering::Acquire) {
                assert!(Instant::now() < deadline, "the subscriber did not finish");
                let now = monotonic_nanos();
                if published < frames {
                    for _ in 0..per_pass {
                        let seq = published;
                        self.publisher.append(1, seq, &payload(seq)).unwrap();
                        published += 1;
                    }
                    if published % maintain_every == 0 {
                        self.publisher.maintain(now).unwrap();
                    }
                }
                self.server.poll_control(now);
                let hub = &mut self.hub;
                self.server.poll_group(0, now, |request, reply| {
                    assert!(hub.handle(request, reply));
                });
                hub.forward(self.server.group(0).unwrap(), now, 32);
            }
        }
    }

    /// A remote subscriber whose TCP connection is dropped and made again four times while the
    /// topic is published: after each reconnect it re-subscribes from the frame after the last
    /// one it handed out, and sees every frame exactly once, in order, intact.
    #[test]
    fn a_remote_subscriber_survives_reconnects_without_loss_or_duplicates() {
        const FRAMES: u64 = 3000;
        let mut tcp = TcpHub::new();
        let addr = tcp.addr();
        let done = Arc::new(AtomicBool::new(false));
        let client_dir = tcp.dir.path().to_path_buf();
        let client = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut subs = Subscriptions::new();
                let mut next = 0u64;
                let mut duplicates = 0u64;
                let deadline = Instant::now() + Duration::from_secs(60);
                for round in 0..5u64 {
                    let mut conn = connect(addr, &client_dir);
                    if round == 0 {
                        subs.subscribe(&mut conn, "md", ReadFrom::Oldest, true)
                            .unwrap();
                    } else {
                        subs.resubscribe(&mut conn).unwrap();
                    }
                    let until = if round == 4 {
                        FRAMES
                    } else {
                        (round + 1) * FRAMES / 5
                    };
                    while next < until {
                        assert!(Instant::now() < deadline, "frame {next} never came");
                        let _ = conn.poll(monotonic_nanos());
                        let Ok(message) = conn.front() else {
                            std::thread::yield_now();
                            continue;
                        };
                        match subs.on_message(message.tag(), message.payload()).unwrap() {
                            Some(TopicEvent::Frame {
                                seq,
                                time,
                                payload: bytes,
                                ..
                            }) => {
                                assert_eq!(seq, next, "round {round}");
                                assert_eq!(time, seq);
                                assert_eq!(bytes, &payload(seq)[..]);
                                next += 1;
                            }
                            Some(TopicEvent::Duplicate { seq, .. }) => {
                                assert!(seq < next);
                                duplicates += 1;
                            }
                            Some(TopicEvent::Subscribed { .. }) => {}
                            other => panic!("{other:?}"),
                        }
                        conn.pop().unwrap();
                    }
                    // Drop the link with frames surely in flight.
                    drop(conn);
                }
                done.store(true, Ordering::Release);
                duplicates
            })
        };
        tcp.serve_until(&done, FRAMES, 4, 4, Duration::from_secs(90));
        let duplicates = client.join().unwrap();
        println!("duplicates dropped after re-subscriptions: {duplicates}");
        // One subscription, bound to the session, through every reconnect.
        assert_eq!(
            tcp.hub.forwarded_subscriptions(),
            1,
            "{:?}",
            tcp.hub.stats()
        );
        assert_eq!(tcp.hub.stats().dropped, 0, "{:?}", tcp.hub.stats());
    }

    /// A remote subscriber whose link goes through a proxy that cuts every connection after a
    /// random 4–96 KiB in either direction (mid-frame, mid-hello, mid-resend): the server's
    /// subscription survives each reconnect, and the subscriber sees every frame exactly once,
    /// in order, intact.
    #[test]
    fn a_remote_subscriber_survives_cuts_mid_frame_without_loss_or_duplicates() {
        const FRAMES: u64 = 20_000;
        let mut tcp = TcpHub::new();
        let target = tcp.addr();
        let cuts = super::proxy::Proxy::start(
            target,
            super::proxy::FaultPlan::cut_after(4 * 1024, 96 * 1024),
            0x5eed_0015,
        );
        let addr = cuts.addr();
        let done = Arc::new(AtomicBool::new(false));
        let client_dir = tcp.dir.path().to_path_buf();
        let client = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let state = client_dir.join("client-state");
                std::fs::create_dir_all(&state).unwrap();
                let mut conn =
                    Connection::<C>::client(addr, "far", "hub", &tcp_options(&state)).unwrap();
                let mut subs = Subscriptions::new();
                let mut handshakes = 0;
                let mut resubscribe = false;
                let (mut next, mut duplicates) = (0u64, 0u64);
                let deadline = Instant::now() + Duration::from_secs(120);
                while next < FRAMES {
                    assert!(Instant::now() < deadline, "frame {next} never came");
                    let _ = conn.poll(monotonic_nanos());
                    if conn.stats().handshakes != handshakes && conn.is_connected() {
                        handshakes = conn.stats().handshakes;
                        if handshakes == 1 {
                            subs.subscribe(&mut conn, "md", ReadFrom::Oldest, true)
                                .unwrap();
                        } else {
                            // Idempotent: the server's subscription goes on where it is; this
                            // only matters if the server lost it (a restart).
                            resubscribe = true;
                        }
                    }
                    if resubscribe {
                        match subs.resubscribe(&mut conn) {
                            Ok(()) => resubscribe = false,
                            Err(spsc_core::SendError::Full) => {}
                            Err(error) => panic!("{error}"),
                        }
                    }
                    let Ok(message) = conn.front() else {
                        std::thread::yield_now();
                        continue;
                    };
                    match subs.on_message(message.tag(), message.payload()).unwrap() {
                        Some(TopicEvent::Frame {
                            seq,
                            time,
                            payload: bytes,
                            ..
                        }) => {
                            assert_eq!(seq, next, "after {handshakes} handshakes");
                            assert_eq!(time, seq);
                            assert_eq!(bytes, &payload(seq)[..]);
                            next += 1;
                        }
                        Some(TopicEvent::Duplicate { seq, .. }) => {
                            assert!(seq < next);
                            duplicates += 1;
                        }
                        Some(TopicEvent::Subscribed { .. }) => {}
                        other => panic!("{other:?}"),
                    }
                    conn.pop().unwrap();
                }
                done.store(true, Ordering::Release);
                (handshakes, duplicates)
            })
        };
        tcp.serve_until(&done, FRAMES, 1, 256, Duration::from_secs(150));
        let (handshakes, duplicates) = client.join().unwrap();
        println!(
            "{handshakes} handshakes through {} cut connections; {duplicates} duplicates dropped",
            cuts.stats().cuts
        );
        assert!(
            handshakes > 5,
            "the proxy cut the link only {handshakes} times"
        );
    }

    /// A remote subscriber "restarts" (its connection and its subscriptions dropped, as a killed
    /// process loses them) three times, and subscribes again from the position it kept after
    /// its last pop: every frame exactly once, in order; what the server's queue still held is
    /// reported as duplicates.
    #[test]
    fn a_restarted_remote_subscriber_resumes_from_its_own_position() {
        const FRAMES: u64 = 4000;
        let mut tcp = TcpHub::new();
        let addr = tcp.addr();
        let done = Arc::new(AtomicBool::new(false));
        let client_dir = tcp.dir.path().to_path_buf();
        let client = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                // What the process persists: the next frame it needs.
                let mut kept = 0u64;
                let mut duplicates = 0u64;
                let deadline = Instant::now() + Duration::from_secs(60);
                for life in 0..4u64 {
                    let mut conn = connect(addr, &client_dir);
                    let mut subs = Subscriptions::new();
                    subs.subscribe(&mut conn, "md", ReadFrom::Seq(kept), true)
                        .unwrap();
                    let until = if life == 3 {
                        FRAMES
                    } else {
                        (life + 1) * FRAMES / 4
                    };
                    while kept < until {
                        assert!(Instant::now() < deadline, "frame {kept} never came");
                        let _ = conn.poll(monotonic_nanos());
                        let Ok(message) = conn.front() else {
                            std::thread::yield_now();
                            continue;
                        };
                        match subs.on_message(message.tag(), message.payload()).unwrap() {
                            Some(TopicEvent::Frame {
                                seq,
                                payload: bytes,
                                ..
                            }) => {
                                assert_eq!(seq, kept, "life {life}");
                                assert_eq!(bytes, &payload(seq)[..]);
                                kept = seq + 1;
                            }
                            Some(TopicEvent::Duplicate { seq, .. }) => {
                                assert!(seq < kept);
                                duplicates += 1;
                            }
                            // Frames the server's queue still held may come first.
                            Some(TopicEvent::Subscribed { start_seq, .. }) => {
                                assert!(start_seq <= kept);
                            }
                            other => panic!("{other:?}"),
                        }
                        conn.pop().unwrap();
                    }
                    // "Killed": everything in memory is gone, the pops are kept.
                    drop(subs);
                    drop(conn);
                }
                done.store(true, Ordering::Release);
                duplicates
            })
        };
        tcp.serve_until(&done, FRAMES, 4, 4, Duration::from_secs(90));
        let duplicates = client.join().unwrap();
        println!("duplicates after restarts: {duplicates}");
        assert_eq!(
            tcp.hub.forwarded_subscriptions(),
            1,
            "{:?}",
            tcp.hub.stats()
        );
    }
}

#[test]
fn with_lag_policy_unsubscribe_a_laggard_is_told_and_its_subscription_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, mut clients) = server_and_clients(dir.path(), &["late"]);
    let config = PubSubConfig::new(dir.path().join("topics"))
        .journal(
            JournalOptions::new()
                .page_size(64 * 1024)
                .retention(Retention::KeepPages(2)),
        )
        .lag_policy(LagPolicy::Unsubscribe);
    std::fs::create_dir_all(config.dir()).unwrap();
    let mut hub = TopicHub::new(config.clone(), Box::new(|_| Ok(())));
    let mut publisher = config.publisher("t").unwrap();
    publisher.append(1, 0, &payload(0)).unwrap();
    // A direct reader with the same policy.
    let mut direct = TopicReader::open(
        config.dir(),
        "t",
        ReadFrom::Oldest,
        LagPolicy::Unsubscribe,
        None,
    )
    .unwrap();
    let mut subs = Subscriptions::new();
    let client = &mut clients[0];
    let sub = subs.subscribe(client, "t", ReadFrom::Oldest, true).unwrap();
    pump(&mut server, &mut hub, client, &mut subs, |event| {
        assert!(matches!(event, TopicEvent::Subscribed { .. }), "{event:?}");
        true
    });
    let mut seq = 1;
    while publisher.current_page() < 5 {
        publisher.append(1, seq, &payload(seq)).unwrap();
        seq += 1;
        publisher.maintain(seq).unwrap();
    }
    let mut lagged = false;
    pump(
        &mut server,
        &mut hub,
        client,
        &mut subs,
        |event| match event {
            TopicEvent::Frame { .. } => false,
            TopicEvent::Lagged { missed, .. } => {
                assert!(missed > 0);
                lagged = true;
                false
            }
            TopicEvent::Refused { sub: s, reason } => {
                assert_eq!(s, sub);
                assert!(reason.contains("retention"), "{reason}");
                true
            }
            other => panic!("{other:?}"),
        },
    );
    assert!(lagged);
    assert_eq!(hub.forwarded_subscriptions(), 0);
    assert_eq!(subs.next_seq(sub), None, "the client dropped it too");
    // The direct reader: frames of its mapped page, then Ended, for good.
    let ended = loop {
        match direct.front() {
            Ok(_) => direct.pop().unwrap(),
            Err(SubscriptionError::Ended { missed, .. }) => break missed,
            Err(error) => panic!("{error}"),
        }
    };
    assert!(ended > 0);
    assert!(matches!(
        direct.front(),
        Err(SubscriptionError::Ended { .. })
    ));
}

/// Every refusal of the hub reaches the client with its reason: a malformed request, an unknown
/// reserved tag, an invalid topic name, a topic that does not exist, a full forwarding table.
#[test]
fn bad_subscribe_requests_are_refused_with_a_reason() {
    use shm_server::pubsub::wire::{TAG_SUBSCRIBE, TAG_UNSUBSCRIBE};
    use spsc_core::MessageSender;
    let dir = tempfile::tempdir().unwrap();
    let (mut server, mut clients) = server_and_clients(dir.path(), &["bad"]);
    let config = PubSubConfig::new(dir.path().join("topics")).max_forwarded(1);
    std::fs::create_dir_all(config.dir()).unwrap();
    let mut hub = TopicHub::new(config.clone(), Box::new(|_| Ok(())));
    let _publisher = config.publisher("one").unwrap();
    let client = &mut clients[0];
    let mut subs = Subscriptions::new();
    let mut expect_refusal = |client: &mut Client<C>, subs: &mut Subscriptions, words: &str| {
        let mut seen = false;
        pump(&mut server, &mut hub, client, subs, |event| match event {
            TopicEvent::Refused { reason, .. } => {
                assert!(reason.contains(words), "{reason:?} lacks {words:?}");
                seen = true;
                true
            }
            other => panic!("{other:?}"),
        });
        assert!(seen);
    };
    client.send(TAG_SUBSCRIBE, &[1, 2, 3]).unwrap();
    expect_refusal(client, &mut subs, "shorter than its header");
    client.send(0xFF77, b"?").unwrap();
    expect_refusal(client, &mut subs, "unknown publish/subscribe request tag");
    subs.subscribe(client, "../etc", ReadFrom::Oldest, true)
        .unwrap();
    expect_refusal(client, &mut subs, "topic name");
    subs.subscribe(client, "none", ReadFrom::Oldest, true)
        .unwrap();
    expect_refusal(client, &mut subs, "none");
    let first = subs
        .subscribe(client, "one", ReadFrom::Oldest, true)
        .unwrap();
    pump(&mut server, &mut hub, client, &mut subs, |event| {
        assert!(matches!(event, TopicEvent::Subscribed { .. }), "{event:?}");
        true
    });
    let mut expect_refusal = |client: &mut Client<C>, subs: &mut Subscriptions, words: &str| {
        pump(&mut server, &mut hub, client, subs, |event| match event {
            TopicEvent::Refused { reason, .. } => {
                assert!(reason.contains(words), "{reason:?} lacks {words:?}");
                true
            }
            other => panic!("{other:?}"),
        });
    };
    subs.subscribe(client, "one", ReadFrom::Oldest, true)
        .unwrap();
    expect_refusal(client, &mut subs, "as many subscriptions as it can");
    // Unsubscribing frees the place.
    subs.unsubscribe(client, first).unwrap();
    client.send(TAG_UNSUBSCRIBE, &[0]).unwrap(); // too short: ignored, nothing answered
    subs.subscribe(client, "one", ReadFrom::Oldest, true)
        .unwrap();
    pump(&mut server, &mut hub, client, &mut subs, |event| {
        assert!(matches!(event, TopicEvent::Subscribed { .. }), "{event:?}");
        true
    });
    assert_eq!(hub.stats().refused, 5);
    assert_eq!(hub.forwarded_subscriptions(), 1);
}
