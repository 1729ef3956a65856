//! Two processes, one channel, typed messages: a publisher streams quotes, a consumer checks that
//! every one arrives exactly once, in order. Kill either with `kill -9` at any moment and start it
//! again: it takes its end back and carries on where the ring says it was, and the consumer exits
//! with an error on the first gap or duplicate. The program the crate's `tutorial` module walks
//! through (`cargo doc -p shm-channel --open`).
//!
//! ```sh
//! cargo run --release -p shm-channel --example quotes -- publish   # terminal 1
//! cargo run --release -p shm-channel --example quotes -- consume   # terminal 2
//! ```
//!
//! Options (both roles): `--name NAME` (default `quotes-demo`), `--dir FOLDER` (default
//! `/dev/shm`), `--count N` (stop after quote N-1 and remove the segment once both are done;
//! default: run until killed), `--interval-us N` (publisher: pause between quotes, default 100),
//! `--spin-first N` (polls before a blocking wait sleeps, default 1000).
//!
//! # Exactly once across restarts
//!
//! A `Quote` is 56 bytes, so its record in the ring (an 8-byte header, the payload) is 64 bytes,
//! and a 64 KiB ring holds exactly 1024 of them: a record never needs padding, and a side's ring
//! position divided by 64 is the number of quotes it has pushed (or popped) since the segment was
//! made, modulo 2²⁶. The ring commits that position atomically with the push (or the pop), so it
//! is the truth after a `kill -9`. Each side also keeps a hint in the header's session area (the
//! next sequence number, stored after each push or pop: at worst one behind after a kill) to
//! recover the high bits.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use shm_channel::prelude::*;
use shm_channel::{monotonic_nanos, Reclaim};

/// Bytes per ring: 1024 records of 64 bytes.
const C: usize = 64 * 1024;
type Quotes = Channel<C>;

const TAG_QUOTE: u16 = 1;
/// A quote's record in the ring: the 8-byte header and the 56-byte payload.
const RECORD: u32 = 64;
/// Sequence numbers the ring position tells apart: 2³² bytes of position ÷ 64 bytes a record.
const POSITION_PERIOD: u64 = 1 << 26;
/// Session-area words: the publisher's next sequence number, the consumer's.
const PUBLISHER_HINT: usize = 0;
const CONSUMER_HINT: usize = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[bytemuck(crate = "shm_channel::bytemuck")]
struct Quote {
    seq: u64,
    /// `monotonic_nanos()` when published: one clock for every process on the host.
    sent_at: u64,
    instrument: u64,
    bid: i64,
    ask: i64,
    bid_qty: u32,
    ask_qty: u32,
    venue: u16,
    flags: u16,
    _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<Quote>() as u32 + 8 == RECORD);
const _: () = assert!((C as u32).is_multiple_of(RECORD));

