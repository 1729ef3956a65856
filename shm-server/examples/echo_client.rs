//! The `echo_server` example's client: sends numbered messages of random sizes and checks that
//! the echoes come back exactly in order, byte for byte, with no gap and no duplicate, however
//! often either process is killed. It prints a line and exits with a failure on the first gap,
//! duplicate, reordering or corrupted echo, and a rate line every second.
//!
//! ```sh
//! cargo run --release -p shm-server --example echo_server -- /dev/shm/echo        # terminal 1
//! cargo run --release -p shm-server --example echo_client -- /dev/shm/echo        # terminal 2
//! ```
//!
//! Arguments: `echo_client FOLDER [NAME]`: the server's folder, and the client's name (default
//! `echo-client`; run several clients side by side under different names). It waits up to a
//! minute for a server to answer its first login.
//!
//! Over TCP: `echo_client --tcp ADDR [NAME]` logs in as a `shm_tcp::Connection` to an
//! `echo_server` started with `ECHO_TCP=ADDR`; the same checks apply, the same handler answers.
//! Its persisted queue lives in `$TMPDIR/shm-server-echo-tcp/` (so a restarted client resumes
//! its pair: what either side had not popped is sent again by the `shm-tcp` handshake).
//!
//! ```sh
//! ECHO_TCP=127.0.0.1:7070 cargo run --release -p shm-server --example echo_server -- /dev/shm/echo
//! cargo run --release -p shm-server --example echo_client -- --tcp 127.0.0.1:7070 carol
//! ```
//!
//! # The messages
//!
//! Each message is a request of `shm_server::request`: its request id (8 bytes; ids are
//! consecutive, so they number the messages on the wire), then its sequence number (8 bytes:
//! the message's number in this run, kept when the message is sent again), then 0 to 16 KiB of
//! bytes drawn from the sequence number (mostly under 120). The tag is the sequence number's
//! low 16 bits. An echo must equal its request exactly. [`Requests`] classifies each echo by its
//! id; the client also keeps its own list of the requests in flight, in id order, because the
//! server answers a connection's requests in order: the echo that arrives must be the oldest one
//! in flight.
//!
//! The client keeps at most [`WINDOW`] messages, and [`WINDOW_BYTES`] of them, in flight: the
//! server drops an echo that finds the client's ring full, so the window keeps the echoes of
//! everything in flight within the ring even while this process is stopped or dead.
//!
//! # Kill either side, start it again
//!
//! Kill the client at any moment (`kill -9 <pid>`, or Ctrl-C) and start it again with the same
//! arguments: it logs in again to the same session segment (the server closes the dead login
//! first; `Client::connect` retries meanwhile) and starts a new run. What the previous run left
//! in the segment (echoes it never read, requests the server had not answered yet, whose echoes
//! come later) carries request ids below this run's first one (`Requests::from_clock`: the wall
//! clock in nanoseconds at start), so each is [`Reply::Unknown`]: counted and skipped, never
//! taken for an echo of this run.
//!
//! Kill the server at any moment and start it again: the client sees the login socket close
//! (`ClientEvent::Disconnected`), keeps its messages queued in the ring meanwhile, and logs in
//! again by itself (`ClientEvent::Reconnected`) to the same segment: the restarted server
//! answers everything it had not popped.
//!
//! # The one reply a server crash may lose (tcpshm's rule)
//!
//! The server's group pops each request (the commit) *before* it pushes the reply. A server
//! killed between the two has consumed the request and never sent its echo: that echo is lost,
//! exactly one, and the request is never run twice. So the client allows, for each time it saw
//! the server go away, one message whose echo never comes, if that message was sent before the
//! server went. It sees the loss in one of two ways: an echo of a later request arrives first
//! (the server answers in order, so the earlier one is never coming), or the message times out
//! ([`TIMEOUT`] after it was sent, or after the server came back). It then sends the message
//! again, same sequence number and bytes, under a new request id, and carries on. Should the
//! original echo turn up after all, [`Requests`] reports it [`Reply::Late`] and the client says
//! so and skips it; a second echo of one request ([`Reply::Duplicate`]) is a failure.
//!
//! A loss the client cannot explain by a crash of the server (no disconnect seen since the
//! message was sent, or a second loss for the same disconnect) is a GAP: the client waits
//! half a second first, in case the server's death is not noticed yet (the login socket is
//! checked once every heartbeat interval, 100 ms), then prints it and exits with a failure.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use shm_channel::{monotonic_nanos, ChannelSlot, SegmentName};
use shm_server::request::{Reply, Requests, REQUEST_ID_LEN};
use shm_server::{Client, ClientEvent, ClientOptions};
use shm_tcp::{Connection, ConnectionOptions, TcpSlot};
use spsc_core::{Message, MessageReceiver, MessageSender, RecvError, SendError, SendSlot};

