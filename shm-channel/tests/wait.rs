//! Waiting strategies, the futex park/wake protocol, timeouts and peer liveness
//! (`src/wait.rs`, `Receiver::recv_wait`).
//!
//! Timings are never asserted as performance: a timeout must not end a wait early, and a dead
//! peer must be noticed within a generous multiple of the configured interval (a noisy 2-core
//! machine may deschedule us for a while), which distinguishes "bounded" from "for ever".

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shm_channel::{
    monotonic_nanos, Channel, ChannelOptions, Direction, End, Receiver, Sender, WaitOptions,
    WaitStats, WaitStrategy,
};
use spsc_core::{MessageReceiver, MessageSender, RecvError, SendError};

type Chan = Channel<4096>;

fn options(dir: &tempfile::TempDir) -> ChannelOptions {
    ChannelOptions::new().dir(dir.path())
}

const BLOCK: WaitStrategy = WaitStrategy::Block { spin_first: 64 };

/// Runs this test binary's ignored test `role` as a child process, with `env` set.
fn child(role: &str, env: &[(&str, String)]) -> Child {
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
    command.spawn().unwrap()
}

fn child_env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} not set: run only as a child role"))
}

/// Receives until the wait fails; returns the messages' first bytes and the error.
fn drain(rx: &mut Receiver<4096>, wait: &WaitOptions) -> (Vec<u8>, RecvError) {
    let mut got = Vec::new();
    loop {
        match rx.recv_wait(wait) {
            Ok(message) => {
                got.push(message.payload()[0]);
                rx.pop().unwrap();
            }
            Err(error) => return (got, error),
        }
    }
}

#[test]
fn blocked_receivers_are_always_woken() {
    // 100k one-message exchanges A→B→A, both receivers blocking. The sender sometimes sleeps
    // before sending, so the receiver has parked on the futex by then. A lost wake-up would leave
    // a receiver asleep: its sleep is bounded only by the 10 s timeout (the liveness interval is
    // longer), which then fails the exchange.
    const ROUNDS: u32 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let mut a = Chan::create_or_open("wake", End::A, &options(&dir)).unwrap();
    let mut b = Chan::create_or_open("wake", End::B, &options(&dir)).unwrap();
    let wait = WaitOptions::new(BLOCK)
        .timeout(Duration::from_secs(10))
        .liveness_check(Duration::from_secs(60));
    let pinger = std::thread::spawn(move || {
        for i in 0..ROUNDS {
            if i % 4 == 0 {
                std::thread::sleep(Duration::from_micros(5));
            }
            a.sender().send(1, &i.to_le_bytes()).unwrap();
            let reply = a
                .receiver()
                .recv_wait(&wait)
                .unwrap_or_else(|e| panic!("no reply to exchange {i}: {e}"));
            assert_eq!(reply.payload(), i.to_le_bytes());
            a.receiver().pop().unwrap();
        }
        a
    });
    for i in 0..ROUNDS {
        let request = b
            .receiver()
            .recv_wait(&wait)
            .unwrap_or_else(|e| panic!("no request {i}: {e}"));
        assert_eq!(request.payload(), i.to_le_bytes());
        b.receiver().pop().unwrap();
        if i % 4 == 2 {
            std::thread::sleep(Duration::from_micros(5));
        }
        b.sender().send(2, &i.to_le_bytes()).unwrap();
    }
    let a = pinger.join().unwrap();
    for direction in [Direction::AToB, Direction::BToA] {
        let stats = a.header().wait_stats(direction);
        // The exchange really blocked: receivers parked and senders woke them...
        assert!(stats.parks > 0 && stats.wakes > 0, "{direction}: {stats:?}");
        // ...and a sender called futex_wake only for a receiver that had announced itself.
        assert!(stats.wakes <= stats.parks, "{direction}: {stats:?}");
        assert!(
            stats.armed,
            "{direction}: a blocking receiver keeps its sender fencing"
        );
    }
    assert_eq!(
        a.stats(Direction::AToB).received_messages,
        u64::from(ROUNDS)
    );
    assert_eq!(
        a.stats(Direction::BToA).received_messages,
        u64::from(ROUNDS)
    );
}

