//! A market-data server: publishes a stream of quotes to the topic `quotes` (a journal) and lets
//! clients subscribe through its login: shared-memory clients read the topic's journal directly,
//! others (`md_client --forward`, or over TCP with `MD_TCP=ADDR`) get it forwarded over their
//! connection. Pairs with `md_client`, which checks every quote and exits with a failure on the
//! first gap or duplicate.
//!
//! ```sh
//! cargo run --release -p shm-server --example md_server -- /dev/shm/md              # terminal 1
//! cargo run --release -p shm-server --example md_client -- /dev/shm/md alice        # terminal 2: direct
//! cargo run --release -p shm-server --example md_client -- /dev/shm/md bob --forward # terminal 3: forwarded
//! MD_TCP=127.0.0.1:7700 cargo run --release -p shm-server --example md_server -- /dev/shm/md
//! cargo run --release -p shm-server --example md_client -- /dev/shm/md carol --tcp 127.0.0.1:7700
//! ```
//!
//! Arguments: `md_server FOLDER [RATE]`: the login socket and sessions in `FOLDER`, the topic's
//! pages in `FOLDER/topics/quotes/` (1 MiB pages, the newest 16 kept: a subscriber more than
//! about 16 MiB of quotes behind is told what it missed), `RATE` quotes a second (default
//! 100,000). Each quote is 32 bytes: its sequence number, a bid, an ask and a size, stamped
//! with `CLOCK_REALTIME` nanoseconds, so a restarted server's timestamps go on from the last.
//!
//! # Kill it, start it again
//!
//! Kill the server at any moment (`kill -9`) and start it again: the journal's writer lock died
//! with it, the new writer finds the last complete quote and goes on at the next sequence
//! number; clients log in again by themselves and carry on without a gap. Clients can be killed
//! and restarted at will too.

use std::time::{Duration, Instant};

use shm_channel::journal::{JournalOptions, Retention};
use shm_channel::monotonic_nanos;
use shm_server::pubsub::{PubSubConfig, TopicHub};
use shm_server::{Decision, Server, ServerConfig, ServerEvent};

const C: usize = 1 << 18;

fn realtime_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Quote `seq`: its number, a bid and an ask that move with it, a size.
fn quote(seq: u64) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    let bid = 100_000 + (seq % 1000);
    bytes[0..8].copy_from_slice(&seq.to_le_bytes());
    bytes[8..16].copy_from_slice(&bid.to_le_bytes());
    bytes[16..24].copy_from_slice(&(bid + 5).to_le_bytes());
    bytes[24..32].copy_from_slice(&(seq % 97 + 1).to_le_bytes());
    bytes
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let folder = std::path::PathBuf::from(args.next().unwrap_or_else(|| "/dev/shm/md".into()));
    let rate: u64 = args.next().map_or(Ok(100_000), |r| r.parse())?;
    std::fs::create_dir_all(&folder)?;
    let mut config = ServerConfig::new("md", &folder)?.groups(1, 64);
    if let Ok(addr) = std::env::var("MD_TCP") {
        let state = folder.join("tcp");
        std::fs::create_dir_all(&state)?;
        let connection = shm_tcp::ConnectionOptions::new()
            .dir(&state)
            .receive_buffer(4 << 20, (C / 2) as u32);
        config = config.tcp(shm_tcp::AcceptorOptions::new(connection).listen_on(addr.parse()?));
    }
    let mut server = Server::<C>::new(config, |_| Decision::Accept { group: 0 })?;
    let pubsub = PubSubConfig::new(folder.join("topics")).journal(
        JournalOptions::new()
            .page_size(1 << 20)
            .retention(Retention::KeepPages(16)),
    );
    std::fs::create_dir_all(pubsub.dir())?;
    let mut publisher = pubsub.publisher("quotes")?;
    println!(
        "md_server: pid {}, topic {} from seq {}, {rate} quotes/s",
        std::process::id(),
        publisher.folder().display(),
        publisher.next_seq()
    );
    // Any logged-in client may read the quotes; nobody may read anything else.
    let mut hub = TopicHub::new(
        pubsub,
        Box::new(|request| {
            if request.topic == "quotes" {
                Ok(())
            } else {
                Err(format!("no topic {:?} here", request.topic))
            }
        }),
    );
    let started = Instant::now();
    let first = publisher.next_seq();
    let (mut last_control, mut last_report) = (Instant::now(), Instant::now());
    loop {
        let now = monotonic_nanos();
        // Publish what the rate allows by now (a burst after a pause, never a wait).
        let due = first + (started.elapsed().as_secs_f64() * rate as f64) as u64;
        let time = realtime_nanos().max(publisher.last_time());
        while publisher.next_seq() < due.min(publisher.next_seq() + 1000) {
            let seq = publisher.next_seq();
            publisher.append(1, time, &quote(seq))?;
        }
        server.poll_group(0, now, |request, reply| {
            if !hub.handle(request, reply) {
                // Not a publish/subscribe request: this server has nothing else to say.
                let _ = reply.send(request.tag(), b"unknown request");
            }
        });
        hub.forward(server.group(0).expect("group 0"), now, 256);
        if last_control.elapsed() >= Duration::from_millis(1) {
            last_control = Instant::now();
            server.poll_control(now);
            while let Some(event) = server.control().next_event() {
                if !matches!(
                    event,
                    ServerEvent::LoggedIn { .. } | ServerEvent::Closed { .. }
                ) {
                    continue;
                }
                println!("md_server: {event:?}");
            }
            publisher.maintain(realtime_nanos())?;
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            println!(
                "md_server: next seq {}, page {}, hub {:?}",
                publisher.next_seq(),
                publisher.current_page(),
                hub.stats()
            );
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}