struct Args {
    role: String,
    name: String,
    dir: String,
    count: Option<u64>,
    interval: Duration,
    spin_first: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let role = args
        .next()
        .ok_or("usage: quotes publish|consume [options]")?;
    if role != "publish" && role != "consume" {
        return Err(format!("unknown role {role:?}: use publish or consume"));
    }
    let mut parsed = Args {
        role,
        name: "quotes-demo".into(),
        dir: shm_channel::DEFAULT_DIR.into(),
        count: None,
        interval: Duration::from_micros(100),
        spin_first: 1000,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--name" => parsed.name = value.clone(),
            "--dir" => parsed.dir = value.clone(),
            "--count" => parsed.count = Some(number()?),
            "--interval-us" => parsed.interval = Duration::from_micros(number()?),
            "--spin-first" => {
                parsed.spin_first = u32::try_from(number()?).map_err(|e| e.to_string())?
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(parsed)
}

/// The next sequence number of a side whose ring position is `position` and whose hint (stored
/// after each operation, so at most one behind) is `hint`.
fn recover(position: u32, hint: u64) -> Result<u64, String> {
    if !position.is_multiple_of(RECORD) {
        return Err(format!(
            "ring position {position} is not a whole number of quote records: this segment \
             carried other messages; use another --name"
        ));
    }
    let done_low = u64::from(position / RECORD);
    let next = hint + (done_low.wrapping_sub(hint) & (POSITION_PERIOD - 1));
    if next - hint > 1 {
        return Err(format!(
            "ring position says {done_low} (mod 2^26) quotes, the hint says {hint}: the session \
             area was overwritten; use another --name"
        ));
    }
    Ok(next)
}

fn hint(endpoint: &Endpoint<C>, word: usize) -> &std::sync::atomic::AtomicU64 {
    endpoint
        .header()
        .user_word(word)
        .expect("the session area has user words 0 and 1")
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let result = if args.role == "publish" {
        publish(&args)
    } else {
        consume(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{}: {message}", args.role);
            ExitCode::FAILURE
        }
    }
}

fn open(args: &Args, end: End) -> Result<Endpoint<C>, String> {
    let options = ChannelOptions::new().dir(&args.dir);
    let endpoint = Quotes::create_or_open(&args.name, end, &options).map_err(|e| e.to_string())?;
    println!(
        "{} {end} of segment {:?} in {} ({}; peer {})",
        if endpoint.created() {
            "created"
        } else {
            "opened"
        },
        args.name,
        args.dir,
        if endpoint.header().attach_count(end) > 1 {
            "taken back after a restart"
        } else {
            "first start"
        },
        match endpoint.peer_pid() {
            0 => "not attached".to_string(),
            pid => format!("pid {pid}"),
        }
    );
    Ok(endpoint)
}

/// Closes the end; the last of the two to finish a `--count` run removes the file.
fn finish(endpoint: Endpoint<C>) -> Result<(), String> {
    match endpoint.close_and_remove_if_last() {
        Ok(Reclaim::Removed) => println!("done; the segment is removed"),
        Ok(_) => println!("done; the peer still has the segment open and will remove it"),
        Err(error) => return Err(error.to_string()),
    }
    Ok(())
}

fn publish(args: &Args) -> Result<(), String> {
    let mut endpoint = open(args, End::A)?;
    let mut next = recover(
        endpoint.sender().position(),
        hint(&endpoint, PUBLISHER_HINT).load(Ordering::Relaxed),
    )?;
    println!("publishing from quote {next}");
    let wait = WaitOptions::new(WaitStrategy::Block {
        spin_first: args.spin_first,
    })
    .timeout(Duration::from_secs(1));
    let mut last_beat = 0;
    while args.count.is_none_or(|count| next < count) {
        let now = monotonic_nanos();
        if now.saturating_sub(last_beat) > 100_000_000 {
            endpoint.heartbeat(now);
            last_beat = now;
        }
        let quote = Quote {
            seq: next,
            sent_at: now,
            instrument: 42,
            bid: 1_000_000 + (next % 100) as i64,
            ask: 1_000_100 + (next % 100) as i64,
            bid_qty: 10,
            ask_qty: 12,
            venue: 7,
            flags: 0,
            _pad: [0; 4],
        };
        match endpoint.sender().send_pod_wait(TAG_QUOTE, &quote, &wait) {
            Ok(()) => {
                next += 1;
                hint(&endpoint, PUBLISHER_HINT).store(next, Ordering::Relaxed);
                if next % 100_000 == 0 {
                    println!("published {next} quotes");
                }
            }
            // The ring is full and the consumer has not popped for a second, or it is gone:
            // what is queued stays for it; keep trying.
            Err(SendError::Full) => println!("ring full: waiting for the consumer"),
            Err(SendError::Disconnected) => {
                println!("ring full and the consumer is gone: waiting for it to restart");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(error) => return Err(error.to_string()),
        }
        if !args.interval.is_zero() {
            std::thread::sleep(args.interval);
        }
    }
    finish(endpoint)
}

fn consume(args: &Args) -> Result<(), String> {
    let mut endpoint = open(args, End::B)?;
    let mut expected = recover(
        endpoint.receiver().position(),
        hint(&endpoint, CONSUMER_HINT).load(Ordering::Relaxed),
    )?;
    println!("expecting quote {expected}");
    let wait = WaitOptions::new(WaitStrategy::Block {
        spin_first: args.spin_first,
    })
    .timeout(Duration::from_secs(1))
    .heartbeat_limit(Duration::from_secs(2));
    let mut worst_latency = 0;
    while args.count.is_none_or(|count| expected < count) {
        match endpoint.receiver().recv_pod_wait::<Quote>(&wait) {
            Ok((tag, quote)) => {
                // Popped: the ring has committed it, whatever happens next.
                if tag != TAG_QUOTE || quote.seq != expected {
                    return Err(format!(
                        "expected quote {expected}, received tag {tag} quote {}: {}",
                        quote.seq,
                        if quote.seq < expected {
                            "a duplicate"
                        } else {
                            "a gap"
                        }
                    ));
                }
                expected += 1;
                hint(&endpoint, CONSUMER_HINT).store(expected, Ordering::Relaxed);
                worst_latency = worst_latency.max(monotonic_nanos().saturating_sub(quote.sent_at));
                if expected % 100_000 == 0 {
                    println!(
                        "received {expected} quotes in order; worst publish-to-receive since the \
                         last line {:.1} µs",
                        worst_latency as f64 / 1e3
                    );
                    worst_latency = 0;
                }
            }
            Err(PodRecvError::Recv(RecvError::TimedOut)) => {
                println!("no quote for 1 s (publisher pid {})", endpoint.peer_pid());
            }
            Err(PodRecvError::Recv(RecvError::Disconnected)) => {
                // Every quote it pushed has been delivered; a restarted publisher takes its end
                // back and carries on.
                println!("the publisher is gone: waiting for it to restart");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(error) => return Err(error.to_string()),
        }
    }
    finish(endpoint)
}