#[test]
fn a_sender_makes_no_syscall_unless_the_receiver_sleeps() {
    let dir = tempfile::tempdir().unwrap();
    let a = Chan::create_or_open("quiet", End::A, &options(&dir)).unwrap();
    let b = Chan::create_or_open("quiet", End::B, &options(&dir)).unwrap();
    let stats = |tx: &Sender<4096>| tx.header().wait_stats(Direction::AToB);
    let (mut tx, _a_rx) = a.split();
    let (_b_tx, mut rx) = b.split();
    const MESSAGES: u32 = 100_000;

    // A receiver that never blocks: the sender never even fences, let alone wakes.
    let stream = |tx: &mut Sender<4096>, rx: Receiver<4096>, wait| {
        let receiver = std::thread::spawn(move || {
            let mut rx = rx;
            for i in 0..MESSAGES {
                let message = rx.recv_wait(&wait).unwrap();
                assert_eq!(message.payload(), i.to_le_bytes());
                rx.pop().unwrap();
            }
            rx
        });
        for i in 0..MESSAGES {
            while tx.send(1, &i.to_le_bytes()).is_err() {
                std::thread::yield_now();
            }
        }
        receiver.join().unwrap()
    };
    let poll = WaitOptions::new(WaitStrategy::SpinThenYield { spins: 100 });
    rx = stream(&mut tx, rx, poll);
    assert_eq!(
        stats(&tx),
        WaitStats {
            wakes: 0,
            parks: 0,
            armed: false,
            sleeping: false
        }
    );

    // Once the receiver has blocked, the sender fences after each push but makes a syscall only
    // when the receiver has announced itself: here it never does, as it is not waiting.
    let block = WaitOptions::new(WaitStrategy::Block { spin_first: 0 }).timeout(Duration::ZERO);
    assert_eq!(rx.recv_wait(&block).unwrap_err(), RecvError::TimedOut);
    let short =
        WaitOptions::new(WaitStrategy::Block { spin_first: 0 }).timeout(Duration::from_millis(1));
    assert_eq!(rx.recv_wait(&short).unwrap_err(), RecvError::TimedOut);
    let armed = stats(&tx);
    assert!(
        armed.armed && armed.parks > 0 && !armed.sleeping,
        "{armed:?}"
    );
    for i in 0..1000u32 {
        tx.send(1, &i.to_le_bytes()).unwrap();
        rx.pop().unwrap();
    }
    assert_eq!(stats(&tx).wakes, armed.wakes);

    // Disarming (or dropping the receiver) puts the sender back on its fence-free path.
    rx.disarm_blocking();
    assert!(!stats(&tx).armed);
    rx.recv_wait(&short).unwrap_err();
    assert!(stats(&tx).armed);
    drop(rx);
    assert!(!stats(&tx).armed);
}

#[test]
fn timeouts_report_empty_and_never_end_early() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Chan::create_or_open("timeout", End::A, &options(&dir)).unwrap();
    let mut b = Chan::create_or_open("timeout", End::B, &options(&dir)).unwrap();
    let timeout = Duration::from_millis(50);
    for strategy in [
        WaitStrategy::BusyPoll,
        WaitStrategy::SpinThenYield { spins: 100 },
        WaitStrategy::Block { spin_first: 100 },
    ] {
        let wait = WaitOptions::new(strategy)
            .timeout(timeout)
            .liveness_check(Duration::from_millis(10));
        let start = Instant::now();
        assert_eq!(
            b.receiver().recv_wait(&wait).unwrap_err(),
            RecvError::TimedOut,
            "{strategy:?}: the peer is alive, so the timeout ends the wait"
        );
        let waited = start.elapsed();
        assert!(waited >= timeout, "{strategy:?} ended early: {waited:?}");
        assert!(
            waited < timeout * 40,
            "{strategy:?} overran its timeout: {waited:?}"
        );
        // A message already there is returned at once, whatever the strategy.
        a.sender().send(5, b"here").unwrap();
        assert_eq!(b.receiver().recv_wait(&wait).unwrap().payload(), b"here");
        b.receiver().pop().unwrap();
    }
    // A zero timeout polls once, without sleeping.
    let parks = b.header().wait_stats(Direction::AToB).parks;
    let poll = WaitOptions::new(BLOCK).timeout(Duration::ZERO);
    assert_eq!(
        b.receiver().recv_wait(&poll).unwrap_err(),
        RecvError::TimedOut
    );
    assert_eq!(b.header().wait_stats(Direction::AToB).parks, parks);
}

