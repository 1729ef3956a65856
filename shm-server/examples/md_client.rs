//! A market-data client of `md_server`: subscribes to `quotes` through the server's login and
//! checks every quote (its sequence number, its bytes); any gap or duplicate prints `GAP` or
//! `DUPLICATE` and exits with a failure. Quotes retention removed before this client read them
//! are not a gap: the server says how many (`LAGGED`) and where reading resumes.
//!
//! ```sh
//! cargo run --release -p shm-server --example md_client -- /dev/shm/md alice                # direct
//! cargo run --release -p shm-server --example md_client -- /dev/shm/md bob --forward        # forwarded
//! cargo run --release -p shm-server --example md_client -- /dev/shm/md carol --tcp 127.0.0.1:7700
//! ```
//!
//! - **Direct** (the default): the server admits the subscription and answers with the topic's
//!   folder; the client reads the journal itself, read-only, at its own pace. Its position is
//!   kept in `FOLDER/clients/NAME.pos` by the reader (one store per pop).
//! - **`--forward`**: the server reads the topic for the client and pushes each quote into its
//!   shared-memory session. **`--tcp ADDR`**: the same over `shm-tcp` (the server runs with
//!   `MD_TCP=ADDR`), its persisted queue in `FOLDER/clients/NAME-tcp/`. The next quote needed is
//!   kept in `FOLDER/clients/NAME.next`, written before each pop: a client killed between the
//!   two gets that quote again from its connection and skips it as seen.
//!
//! # Kill it, start it again
//!
//! Kill a client (`kill -9`) and start it again with the same name: it resumes after the last
//! quote it handled, with nothing skipped or repeated (or a `LAGGED` line if retention removed
//! quotes while it was away). Kill the server and start it again: clients carry on; a
//! forwarded one re-subscribes from its own position.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use shm_channel::journal::ReadFrom;
use shm_channel::monotonic_nanos;
use shm_server::pubsub::{LagPolicy, SubscriptionError, Subscriptions, TopicEvent, TopicReader};
use shm_server::{Client, ClientEvent, ClientOptions};
use spsc_core::MessageReceiver;

const C: usize = 1 << 18;

fn realtime_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The quote `md_server` publishes as `seq`.
fn quote(seq: u64) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    let bid = 100_000 + (seq % 1000);
    bytes[0..8].copy_from_slice(&seq.to_le_bytes());
    bytes[8..16].copy_from_slice(&bid.to_le_bytes());
    bytes[16..24].copy_from_slice(&(bid + 5).to_le_bytes());
    bytes[24..32].copy_from_slice(&(seq % 97 + 1).to_le_bytes());
    bytes
}

/// What one run counted, printed once a second.
#[derive(Default)]
struct Counts {
    quotes: u64,
    duplicates_skipped: u64,
    lagged: u64,
    latency_ns: u64,
}

/// Checks quote `seq` against the next expected one: `Err` with the line to print on a gap or
/// a duplicate.
fn check(expected: &mut Option<u64>, seq: u64, payload: &[u8]) -> Result<(), String> {
    if let Some(next) = *expected {
        if seq > next {
            return Err(format!("GAP: expected quote {next}, got {seq}"));
        }
        if seq < next {
            return Err(format!("DUPLICATE: quote {seq} again (expected {next})"));
        }
    }
    if payload != quote(seq) {
        return Err(format!("GAP: quote {seq} has the wrong bytes"));
    }
    *expected = Some(seq + 1);
    Ok(())
}

/// The next quote a forwarded client needs, kept in a file (8 bytes, written in place).
struct Kept {
    file: std::fs::File,
}

impl Kept {
    fn open(path: &Path) -> std::io::Result<(Self, Option<u64>)> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut bytes = [0u8; 8];
        let kept = match file.read_at(&mut bytes, 0) {
            Ok(8) => Some(u64::from_le_bytes(bytes)),
            _ => None,
        };
        Ok((Self { file }, kept))
    }

    fn store(&self, next: u64) {
        // One write of 8 bytes: a kill leaves the old value or the new one.
        let _ = self.file.write_at(&next.to_le_bytes(), 0);
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: md_client FOLDER NAME [--forward | --tcp ADDR]");
        return ExitCode::from(2);
    }
    let folder = PathBuf::from(&args[0]);
    let name = args[1].clone();
    let clients = folder.join("clients");
    if let Err(error) = std::fs::create_dir_all(&clients) {
        eprintln!("md_client: {}: {error}", clients.display());
        return ExitCode::from(2);
    }
    let result = match args.get(2).map(String::as_str) {
        None => direct(&folder, &name, &clients),
        Some("--forward") => forwarded_shm(&folder, &name, &clients),
        Some("--tcp") => match args.get(3).map(|addr| addr.parse()) {
            Some(Ok(addr)) => forwarded_tcp(addr, &name, &clients),
            _ => Err("--tcp needs an address such as 127.0.0.1:7700".into()),
        },
        Some(other) => Err(format!("unknown option {other}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(line) => {
            println!("md_client {name}: {line}");
            ExitCode::FAILURE
        }
    }
}

