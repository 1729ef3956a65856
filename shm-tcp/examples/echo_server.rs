//! An echo server: every message a client sends comes back to that client as the reply, exactly
//! once, however often either process is killed. Pairs with the `echo_client` example, which
//! checks every reply and reports the first gap or duplicate.
//!
//! ```sh
//! cargo run --release -p shm-tcp --example echo_server    # terminal 1
//! cargo run --release -p shm-tcp --example echo_client    # terminal 2
//! ```
//!
//! Arguments, both optional: `echo_server [STATE_FOLDER] [ADDRESS]`, by default
//! `/tmp/shm-tcp-echo` (created if missing) and `127.0.0.1:7411`. The server is named
//! `echo-server`, in session `echo`; the client's default folder is the same one, which is fine:
//! each side's file is named after its own name first (`echo-server_echo-client`,
//! `echo-client_echo-server`).
//!
//! Kill either process at any moment (`kill -9 <pid>`, or Ctrl-C) and start it again with the
//! same arguments: the server takes its pairs back when their clients log in again, resends every
//! reply not yet popped, and the client carries on from its own persisted counts. The client
//! prints a line and exits with a failure on the first gap or duplicate. To start from nothing,
//! stop both and remove the folder (removing one side's files only makes the other side refuse
//! the pair: its numbers would no longer add up).
//!
//! No thread runs behind the connections: one loop polls the acceptor and every connection.
//!
//! # Exactly once through a crash
//!
//! A pop is the commit of the request: once popped, the client is never sent it again. So the
//! reply is pushed (persisted in the pair's send queue) *before* the request is popped; popping
//! first would lose the reply of a request popped just before a kill. Pushing first leaves the
//! opposite window: a kill after the push and before the pop, after which the request is
//! delivered again though its reply is already queued. The server tells that case from the two
//! persisted counts, since every request gets exactly one reply: replies pushed
//! ([`Connection::next_seq`]) minus requests popped ([`Connection::popped`]) is 0, or 1 right
//! after such a kill, when the request at the front is already answered and is popped without a
//! second reply.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use shm_channel::monotonic_nanos;
use shm_tcp::{Acceptor, AcceptorEvent, AcceptorOptions, Connection, ConnectionOptions};
use spsc_core::{MessageReceiver, MessageSender, RecvError, SendError, SendSlot};

/// Each pair's send queue (the replies not yet popped by the client): 128 KiB, so messages of
/// up to 64 KiB.
const C: usize = 128 * 1024;
type Conn = Connection<C>;

const NAME: &str = "echo-server";
const SESSION: &str = "echo";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/tmp/shm-tcp-echo".into()));
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7411".into());
    if dir.as_os_str() == "--help" || dir.as_os_str() == "-h" {
        println!("usage: echo_server [STATE_FOLDER] [ADDRESS]");
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
        .receive_buffer(1 << 20, Conn::MAX_PAYLOAD);
    let mut acceptor =
        match Acceptor::<C>::bind(NAME, SESSION, AcceptorOptions::new(options).listen_on(addr)) {
            Ok(acceptor) => acceptor,
            Err(error) => {
                eprintln!("{error}");
                return ExitCode::FAILURE;
            }
        };
    println!(
        "echo server (pid {}) on {addr}, state in {}",
        std::process::id(),
        dir.display()
    );
    let mut scratch = Vec::new();
    let (mut echoed, mut echoed_before) = (0u64, 0u64);
    let mut last_line = monotonic_nanos();
    loop {
        let now = monotonic_nanos();
        while let Some(event) = acceptor.poll(now, |_| Ok(())) {
            match event {
                AcceptorEvent::LoggedIn { id, peer, new, .. } => {
                    let conn = acceptor.connection(id).expect("the event's connection");
                    println!(
                        "{} logged in from {peer} ({}): {} requests handled, {} replies not \
                         yet popped by it",
                        conn.remote_name(),
                        if new {
                            "first login since this server started"
                        } else {
                            "again"
                        },
                        conn.popped(),
                        conn.unacknowledged()
                    );
                }
                AcceptorEvent::Refused { client, reason, .. } => {
                    println!("refused {client}: {reason}")
                }
                AcceptorEvent::Failed { peer, error } => println!("login from {peer}: {error}"),
                other => println!("{other:?}"),
            }
        }
        let mut moved = false;
        for (_, conn) in acceptor.connections() {
            if let Err(error) = conn.poll(now) {
                println!("{}: {error}", conn.remote_name());
            }
            moved |= echo(conn, &mut scratch, &mut echoed);
        }
        if now.saturating_sub(last_line) >= 1_000_000_000 {
            if echoed != echoed_before {
                println!(
                    "echoed {} requests in the last {:.1} s",
                    echoed - echoed_before,
                    (now - last_line) as f64 / 1e9
                );
            }
            echoed_before = echoed;
            last_line = now;
        }
        if !moved {
            // Idle: do not burn a core (a latency-critical server would spin instead).
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// Answers the requests waiting on `conn`, each reply pushed before its request is popped (the
/// module docs say why); whether anything moved.
fn echo(conn: &mut Conn, scratch: &mut Vec<u8>, echoed: &mut u64) -> bool {
    let mut moved = false;
    for _ in 0..256 {
        let (answered, handled) = (conn.next_seq(), conn.popped());
        if answered > handled {
            // Killed after pushing the reply of request `handled` and before popping it: the
            // request came again; pop it without a second reply.
            if conn.front().is_err() {
                break; // not here yet
            }
            println!(
                "{}: request {handled} was answered before a restart; popped without a second \
                 reply",
                conn.remote_name()
            );
            conn.pop().expect("a message is at the front");
            moved = true;
            continue;
        }
        let tag = match conn.front() {
            Ok(request) => {
                scratch.clear();
                scratch.extend_from_slice(request.payload());
                request.tag()
            }
            Err(RecvError::Empty) => break,
            Err(error) => {
                println!("{}: {error}", conn.remote_name());
                break;
            }
        };
        match conn.alloc(scratch.len() as u32, tag) {
            Ok(mut reply) => {
                reply.payload_mut().copy_from_slice(scratch);
                reply.push_more(); // sent with the burst's other replies, below
            }
            // The client does not pop its replies: the request waits until it does.
            Err(SendError::Full) => break,
            Err(error) => {
                println!("{}: cannot reply: {error}", conn.remote_name());
                break;
            }
        }
        conn.pop().expect("a message is at the front");
        *echoed += 1;
        moved = true;
    }
    if moved {
        let _ = conn.flush_queued();
    }
    moved
}
