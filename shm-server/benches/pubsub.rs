//! Publish/subscribe with laggards: does a stopped or slow subscriber cost the others anything?
//!
//! One publisher process (pinned to the first CPU) and one measured subscriber process (pinned
//! to the second, busy-polling the topic's journal directly). Two conditions, in interleaved
//! rounds within one run:
//!
//! - **alone**: only the measured subscriber reads the topic;
//! - **with laggards**: two more subscriber processes read it too: one `SIGSTOP`ped for the whole
//!   block (after it blocked on the journal's futex, so it is armed: the worst case for the
//!   publisher, which then fences after every publication) and one slow one (it reads a handful
//!   of frames every 10 ms and keeps falling behind retention).
//!
//! Two measurements per block: the measured subscriber's publish-to-read latency (frames paced
//! one per 2 µs, `CLOCK_MONOTONIC` stamped by the publisher, read on the other CPU), and the
//! publisher's append rate (as fast as it can for 20 ms). The table gives each condition's
//! medians and the ratio with laggards ÷ alone of each round (median and range). Nothing is
//! asserted. Run: `cargo bench -p shm-server --bench pubsub` (`SHM_BENCH_QUICK=1`: 3 rounds).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use shm_channel::journal::{
    JournalOptions, JournalReader, JournalWriter, ReadError, ReadFrom, ReaderOptions, Retention,
};
use shm_channel::{monotonic_nanos, WaitStrategy};

const TOPIC: &str = "bench";
/// Tag of a frame the measured subscriber times.
const TAG_TIMED: u16 = 1;
/// Tag of a frame of a rate block (read, not timed).
const TAG_RATE: u16 = 2;
/// Tag of a block's end: the subscriber prints its percentiles.
const TAG_REPORT: u16 = 3;
const PAYLOAD: usize = 64;

fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

fn cpus() -> Vec<usize> {
    let set = rustix::thread::sched_getaffinity(None).expect("affinity");
    (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&cpu| set.is_set(cpu))
        .collect()
}

fn reader_options(dir: &Path) -> ReaderOptions {
    ReaderOptions::new().dir(dir)
}

/// The measured subscriber: busy-polls, times `TAG_TIMED` frames, prints `p50 p90 p99 count`
/// at each `TAG_REPORT`.
fn measured(dir: &Path) {
    let mut reader = JournalReader::open(TOPIC, &reader_options(dir), ReadFrom::End).unwrap();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    loop {
        match reader.front() {
            Ok(frame) => {
                let (tag, time) = (frame.tag(), frame.time());
                match tag {
                    TAG_TIMED => {
                        let _ = histogram.record(monotonic_nanos().saturating_sub(time).max(1));
                    }
                    TAG_REPORT => {
                        if frame.payload() == b"quit" {
                            return;
                        }
                        println!(
                            "LAT {} {} {} {}",
                            histogram.value_at_quantile(0.5),
                            histogram.value_at_quantile(0.9),
                            histogram.value_at_quantile(0.99),
                            histogram.len()
                        );
                        histogram.reset();
                    }
                    _ => {}
                }
                reader.pop().unwrap();
            }
            Err(ReadError::Empty) => core::hint::spin_loop(),
            // Rate blocks outrun retention: go on from the oldest.
            Err(ReadError::Lagged { .. }) => {}
            Err(error) => panic!("{error}"),
        }
    }
}