/// The session's ring capacity (each direction): the server's.
const C: usize = 256 * 1024;
/// Messages in flight, at most.
const WINDOW: usize = 64;
/// Payload bytes in flight, at most: a quarter of the ring, so the echoes of everything in flight
/// (records and padding included) fit in the client's ring while nobody reads it, next to the
/// echoes a previous run left unread.
const WINDOW_BYTES: usize = C / 4;
/// How long a message may go unanswered while the server is there, before it counts as lost.
const TIMEOUT: u64 = 2_000_000_000;
/// How long a loss waits for the server's disconnect to explain it, before it is a gap.
const GRACE: u64 = 500_000_000;
/// Bytes before a message's body: its request id and its sequence number.
const HEAD: usize = REQUEST_ID_LEN + 8;

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Message `seq`'s length after its request id: the sequence number and 0 to 16 KiB of body
/// (mostly under 120 bytes, one in a hundred up to 4 KiB, one in a thousand up to 16 KiB).
fn length(seq: u64) -> usize {
    let key = splitmix(seq ^ 0xEC40);
    let body = match key % 1000 {
        0 => (key >> 20) % (16 << 10),
        1..=10 => (key >> 20) % 4096,
        _ => (key >> 20) % 120,
    };
    8 + body as usize
}

/// Writes message `seq` after its id: the sequence number, then bytes drawn from it.
fn write_message(seq: u64, out: &mut [u8]) {
    out[..8].copy_from_slice(&seq.to_le_bytes());
    let mut state = seq;
    for chunk in out[8..].chunks_mut(8) {
        state = splitmix(state);
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

/// A message in flight.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    id: u64,
    seq: u64,
    /// Bytes after the id.
    len: usize,
    /// The server disconnects seen when it was sent.
    epoch: u64,
    /// When it counts as lost (pushed on when the server comes back).
    deadline: u64,
}

/// Why the client stops.
type Failure = String;

struct State {
    requests: Requests<{ 2 * WINDOW }>,
    /// In request-id order, which is the order the echoes must come in.
    in_flight: VecDeque<InFlight>,
    in_flight_bytes: usize,
    /// Messages to send again (lost to a server crash), before new ones.
    resend: VecDeque<u64>,
    next_seq: u64,
    /// Server disconnects seen.
    epoch: u64,
    /// Losses the disconnects seen so far still allow (one each).
    allowance: u64,
    /// Since when a loss waits for a disconnect to explain it.
    suspect_since: Option<u64>,
    /// The id of the echo held at the front meanwhile (already classified by the table).
    held: Option<u64>,
    echoes: u64,
    resent: u64,
    late: u64,
    unknown: u64,
    scratch: Vec<u8>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tcp = args.first().is_some_and(|arg| arg == "--tcp");
    let args = if tcp { &args[1..] } else { &args[..] };
    let Some(target) = args.first().filter(|a| !a.starts_with('-')) else {
        eprintln!(
            "usage: echo_client FOLDER [NAME]   (FOLDER: the echo_server's)\n       \
             echo_client --tcp ADDR [NAME]   (ADDR: the echo_server's ECHO_TCP)"
        );
        return ExitCode::from(2);
    };
    let name = args.get(1).cloned().unwrap_or_else(|| "echo-client".into());
    println!(
        "echo client {name} (pid {}): logging in to the server at {target}",
        std::process::id(),
    );
    let mut client = if tcp {
        let Ok(addr) = target.parse() else {
            eprintln!("{target} is not an address such as 127.0.0.1:7070");
            return ExitCode::from(2);
        };
        let dir = std::env::temp_dir().join("shm-server-echo-tcp");
        if let Err(error) = std::fs::create_dir_all(&dir) {
            eprintln!("{}: {error}", dir.display());
            return ExitCode::FAILURE;
        }
        let options = ConnectionOptions::new()
            .dir(dir)
            .receive_buffer(0, Connection::<C>::MAX_PAYLOAD); // the server's queues are as large
        match Connection::<C>::client(addr, &name, "echo", &options) {
            Ok(conn) => Link::Tcp {
                conn,
                was_connected: false,
            },
            Err(error) => {
                eprintln!("login: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let folder = PathBuf::from(target);
        let options = ClientOptions::new().login_timeout(Duration::from_secs(60));
        match Client::<C>::connect(&folder, &name, &options) {
            Ok(client) => {
                println!(
                    "logged in to {} (group {})",
                    client.server(),
                    client.group()
                );
                Link::Shm(client)
            }
            Err(error) => {
                eprintln!("login: {error}");
                return ExitCode::FAILURE;
            }
        }
    };
    let mut state = State {
        requests: Requests::from_clock(),
        in_flight: VecDeque::with_capacity(WINDOW),
        in_flight_bytes: 0,
        resend: VecDeque::new(),
        next_seq: 0,
        epoch: 0,
        allowance: 0,
        suspect_since: None,
        held: None,
        echoes: 0,
        resent: 0,
        late: 0,
        unknown: 0,
        scratch: vec![0; HEAD + (16 << 10)],
    };
    match run(&mut client, &mut state) {
        Ok(()) => ExitCode::SUCCESS,
        Err(line) => {
            println!("{line}");
            println!(
                "after {} echoes in order ({} messages sent again after a server crash)",
                state.echoes, state.resent
            );
            ExitCode::FAILURE
        }
    }
}

fn run(client: &mut Link, state: &mut State) -> Result<(), Failure> {
    let (mut last_line, mut echoes_before) = (monotonic_nanos(), 0u64);
    let mut last_error = String::new();
    loop {
        let now = monotonic_nanos();
        match client.poll(now) {
            Ok(None) => {}
            Ok(Some(ClientEvent::Disconnected { reason })) => {
                println!("disconnected: {reason}; messages wait in the ring");
                state.epoch += 1;
                state.allowance += 1;
            }
            Ok(Some(ClientEvent::Reconnected {
                server,
                new_session,
            })) => {
                println!("logged in again to {server}");
                for message in &mut state.in_flight {
                    message.deadline = now + TIMEOUT;
                }
                if new_session {
                    // The old session's segment is gone, and with it whatever was in flight.
                    println!(
                        "the server has a new name: a new session, {} messages in flight are \
                         gone; sending them again",
                        state.in_flight.len()
                    );
                    state
                        .resend
                        .extend(state.in_flight.drain(..).map(|m| m.seq));
                    state.in_flight_bytes = 0;
                }
            }
            Err(error) => {
                let line = error.to_string();
                if line != last_error {
                    println!("not logged in yet: {line}");
                    last_error = line;
                }
            }
        }
        let mut moved = send(client, state, now)?;
        moved |= receive(client, state, now)?;
        check_timeout(client, state, now)?;
        for _ in state.requests.expire(now) {} // the table's own record of old ids
        if now.saturating_sub(last_line) >= 1_000_000_000 {
            println!(
                "{:.0} echoes/s, {} in order in all, {} in flight; {} sent again after a \
                 server crash, {} late echoes skipped, {} echoes of a previous run skipped",
                (state.echoes - echoes_before) as f64 * 1e9 / (now - last_line) as f64,
                state.echoes,
                state.in_flight.len(),
                state.resent,
                state.late,
                state.unknown
            );
            echoes_before = state.echoes;
            last_line = now;
        }
        if !moved {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// Sends messages (those to send again first) while the window allows.
fn send(client: &mut Link, state: &mut State, now: u64) -> Result<bool, Failure> {
    let mut moved = false;
    while state.in_flight.len() < WINDOW && !state.requests.is_full() {
        let seq = state.resend.front().copied().unwrap_or(state.next_seq);
        let len = length(seq);
        if state.in_flight_bytes + len > WINDOW_BYTES {
            break;
        }
        let mut slot =
            match state
                .requests
                .alloc(client, len as u32, seq as u16, now + TIMEOUT, seq)
            {
                Ok(slot) => slot,
                Err(shm_server::request::RequestError::Send(SendError::Full)) => break,
                Err(error) => return Err(format!("sending message {seq}: {error}")),
            };
        write_message(seq, slot.body_mut());
        let id = slot.push().0;
        if state.resend.pop_front().is_none() {
            state.next_seq += 1;
        }
        state.in_flight.push_back(InFlight {
            id,
            seq,
            len,
            epoch: state.epoch,
            deadline: now + TIMEOUT,
        });
        state.in_flight_bytes += len;
        moved = true;
    }
    Ok(moved)
}

/// Takes the echoes that arrived, checking each: it must be the echo of the oldest message in
/// flight. An echo of a later one means the earlier ones lost theirs ([`lose_front`]).
fn receive(client: &mut Link, state: &mut State, now: u64) -> Result<bool, Failure> {
    let mut moved = false;
    loop {
        let echo = match client.front() {
            Ok(echo) => echo,
            Err(spsc_core::RecvError::Empty) => return Ok(moved),
            Err(error) => return Err(format!("receiving: {error}")),
        };
        let (tag, payload) = (echo.tag(), echo.payload());
        // The table classifies each echo once: one held at the front while a loss waits for
        // its explanation was classified already.
        let id = match state.held {
            Some(id) => Some(id),
            None => match state.requests.on_reply(payload) {
                Reply::Matched { id, .. } | Reply::Late { id, .. } => Some(id.0),
                Reply::Duplicate { id, .. } => {
                    return Err(format!(
                        "DUPLICATE: a second echo of request {id} (the server answered it twice)"
                    ));
                }
                // A previous run's: skipped.
                Reply::Unknown { .. } => {
                    state.unknown += 1;
                    None
                }
                Reply::Malformed { len } => {
                    return Err(format!(
                        "CORRUPT: an echo of {len} bytes, too short for an id"
                    ));
                }
            },
        };
        if let Some(id) = id {
            match state.in_flight.iter().position(|m| m.id == id) {
                Some(0) => {
                    let expected = state.in_flight[0];
                    let copy = &mut state.scratch[..expected.len];
                    write_message(expected.seq, copy);
                    if tag != expected.seq as u16 || payload[REQUEST_ID_LEN..] != copy[..] {
                        return Err(format!(
                            "CORRUPT: the echo of message {} (request {id}) differs from it \
                             ({} bytes, tag {tag}; sent {} bytes, tag {})",
                            expected.seq,
                            payload.len() - REQUEST_ID_LEN,
                            expected.len,
                            expected.seq as u16
                        ));
                    }
                    state.in_flight.pop_front();
                    state.in_flight_bytes -= expected.len;
                    state.echoes += 1;
                    state.held = None;
                }
                Some(_) => {
                    // The oldest in flight lost its echo; the next round of this loop looks at
                    // the same echo again (held: not classified twice).
                    state.held = Some(id);
                    lose_front(state, now, "a later message's echo came first")?;
                    if state.suspect_since.is_some() {
                        return Ok(moved); // waiting for the disconnect to be seen
                    }
                    continue;
                }
                None => {
                    // Its message was sent again already (lost, it seemed): the original echo
                    // turned up after all.
                    println!("late echo of request {id}, whose message was sent again: skipped");
                    state.late += 1;
                    state.held = None;
                }
            }
        }
        client
            .pop()
            .map_err(|error| format!("receiving: {error}"))?;
        moved = true;
    }
}

/// The oldest message in flight will get no echo: allowed once per server disconnect seen since
/// it was sent (it is then sent again), after [`GRACE`] for the disconnect to be seen; a gap
/// otherwise. Sets `suspect_since` while it waits.
fn lose_front(state: &mut State, now: u64, how: &str) -> Result<(), Failure> {
    let lost = state.in_flight[0];
    if lost.epoch < state.epoch && state.allowance > 0 {
        state.allowance -= 1;
        state.in_flight.pop_front();
        state.in_flight_bytes -= lost.len;
        state.resend.push_back(lost.seq);
        state.resent += 1;
        state.suspect_since = None;
        println!(
            "message {} (request {}) lost its echo in a server crash ({how}; the server pops \
             before it pushes the reply): sending it again",
            lost.seq, lost.id
        );
        return Ok(());
    }
    let since = *state.suspect_since.get_or_insert(now);
    if now.saturating_sub(since) < GRACE {
        return Ok(());
    }
    Err(format!(
        "GAP: no echo of message {} (request {}): {how}, and no crash of the server explains it",
        lost.seq, lost.id
    ))
}

/// The oldest message in flight timed out while the server was there: lost.
fn check_timeout(client: &mut Link, state: &mut State, now: u64) -> Result<(), Failure> {
    let Some(front) = state.in_flight.front() else {
        return Ok(());
    };
    if !client.is_connected() || now < front.deadline {
        return Ok(());
    }
    lose_front(state, now, "timed out")
}

/// The client over either transport: the checks above are the same for both.
#[allow(clippy::large_enum_variant)] // one per process
enum Link {
    Shm(Client<C>),
    Tcp {
        conn: Connection<C>,
        was_connected: bool,
    },
}

impl Link {
    /// `Client::poll`, or for TCP the link's own `poll` with its state changes told as the
    /// shared-memory client's events.
    fn poll(&mut self, now: u64) -> Result<Option<ClientEvent>, String> {
        match self {
            Self::Shm(client) => client.poll(now).map_err(|error| error.to_string()),
            Self::Tcp {
                conn,
                was_connected,
            } => {
                let polled = conn.poll(now).map_err(|error| error.to_string());
                let connected = conn.is_connected();
                let event = match (*was_connected, connected) {
                    (false, true) => Some(ClientEvent::Reconnected {
                        server: SegmentName::new("echo").expect("a valid name"),
                        new_session: false,
                    }),
                    (true, false) => Some(ClientEvent::Disconnected {
                        reason: polled
                            .clone()
                            .err()
                            .unwrap_or_else(|| "the TCP link was lost".into()),
                    }),
                    _ => None,
                };
                *was_connected = connected;
                match (event, polled) {
                    (Some(event), _) => Ok(Some(event)),
                    (None, polled) => polled.map(|()| None),
                }
            }
        }
    }

    fn is_connected(&self) -> bool {
        match self {
            Self::Shm(client) => client.is_connected(),
            Self::Tcp { conn, .. } => conn.is_connected(),
        }
    }
}

/// A message being written on either transport.
enum LinkSlot<'a> {
    Shm(ChannelSlot<'a, C>),
    Tcp(TcpSlot<'a, C>),
}

impl SendSlot for LinkSlot<'_> {
    fn payload_mut(&mut self) -> &mut [u8] {
        match self {
            Self::Shm(slot) => slot.payload_mut(),
            Self::Tcp(slot) => slot.payload_mut(),
        }
    }

    fn tag(&self) -> u16 {
        match self {
            Self::Shm(slot) => slot.tag(),
            Self::Tcp(slot) => slot.tag(),
        }
    }

    fn push(self) {
        match self {
            Self::Shm(slot) => slot.push(),
            Self::Tcp(slot) => slot.push(),
        }
    }
}

impl MessageSender for Link {
    type Slot<'s> = LinkSlot<'s>;

    fn alloc(&mut self, len: u32, tag: u16) -> Result<LinkSlot<'_>, SendError> {
        match self {
            Self::Shm(client) => client.alloc(len, tag).map(LinkSlot::Shm),
            Self::Tcp { conn, .. } => conn.alloc(len, tag).map(LinkSlot::Tcp),
        }
    }

    fn max_payload(&self) -> u32 {
        match self {
            Self::Shm(client) => client.max_payload(),
            Self::Tcp { conn, .. } => conn.max_payload(),
        }
    }
}

impl MessageReceiver for Link {
    fn front(&mut self) -> Result<Message<'_>, RecvError> {
        match self {
            Self::Shm(client) => client.front(),
            Self::Tcp { conn, .. } => conn.front(),
        }
    }

    fn pop(&mut self) -> Result<(), RecvError> {
        match self {
            Self::Shm(client) => client.pop(),
            Self::Tcp { conn, .. } => conn.pop(),
        }
    }
}