fn report(name: &str, counts: &mut Counts, last: &mut Instant) {
    if last.elapsed() >= Duration::from_secs(1) {
        *last = Instant::now();
        println!(
            "md_client {name}: {} quotes, {} lags, {} seen again and skipped, last quote {} us old",
            counts.quotes,
            counts.lagged,
            counts.duplicates_skipped,
            counts.latency_ns / 1000
        );
    }
}

/// Subscribes through the server, then reads the topic's journal itself.
fn direct(folder: &Path, name: &str, clients: &Path) -> Result<(), String> {
    let mut client = Client::<C>::connect(folder, name, &ClientOptions::new())
        .map_err(|e| format!("login: {e}"))?;
    let mut subs = Subscriptions::new();
    subs.subscribe(&mut client, "quotes", ReadFrom::End, false)
        .map_err(|e| format!("subscribe: {e}"))?;
    let topic_folder = loop {
        client.poll(monotonic_nanos()).map_err(|e| e.to_string())?;
        let Ok(message) = client.front() else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let event = subs.on_message(message.tag(), message.payload());
        let answer = match event {
            Ok(Some(TopicEvent::Subscribed { folder, .. })) => Ok(PathBuf::from(folder)),
            Ok(Some(TopicEvent::Refused { reason, .. })) => Err(format!("refused: {reason}")),
            other => Err(format!("unexpected answer {other:?}")),
        };
        client.pop().map_err(|e| e.to_string())?;
        break answer?;
    };
    let topics = topic_folder.parent().unwrap_or(folder).to_path_buf();
    let position = clients.join(format!("{name}.pos"));
    let resumed = position.exists();
    let mut reader = TopicReader::open(
        &topics,
        "quotes",
        ReadFrom::End,
        LagPolicy::Report,
        Some(&position),
    )
    .map_err(|e| e.to_string())?;
    let mut expected = Some(reader.reader().next_seq());
    println!(
        "md_client {name}: reading {} directly {} quote {}",
        topic_folder.display(),
        if resumed { "resuming at" } else { "live from" },
        reader.reader().next_seq()
    );
    let (mut counts, mut last) = (Counts::default(), Instant::now());
    loop {
        match reader.front() {
            Ok(frame) => {
                check(&mut expected, frame.seq(), frame.payload())?;
                counts.quotes += 1;
                counts.latency_ns = realtime_nanos().saturating_sub(frame.time());
                reader.pop().map_err(|e| e.to_string())?;
            }
            Err(SubscriptionError::Empty) => {
                let _ = reader.reader().wait(
                    shm_channel::WaitStrategy::Block { spin_first: 1000 },
                    Some(Duration::from_millis(100)),
                );
                // Heartbeats; a lost server does not stop a direct reader.
                if let Ok(Some(ClientEvent::Disconnected { reason })) =
                    client.poll(monotonic_nanos())
                {
                    println!("md_client {name}: server gone ({reason}); reading on");
                }
            }
            Err(SubscriptionError::Lagged {
                missed, resume_at, ..
            }) => {
                println!("md_client {name}: LAGGED: {missed} quotes removed before read, resuming at {resume_at}");
                counts.lagged += 1;
                expected = Some(resume_at);
            }
            Err(error) => return Err(error.to_string()),
        }
        report(name, &mut counts, &mut last);
    }
}