/// A laggard: `stopped` blocks on the futex (and is then stopped by the parent); otherwise
/// reads 16 frames every 10 ms.
fn laggard(dir: &Path, stopped: bool) {
    let mut reader = JournalReader::open(TOPIC, &reader_options(dir), ReadFrom::End).unwrap();
    println!("READY");
    loop {
        if stopped {
            let _ = reader.wait(WaitStrategy::Block { spin_first: 0 }, None);
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
        for _ in 0..16 {
            match reader.front() {
                Ok(_) => {
                    let _ = reader.pop();
                }
                Err(ReadError::Lagged { .. }) => {}
                Err(_) => break,
            }
        }
    }
}

fn spawn(
    dir: &Path,
    role: &str,
    cpu: Option<usize>,
) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("PUBSUB_BENCH_ROLE", role)
        .env("PUBSUB_BENCH_DIR", dir)
        .env(
            "PUBSUB_BENCH_CPU",
            cpu.map_or(String::new(), |c| c.to_string()),
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

fn line(out: &mut BufReader<std::process::ChildStdout>) -> String {
    let mut text = String::new();
    out.read_line(&mut text).unwrap();
    text
}

struct Block {
    p50: u64,
    p99: u64,
    rate: f64,
}

/// One block: timed frames for `timed` (paced), a report, then a rate block of 20 ms.
fn block(writer: &mut JournalWriter, measured: &mut BufReader<std::process::ChildStdout>) -> Block {
    let payload = [7u8; PAYLOAD];
    let until = Instant::now() + Duration::from_millis(100);
    let mut next = monotonic_nanos();
    while Instant::now() < until {
        while monotonic_nanos() < next {
            core::hint::spin_loop();
        }
        next += 2_000;
        let now = monotonic_nanos();
        writer.append(TAG_TIMED, now, &payload).unwrap();
    }
    writer
        .append(TAG_REPORT, monotonic_nanos(), b"report")
        .unwrap();
    let report = line(measured);
    let numbers: Vec<u64> = report
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    writer.maintain(monotonic_nanos()).unwrap();
    let start = Instant::now();
    let mut frames = 0u64;
    while start.elapsed() < Duration::from_millis(20) {
        for _ in 0..256 {
            writer
                .append(TAG_RATE, monotonic_nanos(), &payload)
                .unwrap();
        }
        frames += 256;
    }
    let rate = frames as f64 / start.elapsed().as_secs_f64();
    writer.maintain(monotonic_nanos()).unwrap();
    Block {
        p50: numbers[0],
        p99: numbers[2],
        rate,
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    if let Ok(role) = std::env::var("PUBSUB_BENCH_ROLE") {
        let dir = PathBuf::from(std::env::var("PUBSUB_BENCH_DIR").unwrap());
        if let Ok(cpu) = std::env::var("PUBSUB_BENCH_CPU").unwrap().parse() {
            pin(cpu);
        }
        match role.as_str() {
            "measured" => measured(&dir),
            "stopped" => laggard(&dir, true),
            _ => laggard(&dir, false),
        }
        return;
    }
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` / `--list`: nothing to list
    }
    let rounds = if std::env::var("SHM_BENCH_QUICK").is_ok() {
        3
    } else {
        9
    };
    let cpus = cpus();
    let (first, second) = (cpus[0], *cpus.get(1).unwrap_or(&cpus[0]));
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let options = JournalOptions::new()
        .dir(dir.path())
        .page_size(16 << 20)
        .retention(Retention::KeepPages(4));
    pin(first);
    let mut writer = JournalWriter::open(TOPIC, &options).unwrap();
    writer
        .append(TAG_RATE, monotonic_nanos(), &[0; PAYLOAD])
        .unwrap();
    let (mut subscriber, mut measured_out) = spawn(dir.path(), "measured", Some(second));
    std::thread::sleep(Duration::from_millis(200));
    // Warm-up.
    let _ = block(&mut writer, &mut measured_out);
    let mut alone = Vec::new();
    let mut with = Vec::new();
    let mut ratios = (Vec::new(), Vec::new(), Vec::new());
    println!("pubsub bench: {rounds} rounds, publisher on CPU {first}, measured subscriber on CPU {second}, {PAYLOAD} B frames");
    for round in 0..rounds {
        let laggards_first = round % 2 == 1;
        let mut pair = [None, None];
        for turn in 0..2 {
            let with_laggards = (turn == 0) == laggards_first;
            let extra = if with_laggards {
                let (stopped, mut stopped_out) = spawn(dir.path(), "stopped", None);
                let (slow, mut slow_out) = spawn(dir.path(), "slow", None);
                assert_eq!(line(&mut stopped_out).trim(), "READY");
                assert_eq!(line(&mut slow_out).trim(), "READY");
                // Let the stopped one arm and fall asleep on the futex, then stop it.
                let deadline = Instant::now() + Duration::from_secs(5);
                while writer.wake_stats().armed == 0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let pid = rustix::process::Pid::from_child(&stopped);
                rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
                Some((stopped, slow))
            } else {
                None
            };
            let result = block(&mut writer, &mut measured_out);
            if let Some((mut stopped, mut slow)) = extra {
                let _ = stopped.kill();
                let _ = slow.kill();
                let _ = stopped.wait();
                let _ = slow.wait();
                // Their arms are taken back by the next sweep.
                writer.maintain(monotonic_nanos() + 2_000_000_000).unwrap();
            }
            pair[usize::from(with_laggards)] = Some(result);
        }
        let [Some(a), Some(w)] = pair else {
            unreachable!()
        };
        println!(
            "round {round}: alone p50 {} ns p99 {} ns {:.1} M/s | with laggards p50 {} ns p99 {} ns {:.1} M/s",
            a.p50,
            a.p99,
            a.rate / 1e6,
            w.p50,
            w.p99,
            w.rate / 1e6
        );
        ratios.0.push(w.p50 as f64 / a.p50 as f64);
        ratios.1.push(w.p99 as f64 / a.p99 as f64);
        ratios.2.push(w.rate / a.rate);
        alone.push(a);
        with.push(w);
    }
    writer
        .append(TAG_REPORT, monotonic_nanos(), b"quit")
        .unwrap();
    let _ = subscriber.wait();
    let range = |v: &[f64]| {
        let min = v.iter().cloned().fold(f64::MAX, f64::min);
        let max = v.iter().cloned().fold(f64::MIN, f64::max);
        format!("{min:.2}–{max:.2}")
    };
    let med =
        |f: &dyn Fn(&Block) -> f64, v: &[Block]| median(&mut v.iter().map(f).collect::<Vec<_>>());
    println!();
    println!("| | alone | with a stopped and a slow subscriber | ratio (median, range) |");
    println!("|---|---|---|---|");
    println!(
        "| latency p50 | {:.0} ns | {:.0} ns | {:.2}× ({}) |",
        med(&|b| b.p50 as f64, &alone),
        med(&|b| b.p50 as f64, &with),
        median(&mut ratios.0.clone()),
        range(&ratios.0)
    );
    println!(
        "| latency p99 | {:.0} ns | {:.0} ns | {:.2}× ({}) |",
        med(&|b| b.p99 as f64, &alone),
        med(&|b| b.p99 as f64, &with),
        median(&mut ratios.1.clone()),
        range(&ratios.1)
    );
    println!(
        "| publisher append rate | {:.1} M/s | {:.1} M/s | {:.2}× ({}) |",
        med(&|b| b.rate / 1e6, &alone),
        med(&|b| b.rate / 1e6, &with),
        median(&mut ratios.2.clone()),
        range(&ratios.2)
    );
}
