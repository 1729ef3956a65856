//! The `echo_server` example's client: sends numbered requests and checks that reply `n` is
//! request `n`, byte for byte, exactly once and in order, however often either process is
//! killed. It prints a line and exits with a failure on the first gap, duplicate or corrupted
//! reply, and a rate line every second.
//!
//! ```sh
//! cargo run --release -p shm-tcp --example echo_server    # terminal 1
//! cargo run --release -p shm-tcp --example echo_client    # terminal 2
//! ```
//!
//! Arguments, all optional: `echo_client [STATE_FOLDER] [ADDRESS] [NAME]`, by default
//! `/tmp/shm-tcp-echo` (created if missing), `127.0.0.1:7411` and `echo-client`. Run several
//! clients side by side under different names.
//!
//! Kill either process at any moment (`kill -9 <pid>`, or Ctrl-C) and start it again with the
//! same arguments. A restarted client resumes from its persisted counts, nothing else: its next
//! request number is [`Connection::next_seq`] (requests it pushed, kept in its send queue until
//! the server pops them) and the reply it expects next is [`Connection::popped`] (replies it
//! popped: the pop is the commit). Until the server is back it keeps queueing requests (up to
//! 1000 unanswered) and reconnecting; a restarted server resends every reply not yet popped. A
//! gap (a reply lost) or a duplicate (a reply popped twice) would show at the next reply. To start
//! from nothing, stop both and remove the folder.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use shm_channel::monotonic_nanos;
use shm_tcp::{Connection, ConnectionOptions};
use spsc_core::{MessageReceiver, MessageSender, RecvError, SendError, SendSlot};

/// The send queue (the requests not yet popped by the server): the server's size.
const C: usize = 128 * 1024;
type Conn = Connection<C>;

/// Requests sent and not yet answered, at most.
const WINDOW: u64 = 1000;

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Request `n`: its number (8 bytes, little-endian), then bytes that depend on it, 8 to 4 KiB
/// in all (now and then up to 60 KiB). The tag is the number's low 16 bits.
fn request(n: u64, payload: &mut [u8]) {
    let cut = payload.len().min(8);
    payload[..cut].copy_from_slice(&n.to_le_bytes()[..cut]);
    let mut state = n;
    for chunk in payload[cut..].chunks_mut(8) {
        state = splitmix(state);
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

fn request_len(n: u64) -> u32 {
    let key = splitmix(n ^ 0xEC40);
    let len = match key % 1000 {
        0 => 8 + (key >> 20) % (60 << 10),
        1..=99 => 8 + (key >> 20) % 4096,
        _ => 8 + (key >> 20) % 120,
    };
    len as u32
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/tmp/shm-tcp-echo".into()));
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7411".into());
    let name = args.next().unwrap_or_else(|| "echo-client".into());
    if dir.as_os_str() == "--help" || dir.as_os_str() == "-h" {
        println!("usage: echo_client [STATE_FOLDER] [ADDRESS] [NAME]");
        return ExitCode::SUCCESS;
    }
    let addr: SocketAddr = match addr.parse() {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("address {addr:?}: {error}");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = std::fs::create_dir_all(&dir) {
        eprintln!("state folder {}: {error}", dir.display());
        return ExitCode::FAILURE;
    }
    let options = ConnectionOptions::new()
        .dir(&dir)
        .receive_buffer(1 << 20, Conn::MAX_PAYLOAD)
        .reconnect_backoff_ns(10_000_000, 500_000_000);
    let mut conn = match Conn::client(addr, &name, "echo-server", &options) {
        Ok(conn) => conn,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "echo client {name} (pid {}) to {addr}, state in {}: next request {}, expecting reply {} \
         ({} requests queued from before)",
        std::process::id(),
        dir.display(),
        conn.next_seq(),
        conn.popped(),
        conn.next_seq() - conn.popped()
    );
    let mut expected_bytes = Vec::new();
    let mut last_line = monotonic_nanos();
    let mut replies_before = conn.popped();
    let mut was_connected = false;
    loop {
        let now = monotonic_nanos();
        if let Err(error) = conn.poll(now) {
            println!("link: {error}");
        }
        if conn.is_connected() != was_connected {
            was_connected = conn.is_connected();
            if was_connected {
                println!("connected to {addr}");
            }
        }
        // Requests, while fewer than WINDOW are unanswered.
        let mut moved = false;
        while conn.next_seq() - conn.popped() < WINDOW {
            let n = conn.next_seq();
            match conn.alloc(request_len(n), n as u16) {
                Ok(mut slot) => {
                    request(n, slot.payload_mut());
                    slot.push_more();
                    moved = true;
                }
                Err(SendError::Full) => break, // the queue is full until the server pops
                Err(error) => {
                    eprintln!("request {n}: {error}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let _ = conn.flush_queued();
        // Replies: reply `n` must be request `n`, and `n` is the count of replies popped.
        loop {
            let expected = conn.popped();
            let verdict = match conn.front() {
                Ok(reply) => check(expected, reply.tag(), reply.payload(), &mut expected_bytes),
                Err(RecvError::Empty) => break,
                Err(error) => Err(format!("receiving: {error}")),
            };
            if let Err(line) = verdict {
                println!("{line}");
                return ExitCode::FAILURE;
            }
            conn.pop().expect("a reply is at the front");
            moved = true;
        }
        if now.saturating_sub(last_line) >= 1_000_000_000 {
            let replies = conn.popped();
            println!(
                "{:.0} replies/s, {replies} in order in all, {} in flight, link {:?}",
                (replies - replies_before) as f64 * 1e9 / (now - last_line) as f64,
                conn.next_seq() - replies,
                conn.state()
            );
            replies_before = replies;
            last_line = now;
        }
        if !moved {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// Whether (`tag`, `payload`) is reply `expected`: `Err` with the line to print if not.
fn check(expected: u64, tag: u16, payload: &[u8], scratch: &mut Vec<u8>) -> Result<(), String> {
    let number = payload
        .get(..8)
        .map(|bytes| u64::from_le_bytes(bytes.try_into().unwrap()));
    match number {
        Some(n) if n > expected => {
            return Err(format!(
                "GAP: expected reply {expected}, got reply {n} ({} lost)",
                n - expected
            ))
        }
        Some(n) if n < expected => {
            return Err(format!(
                "DUPLICATE: expected reply {expected}, got reply {n} again"
            ))
        }
        _ => {}
    }
    scratch.resize(request_len(expected) as usize, 0);
    request(expected, scratch);
    if tag != expected as u16 || payload != &scratch[..] {
        return Err(format!(
            "CORRUPT: reply {expected} differs from its request (tag {tag}, {} bytes, expected \
             tag {} and {} bytes)",
            payload.len(),
            expected as u16,
            scratch.len()
        ));
    }
    Ok(())
}
