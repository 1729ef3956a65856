//! One publisher, eight subscriber processes: six keep up, one is deliberately slow and one is
//! stopped with `SIGSTOP` for most of the run. The publisher never waits for any of them; the
//! six see every frame exactly once, in order, intact, and never lag; the slow and the stopped
//! one are told exactly what they missed ("lagged, N missed, resuming at S") and go on from
//! there with every other frame intact. Subscriptions go through the server's hub (login, check).
//!
//! Timing is never asserted: the publisher's and the subscribers' speed only decide how much the
//! two laggards miss, which each of them accounts for exactly.

// The journal is not built under `--cfg loom`.
#![cfg(not(loom))]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shm_channel::journal::{JournalOptions, ReadFrom, Retention};
use shm_channel::{monotonic_nanos, WaitStrategy};
use shm_server::pubsub::{
    LagPolicy, PubSubConfig, SubscriptionError, Subscriptions, TopicEvent, TopicHub, TopicReader,
};
use shm_server::{Client, ClientOptions, Decision, Server, ServerConfig};
use spsc_core::MessageReceiver;

const C: usize = 1 << 14;
const TOPIC: &str = "md";
const FRAMES: u64 = 400_000;
const PAGE: u64 = 1 << 20;
const KEEP_PAGES: u64 = 16;
const SUBSCRIBERS: usize = 8;
const SLOW: usize = 6;
const STOPPED: usize = 7;

/// Frame `seq`'s 64-byte payload: its number, then bytes derived from it.
fn payload(seq: u64) -> [u8; 64] {
    let mut bytes = [0u8; 64];
    bytes[..8].copy_from_slice(&seq.to_le_bytes());
    for (i, byte) in bytes[8..].iter_mut().enumerate() {
        *byte = (seq as usize).wrapping_mul(131).wrapping_add(i) as u8;
    }
    bytes
}

fn topics_dir(dir: &Path) -> PathBuf {
    dir.join("topics")
}

fn pubsub_config(dir: &Path) -> PubSubConfig {
    PubSubConfig::new(topics_dir(dir)).journal(
        JournalOptions::new()
            .page_size(PAGE)
            .retention(Retention::KeepPages(KEEP_PAGES)),
    )
}

/// A subscriber process: logs in, subscribes through the hub, reads the topic directly until
/// frame `FRAMES - 1`, checking every frame; prints `frames lags missed` on success.
#[test]
#[ignore = "a child role of fanout_with_a_slow_and_a_stopped_subscriber"]
fn role_subscriber() {
    let dir = PathBuf::from(std::env::var("FANOUT_DIR").expect("a child role"));
    let index: usize = std::env::var("FANOUT_INDEX").unwrap().parse().unwrap();
    let name = format!("sub-{index}");
    let mut client = Client::<C>::connect(&dir, &name, &ClientOptions::new()).unwrap();
    let mut subs = Subscriptions::new();
    subs.subscribe(&mut client, TOPIC, ReadFrom::Oldest, false)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let start = loop {
        assert!(Instant::now() < deadline, "no answer to the subscription");
        client.poll(monotonic_nanos()).unwrap();
        let Ok(message) = client.front() else {
            std::thread::yield_now();
            continue;
        };
        let event = subs.on_message(message.tag(), message.payload()).unwrap();
        let start = match event {
            Some(TopicEvent::Subscribed { start_seq, .. }) => start_seq,
            other => panic!("{other:?}"),
        };
        client.pop().unwrap();
        break start;
    };
    let mut reader = TopicReader::open(
        &topics_dir(&dir),
        TOPIC,
        ReadFrom::Seq(start),
        LagPolicy::Report,
        None,
    )
    .unwrap();
    assert_eq!(start, 0, "{name} subscribed before the first frame");
    let (mut next, mut frames, mut lags, mut missed_total) = (start, 0u64, 0u64, 0u64);
    while next < FRAMES {
        assert!(Instant::now() < deadline, "frame {next} never came");
        match reader.front() {
            Ok(frame) => {
                assert_eq!(frame.seq(), next, "{name}: out of order");
                assert_eq!(frame.time(), next, "{name}: time of {next}");
                assert_eq!(frame.payload(), payload(next), "{name}: bytes of {next}");
                reader.pop().unwrap();
                next += 1;
                frames += 1;
                if index == SLOW && next % 16 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Err(SubscriptionError::Empty) => {
                let _ = reader.reader().wait(
                    WaitStrategy::Block { spin_first: 64 },
                    Some(Duration::from_millis(50)),
                );
                // Keep the login alive (heartbeats).
                let _ = client.poll(monotonic_nanos());
            }
            Err(SubscriptionError::Lagged {
                missed, resume_at, ..
            }) => {
                assert!(
                    resume_at > next,
                    "{name}: lag back to {resume_at} at {next}"
                );
                assert_eq!(missed, resume_at - next, "{name}: missed at {next}");
                missed_total += missed;
                lags += 1;
                next = resume_at;
            }
            Err(error) => panic!("{name}: {error}"),
        }
    }
    println!("RESULT {frames} {lags} {missed_total}");
}

fn spawn_subscriber(dir: &Path, index: usize) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "role_subscriber",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FANOUT_DIR", dir)
        .env("FANOUT_INDEX", index.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, signal).unwrap();
}

