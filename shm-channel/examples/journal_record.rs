//! A recorder: appends every line of its standard input (or generated events) to a journal in a
//! disk folder, stamped with `CLOCK_REALTIME` nanoseconds, keeping every page. Replay it with
//! `journal_replay`. Kill it with `kill -9` at any moment: every line appended is in the pages
//! (process-crash durability), and a restart appends after the last one.
//!
//! ```sh
//! tail -F /var/log/syslog | cargo run --release -p shm-channel --example journal_record -- ./recordings syslog
//! cargo run --release -p shm-channel --example journal_record -- ./recordings events --generate 100000
//! ```
//!
//! Arguments: the folder (default `./recordings`), the journal's name (default `records`), and
//! `--generate N` to record N generated events (`event <i>`, one every 10 µs) instead of stdin.
//! Ends at the end of its input (or with Ctrl-C / `kill -9`).

use std::io::BufRead;
use std::time::Duration;

use shm_channel::journal::{JournalOptions, JournalWriter, PrepareNext};

/// The frame tag of a recorded line.
const LINE: u16 = 1;

fn realtime_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let generate = args
        .iter()
        .position(|a| a == "--generate")
        .map(|i| {
            args.get(i + 1)
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or("--generate N")
        })
        .transpose()?;
    let mut plain = args
        .iter()
        .filter(|a| !a.starts_with("--") && a.parse::<u64>().is_err());
    let dir = plain
        .next()
        .cloned()
        .unwrap_or_else(|| "./recordings".into());
    let name = plain.next().cloned().unwrap_or_else(|| "records".into());
    std::fs::create_dir_all(&dir)?;
    // A recorder keeps everything (the default retention); pages of 16 MiB, the next one made in
    // `maintain` below, never on the append path.
    let options = JournalOptions::new()
        .dir(&dir)
        .prepare_next(PrepareNext::Manual);
    let mut writer = JournalWriter::open(&name, &options)?;
    let first = writer.next_seq();
    eprintln!(
        "journal_record: {} from seq {first}",
        writer.folder().display()
    );
    let append =
        |writer: &mut JournalWriter, line: &[u8]| -> Result<(), Box<dyn std::error::Error>> {
            let now = realtime_ns().max(writer.last_time());
            writer.append(LINE, now, line)?;
            writer.maintain(now)?;
            Ok(())
        };
    match generate {
        Some(count) => {
            for i in 0..count {
                append(&mut writer, format!("event {i}").as_bytes())?;
                std::thread::sleep(Duration::from_micros(10));
            }
        }
        None => {
            for line in std::io::stdin().lock().lines() {
                append(&mut writer, line?.as_bytes())?;
            }
        }
    }
    eprintln!(
        "journal_record: recorded {} lines (seq {first} to {}), {} pages",
        writer.next_seq() - first,
        writer.next_seq().saturating_sub(1),
        writer.current_page() - writer.oldest_page() + 1
    );
    Ok(())
}