/// Handles one server message of a forwarded subscription: checks and keeps a quote.
fn on_forwarded(
    subs: &mut Subscriptions,
    tag: u16,
    payload: &[u8],
    expected: &mut Option<u64>,
    kept: &Kept,
    counts: &mut Counts,
    name: &str,
) -> Result<(), String> {
    match subs.on_message(tag, payload) {
        Ok(Some(TopicEvent::Frame {
            seq, time, payload, ..
        })) => {
            check(expected, seq, payload)?;
            // Kept before the pop (the caller pops next): see the module docs.
            kept.store(seq + 1);
            counts.quotes += 1;
            counts.latency_ns = realtime_nanos().saturating_sub(time);
        }
        Ok(Some(TopicEvent::Duplicate { .. })) => counts.duplicates_skipped += 1,
        Ok(Some(TopicEvent::Lagged {
            missed, resume_at, ..
        })) => {
            println!("md_client {name}: LAGGED: {missed} quotes removed before forwarded, resuming at {resume_at}");
            counts.lagged += 1;
            *expected = Some(resume_at);
            kept.store(resume_at);
        }
        Ok(Some(TopicEvent::Subscribed { start_seq, .. })) => {
            println!("md_client {name}: subscribed, forwarded from quote {start_seq}");
            expected.get_or_insert(start_seq);
        }
        Ok(Some(TopicEvent::Refused { reason, .. })) => return Err(format!("refused: {reason}")),
        Ok(None) => {}
        Err(malformed) => return Err(format!("malformed message: {malformed}")),
    }
    Ok(())
}

fn start(clients: &Path, name: &str) -> Result<(Kept, Option<u64>, ReadFrom), String> {
    let (kept, next) =
        Kept::open(&clients.join(format!("{name}.next"))).map_err(|e| e.to_string())?;
    let from = next.map_or(ReadFrom::End, ReadFrom::Seq);
    Ok((kept, next, from))
}

fn forwarded_shm(folder: &Path, name: &str, clients: &Path) -> Result<(), String> {
    let (kept, mut expected, from) = start(clients, name)?;
    let mut client = Client::<C>::connect(folder, name, &ClientOptions::new())
        .map_err(|e| format!("login: {e}"))?;
    let mut subs = Subscriptions::new();
    subs.subscribe(&mut client, "quotes", from, true)
        .map_err(|e| format!("subscribe: {e}"))?;
    let (mut counts, mut last) = (Counts::default(), Instant::now());
    let mut resubscribe = false;
    loop {
        match client.poll(monotonic_nanos()) {
            Ok(Some(ClientEvent::Reconnected { .. })) => resubscribe = true,
            Ok(Some(ClientEvent::Disconnected { reason })) => {
                println!("md_client {name}: server gone ({reason}); waiting for it")
            }
            _ => {}
        }
        if resubscribe && subs.resubscribe(&mut client).is_ok() {
            resubscribe = false;
        }
        match client.front() {
            Ok(message) => {
                let (tag, payload) = (message.tag(), message.payload());
                on_forwarded(
                    &mut subs,
                    tag,
                    payload,
                    &mut expected,
                    &kept,
                    &mut counts,
                    name,
                )?;
                client.pop().map_err(|e| e.to_string())?;
            }
            Err(_) => std::thread::sleep(Duration::from_micros(50)),
        }
        report(name, &mut counts, &mut last);
    }
}

fn forwarded_tcp(addr: std::net::SocketAddr, name: &str, clients: &Path) -> Result<(), String> {
    let (kept, mut expected, from) = start(clients, name)?;
    let state = clients.join(format!("{name}-tcp"));
    std::fs::create_dir_all(&state).map_err(|e| e.to_string())?;
    // Payloads up to the server's queue allows (C / 2), a receive buffer to match.
    let options = shm_tcp::ConnectionOptions::new()
        .dir(&state)
        .receive_buffer(4 << 20, (C / 2) as u32);
    let mut conn = shm_tcp::Connection::<C>::client(addr, name, "md", &options)
        .map_err(|e| format!("connect: {e}"))?;
    let mut subs = Subscriptions::new();
    let (mut counts, mut last) = (Counts::default(), Instant::now());
    let (mut handshakes, mut subscribed, mut resubscribe) = (0, false, false);
    loop {
        if let Err(error) = conn.poll(monotonic_nanos()) {
            println!("md_client {name}: link: {error}; reconnecting");
        }
        if conn.is_connected() && conn.stats().handshakes != handshakes {
            handshakes = conn.stats().handshakes;
            resubscribe = subscribed;
        }
        if !subscribed && subs.subscribe(&mut conn, "quotes", from, true).is_ok() {
            subscribed = true;
        }
        if resubscribe && subs.resubscribe(&mut conn).is_ok() {
            resubscribe = false;
        }
        match conn.front() {
            Ok(message) => {
                let (tag, payload) = (message.tag(), message.payload());
                on_forwarded(
                    &mut subs,
                    tag,
                    payload,
                    &mut expected,
                    &kept,
                    &mut counts,
                    name,
                )?;
                conn.pop().map_err(|e| e.to_string())?;
            }
            Err(_) => std::thread::sleep(Duration::from_micros(50)),
        }
        report(name, &mut counts, &mut last);
    }
}
