//! A market-data style publisher: writes quotes, stamped with `CLOCK_REALTIME` nanoseconds, into
//! the journal `md.quotes`, and calls `maintain` every millisecond (next page, retention: pages
//! older than a minute are removed). Kill it with `kill -9` whenever you like and start it again:
//! the journal's writer takes over where the last complete frame ends, and the per-quote counter
//! goes on from the last quote published, so subscribers (`md_subscriber`) see no gap and no
//! duplicate.
//!
//! ```sh
//! cargo run --release -p shm-channel --example md_publisher              # pages in /dev/shm
//! cargo run --release -p shm-channel --example md_publisher -- /tmp/md   # or in a folder
//! ```
//!
//! `MD_RATE` sets the quotes per second (default 20000), `MD_DIR` the folder (like the argument).
//! Stop it with Ctrl-C or `kill -9`; remove `/dev/shm/md.quotes/` when done.

use std::time::{Duration, Instant};

use shm_channel::journal::{
    JournalOptions, JournalReader, JournalWriter, ReadFrom, ReaderOptions, Retention,
};

/// The journal's name, in the folder.
const JOURNAL: &str = "md.quotes";
/// The frame tag of a quote.
const QUOTE: u16 = 1;

/// A quote's payload: the publisher's counter (one per quote, carried across restarts), the
/// instrument, bid and ask in ticks, and their sizes. 40 bytes, little-endian.
fn encode(counter: u64, instrument: u32, bid: i64, ask: i64, size: u32) -> [u8; 40] {
    let mut bytes = [0u8; 40];
    bytes[0..8].copy_from_slice(&counter.to_le_bytes());
    bytes[8..12].copy_from_slice(&instrument.to_le_bytes());
    bytes[16..24].copy_from_slice(&bid.to_le_bytes());
    bytes[24..32].copy_from_slice(&ask.to_le_bytes());
    bytes[32..36].copy_from_slice(&size.to_le_bytes());
    bytes[36..40].copy_from_slice(&(size * 2).to_le_bytes());
    bytes
}

fn realtime_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("MD_DIR").ok())
        .unwrap_or_else(|| "/dev/shm".into());
    let rate: u64 = std::env::var("MD_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let options = JournalOptions::new()
        .dir(&dir)
        .page_size(4 << 20)
        .retention(Retention::KeepFor(Duration::from_secs(60)));
    let mut writer = JournalWriter::open(JOURNAL, &options)?;
    // The counter goes on from the last quote published (by this program before a restart).
    let mut counter = 0;
    if writer.next_seq() > 0 {
        let last = ReadFrom::Seq(writer.next_seq() - 1);
        let mut reader = JournalReader::open(JOURNAL, &ReaderOptions::new().dir(&dir), last)?;
        let payload = reader.front()?.payload();
        counter = u64::from_le_bytes(payload[..8].try_into()?) + 1;
    }
    println!(
        "md_publisher: {} at seq {}, counter {counter}, {rate} quotes/s (pid {})",
        writer.folder().display(),
        writer.next_seq(),
        std::process::id()
    );
    let per_ms = (rate / 1000).max(1);
    let started = Instant::now();
    let mut next_report = Duration::from_secs(5);
    let mut ms = 0u64;
    loop {
        for _ in 0..per_ms {
            let instrument = (counter % 8) as u32;
            let mid = 10_000 + (counter % 100) as i64;
            // A clock stepped back must not make a timestamp go backwards.
            let now = realtime_ns().max(writer.last_time());
            writer.append(
                QUOTE,
                now,
                &encode(counter, instrument, mid - 1, mid + 1, 100),
            )?;
            counter += 1;
        }
        writer.maintain(realtime_ns())?;
        ms += 1;
        // Paced to `rate`: sleep until this millisecond's batch is due.
        let due = Duration::from_millis(ms);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        if started.elapsed() >= next_report {
            next_report += Duration::from_secs(5);
            let stats = writer.stats();
            println!(
                "md_publisher: seq {}, counter {counter}, page {} (oldest {}), {} pages removed",
                writer.next_seq(),
                writer.current_page(),
                writer.oldest_page(),
                stats.pages_removed
            );
        }
    }
}
