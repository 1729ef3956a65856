//! A market-data subscriber of the journal `md.quotes` (written by `md_publisher`), with a named
//! position: kill it with `kill -9` at any moment and start it again with the same name, and it
//! resumes exactly after the last quote it read, says how many it caught up on, and goes on live.
//! It prints a line on any gap or duplicate, by the frames' sequence numbers and by the
//! publisher's per-quote counter, and a status line every 5 s. Run as many as you like at once,
//! each with its own name.
//!
//! ```sh
//! cargo run --release -p shm-channel --example md_subscriber -- alice            # live
//! cargo run --release -p shm-channel --example md_subscriber -- bob --from-start
//! cargo run --release -p shm-channel --example md_subscriber -- carol --dir /tmp/md
//! ```
//!
//! `--live` (the default) starts at the end, `--from-start` at the oldest quote kept; either only
//! applies when the subscriber has no position yet. The position lives in
//! `<dir>/md.quotes.<name>.position` (remove it to start afresh). Stop it with `kill -9` (or
//! Ctrl-C).

use std::time::{Duration, Instant};

use shm_channel::journal::{JournalError, JournalReader, ReadError, ReadFrom, ReaderOptions};
use shm_channel::WaitStrategy;

const JOURNAL: &str = "md.quotes";

fn realtime_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The publisher's per-quote counter: the payload's first 8 bytes.
fn counter_of(payload: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&payload[..8]);
    u64::from_le_bytes(bytes)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut name, mut dir, mut from) = (None, "/dev/shm".to_string(), ReadFrom::End);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--from-start" => from = ReadFrom::Oldest,
            "--live" => from = ReadFrom::End,
            "--dir" => dir = args.next().ok_or("--dir needs a folder")?,
            _ if !arg.starts_with("--") && name.is_none() => name = Some(arg),
            _ => return Err(format!("unknown argument {arg:?}").into()),
        }
    }
    let name = name.ok_or("usage: md_subscriber NAME [--from-start | --live] [--dir FOLDER]")?;
    let position = std::path::Path::new(&dir).join(format!("{JOURNAL}.{name}.position"));
    let resuming = position.exists();
    let options = ReaderOptions::new().dir(&dir).position_file(&position);
    // Before the publisher's first start there is no page yet: wait for one.
    let mut reader = loop {
        match JournalReader::open(JOURNAL, &options, from) {
            Err(JournalError::NoPages { .. }) => std::thread::sleep(Duration::from_millis(100)),
            Err(_) if !std::path::Path::new(&dir).join(JOURNAL).exists() => {
                std::thread::sleep(Duration::from_millis(100))
            }
            opened => break opened?,
        }
    };
    println!(
        "md_subscriber {name}: {} at seq {} (pid {})",
        if resuming { "resuming" } else { "starting" },
        reader.next_seq(),
        std::process::id()
    );
    // The last quote read: (sequence number, publisher's counter). After a restart, the one read
    // last before it (if retention kept it), so the first quote read now is checked too.
    let mut last: Option<(u64, u64)> = None;
    if resuming && reader.next_seq() > 0 {
        let before = ReadFrom::Seq(reader.next_seq() - 1);
        if let Ok(mut previous) =
            JournalReader::open(JOURNAL, &ReaderOptions::new().dir(&dir), before)
        {
            if let Ok(frame) = previous.front() {
                last = Some((frame.seq(), counter_of(frame.payload())));
            }
        }
    }
    let mut catching_up = Some((reader.next_seq(), Instant::now()));
    let (mut read, mut gaps) = (0u64, 0u64);
    let mut next_report = Instant::now() + Duration::from_secs(5);
    loop {
        let frame = match reader.front() {
            Ok(frame) => frame,
            Err(ReadError::Empty) => {
                if let Some((first, since)) = catching_up.take() {
                    println!(
                        "md_subscriber {name}: caught up on {} quotes in {:.1} ms, now live at seq {}",
                        reader.next_seq() - first,
                        since.elapsed().as_secs_f64() * 1e3,
                        reader.next_seq()
                    );
                }
                reader.wait(
                    WaitStrategy::Block { spin_first: 1000 },
                    Some(Duration::from_secs(1)),
                )?;
                continue;
            }
            Err(ReadError::Lagged {
                missed, resume_at, ..
            }) => {
                gaps += 1;
                println!("md_subscriber {name}: GAP: retention removed {missed} quotes, resuming at seq {resume_at}");
                last = None;
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        let (seq, time) = (frame.seq(), frame.time());
        let counter = counter_of(frame.payload());
        match last {
            // The first quote of a fresh start (or after a lag).
            None => {}
            Some((s, c)) if seq == s + 1 && counter == c + 1 => {}
            Some((s, c)) => {
                gaps += 1;
                let what = if counter <= c { "DUPLICATE" } else { "GAP" };
                println!(
                    "md_subscriber {name}: {what}: seq {s} -> {seq}, counter {c} -> {counter}"
                );
            }
        }
        last = Some((seq, counter));
        read += 1;
        reader.pop()?;
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(5);
            let age_us = realtime_ns().saturating_sub(time) as f64 / 1e3;
            println!(
                "md_subscriber {name}: {read} quotes read, seq {seq}, counter {counter}, last quote {age_us:.0} µs old, {gaps} gaps/duplicates"
            );
        }
    }
}