#[test]
fn a_peer_that_never_attached_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Chan::create_or_open("lonely", End::A, &options(&dir)).unwrap();
    let wait = WaitOptions::new(BLOCK)
        .timeout(Duration::from_millis(100))
        .liveness_check(Duration::from_millis(10));
    assert!(!a.peer_alive());
    assert_eq!(
        a.receiver().recv_wait(&wait).unwrap_err(),
        RecvError::TimedOut
    );
}

#[test]
fn a_dropped_sender_disconnects_after_its_messages() {
    let dir = tempfile::tempdir().unwrap();
    let a = Chan::create_or_open("dropped", End::A, &options(&dir)).unwrap();
    let mut b = Chan::create_or_open("dropped", End::B, &options(&dir)).unwrap();
    let (mut tx, a_rx) = a.split();
    for i in 0..3u8 {
        tx.send(1, &[i]).unwrap();
    }
    drop(tx);
    let wait = WaitOptions::new(BLOCK).liveness_check(Duration::from_millis(10));
    // Pop is the commit: everything sent is delivered before the disconnection shows.
    assert_eq!(
        drain(b.receiver(), &wait),
        (vec![0, 1, 2], RecvError::Disconnected)
    );
    drop(a_rx);
}

#[test]
fn a_stale_heartbeat_counts_as_gone_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let a = Chan::create_or_open("beat", End::A, &options(&dir)).unwrap();
    let mut b = Chan::create_or_open("beat", End::B, &options(&dir)).unwrap();
    assert_eq!(b.peer_heartbeat_age(monotonic_nanos()), None);
    let check = |limit| {
        WaitOptions::new(BLOCK)
            .timeout(Duration::from_millis(200))
            .liveness_check(Duration::from_millis(10))
            .heartbeat_limit(limit)
    };

    // A heartbeat a second old.
    a.heartbeat(monotonic_nanos() - 1_000_000_000);
    let age = b.peer_heartbeat_age(monotonic_nanos()).unwrap();
    assert!(age >= 1_000_000_000, "{age}");
    assert_eq!(
        b.receiver()
            .recv_wait(&check(Duration::from_millis(100)))
            .unwrap_err(),
        RecvError::Disconnected
    );
    // Without a limit, or with a larger one, the living peer is waited for.
    let no_limit = WaitOptions::new(BLOCK)
        .timeout(Duration::from_millis(50))
        .liveness_check(Duration::from_millis(10));
    assert_eq!(
        b.receiver().recv_wait(&no_limit).unwrap_err(),
        RecvError::TimedOut
    );
    assert_eq!(
        b.receiver()
            .recv_wait(&check(Duration::from_secs(60)))
            .unwrap_err(),
        RecvError::TimedOut
    );
    // A fresh heartbeat passes the check.
    a.heartbeat(monotonic_nanos());
    assert_eq!(
        b.receiver()
            .recv_wait(&check(Duration::from_secs(5)))
            .unwrap_err(),
        RecvError::TimedOut
    );
}

/// Child role: opens end B, sends `SHM_COUNT` messages (first byte = index), then either exits
/// without detaching (`SHM_THEN=exit`), detaches cleanly (`detach`), or waits to be killed
/// (`linger`).
#[test]
#[ignore = "child role of the dead-peer tests"]
fn role_send_then() {
    // Dies with the test process, whatever happens to it.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)).unwrap();
    let options = ChannelOptions::new().dir(child_env("SHM_DIR"));
    let mut b = Chan::open(&child_env("SHM_NAME"), End::B, &options).unwrap();
    let count: u8 = child_env("SHM_COUNT").parse().unwrap();
    for i in 0..count {
        b.sender().send(1, &[i]).unwrap();
    }
    match child_env("SHM_THEN").as_str() {
        "exit" => {
            std::mem::forget(b);
            std::process::exit(0);
        }
        "detach" => drop(b),
        "linger" => loop {
            std::thread::sleep(Duration::from_secs(1));
        },
        other => panic!("unknown SHM_THEN {other}"),
    }
}

