//! Replays one or several journals merged by time (`MergedReader`), from a given time, printing
//! every frame: its UTC time, journal, sequence number, tag and payload (as text when it is
//! UTF-8, else as hex). Reads what is there and exits; it only reads (the pages are mapped
//! read-only), so it may run while the writers write. Nothing to kill.
//!
//! ```sh
//! cargo run --release -p shm-channel --example journal_replay -- --dir ./recordings syslog events
//! cargo run --release -p shm-channel --example journal_replay -- --dir /dev/shm --from -5s md.quotes
//! cargo run --release -p shm-channel --example journal_replay -- --from 1764684000000000000 --limit 20 records
//! ```
//!
//! `--dir FOLDER` (default `./recordings`), `--from T` (nanoseconds since the epoch, or `-Ns`
//! for N seconds ago; default: the oldest frame), `--limit N` (frames to print).

use shm_channel::journal::{JournalReader, MergedReader, ReadError, ReadFrom, ReaderOptions};

fn realtime_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// `HH:MM:SS.nnnnnnnnn` UTC.
fn clock(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:09}",
        day / 3600,
        day / 60 % 60,
        day % 60,
        ns % 1_000_000_000
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut dir, mut from, mut limit, mut names) = (
        "./recordings".to_string(),
        ReadFrom::Oldest,
        u64::MAX,
        Vec::new(),
    );
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dir" => dir = args.next().ok_or("--dir FOLDER")?,
            "--limit" => limit = args.next().ok_or("--limit N")?.parse()?,
            "--from" => {
                let value = args.next().ok_or("--from T")?;
                from = match value.strip_prefix('-').and_then(|v| v.strip_suffix('s')) {
                    Some(secs) => ReadFrom::Time(
                        realtime_ns().saturating_sub(secs.parse::<u64>()? * 1_000_000_000),
                    ),
                    None => ReadFrom::Time(value.parse()?),
                };
            }
            _ => names.push(arg),
        }
    }
    if names.is_empty() {
        return Err(
            "usage: journal_replay [--dir FOLDER] [--from T] [--limit N] JOURNAL...".into(),
        );
    }
    let options = ReaderOptions::new().dir(&dir);
    let readers = names
        .iter()
        .map(|name| JournalReader::open(name, &options, from))
        .collect::<Result<Vec<_>, _>>()?;
    let mut merged = MergedReader::new(readers);
    let mut printed = 0;
    while printed < limit {
        match merged.front() {
            Ok((journal, frame)) => {
                let payload = frame.payload();
                let shown = match std::str::from_utf8(payload) {
                    Ok(text) => text.to_string(),
                    Err(_) => payload.iter().map(|b| format!("{b:02x}")).collect(),
                };
                println!(
                    "{} {} #{} tag {} {shown}",
                    clock(frame.time()),
                    names[journal],
                    frame.seq(),
                    frame.tag()
                );
            }
            Err(ReadError::Empty) => break,
            Err(ReadError::Lagged {
                missed, resume_at, ..
            }) => {
                eprintln!("journal_replay: {missed} frames removed while reading; going on at seq {resume_at}");
                continue;
            }
            Err(error) => return Err(error.into()),
        }
        merged.pop()?;
        printed += 1;
    }
    eprintln!("journal_replay: {printed} frames");
    Ok(())
}
