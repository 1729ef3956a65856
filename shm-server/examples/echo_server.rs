//! An echo server: every request a client sends comes back to it as the reply, unchanged. Pairs
//! with the `echo_client` example, which checks every echo and exits with a failure on the first
//! gap or duplicate.
//!
//! ```sh
//! cargo run --release -p shm-server --example echo_server -- /dev/shm/echo        # terminal 1
//! cargo run --release -p shm-server --example echo_client -- /dev/shm/echo        # terminal 2
//! cargo run --release -p shm-server --example echo_client -- /dev/shm/echo bob    # more clients
//! ```
//!
//! Arguments: `echo_server FOLDER [GROUPS] [PER_GROUP]`; with `ECHO_TCP=ADDR` in the
//! environment it also serves TCP clients (`echo_client --tcp ADDR`) in the same groups, with
//! the same handler, their persisted queues in `FOLDER/tcp/`. `FOLDER` (created if missing) holds the
//! login socket `login.sock`, the lock `login.lock` and the session segments (`FOLDER/echo/`):
//! put it on tmpfs (`/dev/shm/...`) so the segments are plain shared memory; on a disk they work
//! too, as mapped files. `GROUPS` (default 2) connection groups of `PER_GROUP` (default 64)
//! connections each. The server is named `echo`; a login goes to the least loaded group, and
//! every two seconds, if one group holds two connections more than another, one connection
//! moves from the fuller to the emptier (to show a move: nothing is lost across it). Every
//! login, refusal, close and move is printed as `Control::next_event` reports it, and a line of
//! counts each second.
//!
//! One thread polls everything: `poll_group` for each group on every pass of its loop,
//! `poll_control` (logins, deaths of clients) at most once a millisecond, because its idle cost is
//! two system calls, microseconds, which would otherwise sit in front of every echo (see
//! `BENCHMARKS.md`). When a pass finds nothing to do it sleeps 50 µs, so an idle server does not
//! burn a core (a latency-critical one would spin instead).
//!
//! # Kill it, start it again
//!
//! Kill the server at any moment (`kill -9 <pid>`, or Ctrl-C) and start it again with the same
//! arguments: the folder's lock died with the old process, so the new one takes the folder, and
//! each client logs in again by itself (its `Client::poll` reconnects with back-off) to the same
//! session segment, with everything it queued meanwhile still there. Clients can be killed and
//! restarted at will as well: the server sees the login socket close and frees the name.
//!
//! # What a crash can lose: one reply (tcpshm's rule)
//!
//! For each request the group runs the handler on the request in place (which writes the echo
//! in place into the client's ring), then **pops the request (the commit), then pushes the
//! reply**. A kill between the pop and the push loses that one reply, never runs a request twice:
//! a request is popped exactly once, and the restarted server carries on with the next one. So a
//! server crash can cost a client at most one reply, and the client must allow for that: the
//! `echo_client` example notices it (a later echo arrives first, or the request times out
//! after the server came back), sends the message again, and still fails on a gap that no crash
//! of the server explains.
//!
//! That window is a few instructions wide, so a `kill -9` seldom lands in it. To see the client
//! handle it, set `ECHO_SERVER_DIE_AFTER=N`: after `N` echoes the server skips the next reply
//! (the request is popped all the same) and aborts as that poll returns, which is what a kill
//! between the pop and the push does. Start it again and the client reports the lost echo and
//! sends that message again:
//!
//! ```sh
//! ECHO_SERVER_DIE_AFTER=100000 cargo run --release -p shm-server --example echo_server -- /dev/shm/echo
//! ```
//!
//! And to see the client catch a real gap, `ECHO_SERVER_DROP_AT=N` skips the reply after `N`
//! echoes and carries on, alive: no crash explains that loss, so the client prints `GAP` and
//! exits with a failure.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use shm_channel::{monotonic_nanos, SegmentName};
use shm_server::{ConnId, Decision, Server, ServerConfig, ServerEvent};

/// Every session's ring capacity (each direction): 256 KiB. The client must be built with the
/// same (a login with another capacity is refused).
const C: usize = 256 * 1024;

/// How often the loop calls `poll_control`, at most.
const CONTROL_EVERY: u64 = 1_000_000;
/// How often a rebalancing move is considered.
const REBALANCE_EVERY: u64 = 2_000_000_000;