fn spawn_sender(dir: &tempfile::TempDir, name: &str, count: u8, then: &str) -> Child {
    child(
        "role_send_then",
        &[
            ("SHM_DIR", dir.path().display().to_string()),
            ("SHM_NAME", name.into()),
            ("SHM_COUNT", count.to_string()),
            ("SHM_THEN", then.into()),
        ],
    )
}

#[test]
fn a_sender_that_exited_disconnects_after_its_messages() {
    let dir = tempfile::tempdir().unwrap();
    for then in ["exit", "detach"] {
        let name = format!("exited-{then}");
        let mut a = Chan::create(&name, End::A, &options(&dir)).unwrap();
        let mut process = spawn_sender(&dir, &name, 5, then);
        assert!(process.wait().unwrap().success());
        let wait = WaitOptions::new(BLOCK)
            .timeout(Duration::from_secs(30))
            .liveness_check(Duration::from_millis(20));
        assert_eq!(
            drain(a.receiver(), &wait),
            ((0..5).collect(), RecvError::Disconnected),
            "{then}"
        );
        assert!(!a.peer_alive());
    }
}

#[test]
fn a_blocked_receiver_notices_a_killed_sender() {
    let dir = tempfile::tempdir().unwrap();
    let a = Chan::create("killed", End::A, &options(&dir)).unwrap();
    let received_count = Arc::new(AtomicU32::new(0));
    let mut process = spawn_sender(&dir, "killed", 3, "linger");
    let liveness = Duration::from_millis(100);
    let wait = WaitOptions::new(BLOCK)
        .timeout(Duration::from_secs(60))
        .liveness_check(liveness);
    // The sender half stays here: its header shows the receiver's wait words.
    let (tx, mut rx) = a.split();
    let received = received_count.clone();
    let killed = Arc::new(AtomicBool::new(false));
    let killed_seen = killed.clone();
    let receiver = std::thread::spawn(move || {
        let mut got = Vec::new();
        let error = loop {
            match rx.recv_wait(&wait) {
                Ok(message) => {
                    got.push(message.payload()[0]);
                    rx.pop().unwrap();
                    received.fetch_add(1, Ordering::Release);
                }
                Err(error) => break error,
            }
        };
        let ended = Instant::now();
        // It must have been blocked until the kill, not have given up before.
        assert!(
            killed_seen.load(Ordering::Acquire),
            "wait ended before the kill: {error}"
        );
        (got, error, ended, rx)
    });
    // Once the receiver has the three messages and is asleep on the futex, kill the sender.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = tx.header().wait_stats(Direction::BToA);
        if received_count.load(Ordering::Acquire) == 3 && stats.sleeping {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "receiver never parked: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid = rustix::process::Pid::from_raw(process.id() as i32).unwrap();
    killed.store(true, Ordering::Release);
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    // Reap it (liveness reads an unreaped zombie as dead too; reaping is good manners).
    process.wait().unwrap();
    let reaped = Instant::now();
    let (got, error, ended, rx) = receiver.join().unwrap();
    assert_eq!(got, vec![0, 1, 2]);
    assert_eq!(error, RecvError::Disconnected);
    let noticed = ended.saturating_duration_since(reaped);
    assert!(
        noticed < liveness * 30,
        "a dead sender was noticed only after {noticed:?} (liveness interval {liveness:?})"
    );
    drop(rx);
}

// -------------------------------------------------------------------------------------------
// A sender waiting for room (`Sender::alloc_wait`).

/// Fills A→B with `len`-byte messages numbered from 0 until the ring is full; returns how many.
fn fill(tx: &mut Sender<4096>, len: usize) -> u32 {
    let mut count = 0u32;
    while tx.send(1, &vec![count as u8; len]).is_ok() {
        count += 1;
    }
    count
}

#[test]
fn a_sender_blocked_on_a_full_ring_is_woken_by_pops() {
    // The sender keeps the ring full and sleeps on the futex whenever it is; the receiver pops
    // slowly at first (so the sender has parked), then as fast as it can. A lost wake-up would
    // leave the sender asleep until its 10 s timeout, which then fails the send.
    const EXTRA: u32 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let mut a = Chan::create_or_open("room", End::A, &options(&dir)).unwrap();
    let mut b = Chan::create_or_open("room", End::B, &options(&dir)).unwrap();
    let queued = fill(a.sender(), 500);
    assert!(queued > 1, "a 4 KiB ring holds several 500-byte messages");
    let wait = WaitOptions::new(BLOCK)
        .timeout(Duration::from_secs(10))
        .liveness_check(Duration::from_secs(60));
    let receiver = std::thread::spawn(move || {
        let rx = b.receiver();
        // Pop only once the sender has announced itself as a sleeper, so the wake path runs.
        let deadline = Instant::now() + Duration::from_secs(10);
        while rx.header().space_wait_stats(Direction::AToB).parks == 0 {
            assert!(Instant::now() < deadline, "the sender never parked");
            std::thread::sleep(Duration::from_millis(1));
        }
        let wait = WaitOptions::new(BLOCK).timeout(Duration::from_secs(10));
        for expected in 0..queued + EXTRA {
            let message = rx.recv_wait(&wait).expect("every message arrives");
            assert_eq!(message.payload()[0], expected as u8, "in order, none lost");
            assert_eq!(message.len(), 500);
            rx.pop().unwrap();
            if expected < 64 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        b
    });
    for number in queued..queued + EXTRA {
        a.sender()
            .send_wait(1, &[number as u8; 500], &wait)
            .expect("room is made within the timeout");
    }
    let b = receiver.join().unwrap();
    let stats = b.header().space_wait_stats(Direction::AToB);
    // Once the sender has seen its epoch acknowledged it sleeps until woken, and the slow pops
    // find it asleep: without the receiver's wake it would only ever poll.
    assert!(stats.wakes > 0, "the receiver woke the sender: {stats:?}");
    assert!(
        stats.wakes <= stats.parks,
        "one wake per announcement at most"
    );
    assert!(
        stats.armed,
        "the sender is still armed until dropped or disarmed"
    );
    a.sender().disarm_blocking();
    let stats = b.header().space_wait_stats(Direction::AToB);
    assert!(!stats.armed);
    let counters = b.header().stats(Direction::AToB);
    assert!(
        counters.full_rejections > 0,
        "waits on a full ring are counted"
    );
}

#[test]
fn a_full_ring_without_pops_times_out_as_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Chan::create_or_open("room-timeout", End::A, &options(&dir)).unwrap();
    let _b = Chan::create_or_open("room-timeout", End::B, &options(&dir)).unwrap();
    fill(a.sender(), 1000);
    for strategy in [
        WaitStrategy::BusyPoll,
        WaitStrategy::SpinThenYield { spins: 10 },
        BLOCK,
    ] {
        let wait = WaitOptions::new(strategy).timeout(Duration::from_millis(20));
        let started = Instant::now();
        assert_eq!(
            a.sender().send_wait(1, &[0; 1000], &wait),
            Err(SendError::Full)
        );
        assert!(
            started.elapsed() >= Duration::from_millis(20),
            "{strategy:?} gave up before its timeout"
        );
    }
    // A message that can never fit is refused at once, however long the timeout.
    let forever = WaitOptions::new(BLOCK);
    assert!(matches!(
        a.sender().alloc_wait(1 << 20, 1, &forever),
        Err(SendError::TooLarge { .. })
    ));
}

#[test]
fn a_sender_waiting_for_room_learns_that_its_receiver_left() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Chan::create_or_open("room-gone", End::A, &options(&dir)).unwrap();
    let b = Chan::create_or_open("room-gone", End::B, &options(&dir)).unwrap();
    let queued = fill(a.sender(), 1000);
    let wait = WaitOptions::new(BLOCK)
        .timeout(Duration::from_secs(30))
        .liveness_check(Duration::from_millis(10));
    let leaver = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        drop(b);
    });
    assert_eq!(
        a.sender().send_wait(1, &[0; 1000], &wait),
        Err(SendError::Disconnected),
        "the receiver detached: reported within a liveness interval, not at the timeout"
    );
    leaver.join().unwrap();
    // The queued messages stay for a receiver that comes back.
    let mut b = Chan::open("room-gone", End::B, &options(&dir)).unwrap();
    let (got, error) = drain(
        b.receiver(),
        &WaitOptions::new(BLOCK).timeout(Duration::ZERO),
    );
    assert_eq!(got.len() as u32, queued);
    assert_eq!(error, RecvError::TimedOut);
}