#[test]
fn fanout_with_a_slow_and_a_stopped_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::new("fanout", dir.path())
        .unwrap()
        .groups(1, 16)
        .heartbeat_timeout(Duration::from_secs(60));
    let server = Server::<C>::new(config, |_| Decision::Accept { group: 0 }).unwrap();
    let (mut control, mut groups) = server.split();
    let mut group = groups.pop().unwrap();
    let pubsub = pubsub_config(dir.path());
    std::fs::create_dir_all(pubsub.dir()).unwrap();
    let mut publisher = pubsub.publisher(TOPIC).unwrap();
    let mut hub = TopicHub::new(pubsub.clone(), Box::new(|_| Ok(())));
    let stop = Arc::new(AtomicBool::new(false));
    let subscribed = Arc::new(AtomicU64::new(0));
    let serving = {
        let stop = Arc::clone(&stop);
        let subscribed = Arc::clone(&subscribed);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let now = monotonic_nanos();
                control.poll_control(now);
                group.poll(now, |request, reply| {
                    assert!(hub.handle(request, reply));
                });
                subscribed.store(hub.stats().subscribed, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(200));
            }
            hub.stats()
        })
    };
    let mut children: Vec<Child> = (0..SUBSCRIBERS)
        .map(|index| spawn_subscriber(dir.path(), index))
        .collect();
    // Every subscriber is in before the first frame, so each starts at frame 0.
    let deadline = Instant::now() + Duration::from_secs(60);
    while subscribed.load(Ordering::Relaxed) < SUBSCRIBERS as u64 {
        assert!(
            Instant::now() < deadline,
            "the subscribers never subscribed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let began = Instant::now();
    let mut stopped = false;
    for seq in 0..FRAMES {
        publisher.append(1, seq, &payload(seq)).unwrap();
        if seq % 500 == 499 {
            publisher.maintain(seq).unwrap();
            // Paced so that subscribers sharing two CPUs keep up; the stopped one cannot.
            std::thread::sleep(Duration::from_millis(1));
        }
        if seq == FRAMES / 8 {
            signal(&children[STOPPED], rustix::process::Signal::STOP);
            stopped = true;
        }
        if seq == FRAMES * 7 / 8 && stopped {
            signal(&children[STOPPED], rustix::process::Signal::CONT);
            stopped = false;
        }
    }
    let published_in = began.elapsed();
    let mut results = Vec::new();
    for (index, child) in children.iter_mut().enumerate() {
        let output = {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "subscriber {index} failed: {status}");
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "subscriber {index} never finished"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let mut text = String::new();
            std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut text).unwrap();
            text
        };
        let line = output
            .lines()
            .find_map(|line| line.split_once("RESULT ").map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("subscriber {index} printed no result: {output}"));
        let numbers: Vec<u64> = line.split(' ').map(|n| n.parse().unwrap()).collect();
        results.push((numbers[0], numbers[1], numbers[2]));
    }
    stop.store(true, Ordering::Relaxed);
    let stats = serving.join().unwrap();
    println!("published {FRAMES} frames in {published_in:?}; (frames, lags, missed) per subscriber: {results:?}; hub {stats:?}");
    assert_eq!(stats.subscribed, SUBSCRIBERS as u64);
    for (index, &(frames, lags, missed)) in results.iter().enumerate() {
        assert_eq!(
            frames + missed,
            FRAMES,
            "subscriber {index} accounted for every frame"
        );
        if index < SLOW {
            assert_eq!(lags, 0, "subscriber {index} keeps up");
        }
    }
    let (_, stopped_lags, stopped_missed) = results[STOPPED];
    assert!(
        stopped_lags >= 1 && stopped_missed > 0,
        "the stopped subscriber lagged"
    );
}