fn usage() -> ExitCode {
    eprintln!("usage: echo_server FOLDER [GROUPS] [PER_GROUP]   (e.g. /dev/shm/echo 2 64)");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(folder) = args.first().filter(|a| !a.starts_with('-')) else {
        return usage();
    };
    let folder = PathBuf::from(folder);
    let number = |index: usize, default: usize| match args.get(index) {
        None => Some(default),
        Some(text) => text.parse().ok().filter(|&n| n > 0),
    };
    let (Some(groups), Some(per_group)) = (number(1, 2), number(2, 64)) else {
        return usage();
    };
    // TCP clients too (`echo_client --tcp ADDR`), if `ECHO_TCP=ADDR` says where to listen.
    let tcp: Option<std::net::SocketAddr> = match std::env::var("ECHO_TCP") {
        Ok(addr) => match addr.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                eprintln!("ECHO_TCP={addr} is not an address such as 127.0.0.1:7070");
                return ExitCode::from(2);
            }
        },
        Err(_) => None,
    };
    let config = match ServerConfig::new("echo", &folder) {
        Ok(config) => {
            let config = config.groups(groups, per_group);
            match tcp {
                Some(addr) => {
                    let state = folder.join("tcp");
                    if let Err(error) = std::fs::create_dir_all(&state) {
                        eprintln!("{}: {error}", state.display());
                        return ExitCode::FAILURE;
                    }
                    config.tcp(
                        shm_tcp::AcceptorOptions::new(
                            shm_tcp::ConnectionOptions::new()
                                .dir(state)
                                // The clients' queues are as large as ours: accept their
                                // largest messages (the buffer grows to fit).
                                .receive_buffer(0, shm_tcp::Connection::<C>::MAX_PAYLOAD),
                        )
                        .listen_on(addr),
                    )
                }
                None => config,
            }
        }
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let mut server = match Server::<C>::new(config, |login| match login.least_loaded_group() {
        Some(group) => Decision::Accept { group },
        None => Decision::Reject("every group is full".into()),
    }) {
        Ok(server) => server,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "echo server (pid {}) in {}: {groups} groups of {per_group} connections, login socket {}",
        std::process::id(),
        folder.display(),
        folder.join("login.sock").display()
    );

    let die_after: Option<u64> = std::env::var("ECHO_SERVER_DIE_AFTER")
        .ok()
        .and_then(|n| n.parse().ok());
    let drop_at: Option<u64> = std::env::var("ECHO_SERVER_DROP_AT")
        .ok()
        .and_then(|n| n.parse().ok());
    let mut dying = false;
    // What control told us: each live connection's name and group.
    let mut live: HashMap<ConnId, (SegmentName, usize)> = HashMap::new();
    let mut echoed = 0u64;
    let mut dropped = 0u64;
    let (mut echoed_before, mut last_line) = (0u64, monotonic_nanos());
    let (mut next_control, mut next_rebalance) = (0u64, last_line + REBALANCE_EVERY);
    loop {
        let now = monotonic_nanos();
        let mut work = 0;
        if now >= next_control {
            next_control = now + CONTROL_EVERY;
            work += server.poll_control(now);
            while let Some(event) = server.control().next_event() {
                print_event(&event, &mut live);
            }
        }
        for group in 0..groups {
            work += server.poll_group(group, now, |request, reply| {
                // The echo, written straight into the client's ring. The group pops the request
                // once this returns, then pushes the reply.
                if dying {
                    // ECHO_SERVER_DIE_AFTER: the reply before was skipped; this request is not
                    // popped (the abort comes first), so one reply only is lost.
                    eprintln!("ECHO_SERVER_DIE_AFTER: aborting between a pop and its push");
                    std::process::abort();
                }
                if die_after.is_some_and(|n| echoed >= n) {
                    dying = true; // no reply to this one, which the group pops; abort below
                    return;
                }
                if drop_at == Some(echoed) {
                    eprintln!("ECHO_SERVER_DROP_AT: no reply to this request");
                    echoed += 1;
                    return;
                }
                match reply.send(request.tag(), request.payload()) {
                    Ok(()) => echoed += 1,
                    // The client's ring is full (it stopped reading): this reply is dropped and
                    // counted; the request is popped all the same.
                    Err(_) => dropped += 1,
                }
            });
        }
        if dying {
            println!(
                "ECHO_SERVER_DIE_AFTER: {echoed} echoes, the next request popped without its \
                 reply; aborting"
            );
            std::process::abort();
        }
        if now >= next_rebalance {
            next_rebalance = now + REBALANCE_EVERY;
            rebalance(&mut server, &live);
        }
        if now.saturating_sub(last_line) >= 1_000_000_000 {
            if echoed != echoed_before {
                println!(
                    "{:.0} echoes/s, {echoed} in all, {dropped} dropped (a client's ring full), \
                     group loads {:?}",
                    (echoed - echoed_before) as f64 * 1e9 / (now - last_line) as f64,
                    server.control().group_loads()
                );
            }
            echoed_before = echoed;
            last_line = now;
        }
        if work == 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// Prints what control did and keeps `live` up to date.
fn print_event(event: &ServerEvent, live: &mut HashMap<ConnId, (SegmentName, usize)>) {
    match event {
        ServerEvent::LoggedIn {
            id,
            name,
            group,
            pid,
            new_session,
        } => {
            println!(
                "login {id}: {name} (pid {pid}) into group {group}{}",
                if *new_session {
                    ", its session started afresh (it last knew another server name)"
                } else {
                    ""
                }
            );
            live.insert(*id, (name.clone(), *group));
        }
        ServerEvent::Rejected { name, reason } => match name {
            Some(name) => println!("refused {name}: {reason}"),
            None => println!("refused a login: {reason}"),
        },
        ServerEvent::Closed { id, name, reason } => {
            println!("closed {id}: {name} ({reason})");
            live.remove(id);
        }
        ServerEvent::Moved { id, from, to } => {
            let name = live.get(id).map_or("?", |(name, _)| name.as_str());
            println!("moved {id}: {name} from group {from} to group {to}");
            if let Some(entry) = live.get_mut(id) {
                entry.1 = *to;
            }
        }
    }
}

/// If one group holds two connections more than another, moves one from the fullest to the
/// emptiest (its `Moved` event is printed when it arrives).
fn rebalance(server: &mut Server<C>, live: &HashMap<ConnId, (SegmentName, usize)>) {
    let loads = server.control().group_loads().to_vec();
    let (Some(full), Some(empty)) = (
        (0..loads.len()).max_by_key(|&g| loads[g]),
        (0..loads.len()).min_by_key(|&g| loads[g]),
    ) else {
        return;
    };
    if loads[full] < loads[empty] + 2 {
        return;
    }
    let candidate = live
        .iter()
        .find(|(_, (_, group))| *group == full)
        .map(|(id, _)| *id);
    if let Some(id) = candidate {
        if let Err(error) = server.control().move_connection(id, empty) {
            println!("no move of {id}: {error}");
        }
    }
}
