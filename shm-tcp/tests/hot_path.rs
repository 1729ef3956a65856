//! The hot path allocates nothing: on a connected loopback pair, in one thread, `alloc`/`push`,
//! `front`/`pop` and `poll(now)` (the connections', the acceptor's and a login listener's) run
//! under a counting global allocator, and after a warm-up the count of allocations during
//! thousands of rounds must be exactly zero. (The style of `shm-channel/tests/hot_path.rs`.)

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::{loopback_pair, now};
use shm_tcp::{Acceptor, ConnId, Connection, ConnectionOptions};
use spsc_core::{MessageReceiver, MessageSender, RecvError, SendSlot};

/// Counts the allocations of threads that have counting switched on (see `allocations_during`):
/// per thread, so tests running in parallel do not count each other's.
struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with`: during thread teardown the locals may be gone; nothing is being measured then.
    let _ = COUNTING.try_with(|counting| {
        if counting.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counting is a side
// effect on const-initialised thread locals, which allocates nothing.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: forwarded with the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: forwarded unchanged; `ptr` and `layout` are the caller's, from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Runs `body` on this thread with allocation counting on, and returns how many allocations it
/// made.
fn allocations_during(body: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    body();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn the_counter_sees_allocations() {
    // Guards against a vacuous pass: the same measurement does see a real allocation.
    let count = allocations_during(|| drop(std::hint::black_box(vec![1u8; 64])));
    assert_eq!(count, 1);
    // And the error path of this crate does allocate (its messages are formatted), so a test
    // that hit an error inside the measured loop could not pass by accident.
    let count = allocations_during(|| {
        let _ = std::hint::black_box(
            shm_tcp::ConnectionError::Protocol {
                peer: None,
                reason: format!("{}", std::hint::black_box(7)),
            }
            .to_string(),
        );
    });
    assert!(count > 0);
}

const C: usize = 1 << 16;

/// Polls the acceptor and both connections once (what an application's loop does).
fn poll_all(acceptor: &mut Acceptor<C>, id: ConnId, client: &mut Connection<C>, t: u64) {
    assert!(acceptor.poll(t, |_| Ok(())).is_none());
    acceptor.connection(id).unwrap().poll(t).unwrap();
    client.poll(t).unwrap();
}

/// Sends `payload` with `tag` from `tx`, polling until it is taken (the queue may be full
/// until acknowledgements come).
fn push(tx: &mut Connection<C>, tag: u16, payload: &[u8]) {
    let mut slot = tx.alloc(payload.len() as u32, tag).unwrap();
    slot.payload_mut().copy_from_slice(payload);
    slot.push();
}

/// Receives one message at `rx`, polling `rx` until it arrives; returns the sum of its bytes.
fn receive(rx: &mut Connection<C>, tag: u16, len: usize) -> u64 {
    loop {
        match rx.front() {
            Ok(message) => {
                assert_eq!((message.tag(), message.payload().len()), (tag, len));
                let sum = message.payload().iter().map(|&b| u64::from(b)).sum();
                rx.pop().unwrap();
                return sum;
            }
            Err(RecvError::Empty) => rx.poll(now()).unwrap(),
            Err(other) => panic!("{other:?}"),
        }
    }
}

/// `rounds` round trips of both directions on the pair, polling everything each round.
fn exchange(
    acceptor: &mut Acceptor<C>,
    id: ConnId,
    client: &mut Connection<C>,
    rounds: u32,
) -> u64 {
    let small = [7u8; 40];
    let large = [1u8; 3000];
    let mut checksum = 0u64;
    for round in 0..rounds {
        let t = now();
        poll_all(acceptor, id, client, t);
        // Client to acceptor: a small message and a large one.
        push(client, 1, &small);
        push(client, 2, &large);
        let server = acceptor.connection(id).unwrap();
        checksum += receive(server, 1, small.len());
        checksum += receive(server, 2, large.len());
        // Acceptor to client, with `send` (the MessageSender's copying helper) for variety.
        server.send(3, &round.to_le_bytes()).unwrap();
        checksum += receive(client, 3, 4);
        // A burst of three published with push_more and written with one flush.
        for _ in 0..3 {
            let mut slot = server.alloc(16, 4).unwrap();
            slot.payload_mut().fill(2);
            slot.push_more();
        }
        server.flush_queued().unwrap();
        for _ in 0..3 {
            checksum += receive(client, 4, 16);
        }
    }
    checksum
}

#[test]
fn send_receive_and_poll_allocate_nothing_in_steady_state() {
    let dir = tempfile::tempdir().unwrap();
    // A heartbeat interval short enough that heartbeats go out during the measured loop too.
    let options = ConnectionOptions::new().heartbeat_interval_ns(200_000);
    let (mut acceptor, mut client, id) = loopback_pair::<C>(dir.path(), options);
    // Warm-up: every path runs once (acks, wrap of both queues and receive buffers).
    exchange(&mut acceptor, id, &mut client, 300);
    let rounds = 3000;
    let mut checksum = 0;
    let count = allocations_during(|| {
        checksum = exchange(&mut acceptor, id, &mut client, rounds);
    });
    let round_bytes: u64 = (0..rounds)
        .map(|r| r.to_le_bytes().iter().map(|&b| u64::from(b)).sum::<u64>())
        .sum();
    assert_eq!(
        checksum,
        u64::from(rounds) * (40 * 7 + 3000 + 3 * 16 * 2) + round_bytes
    );
    assert_eq!(count, 0, "the connected send/receive/poll path allocated");
    // Both stayed connected throughout, and the queues were wrapped many times over.
    let server = acceptor.connection(id).unwrap();
    assert!(client.is_connected() && server.is_connected());
    assert_eq!(client.stats().handshakes, 1);
    // 3300 rounds of 3 KiB: the 64 KiB queues wrapped many times over.
    assert_eq!(client.next_seq(), 2 * 3300);
    assert!(client.stats().writes > 0 && server.stats().writes > 0);
}

#[test]
fn idle_polling_allocates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let options = ConnectionOptions::new().heartbeat_interval_ns(100_000);
    let (mut acceptor, mut client, id) = loopback_pair::<C>(dir.path(), options);
    exchange(&mut acceptor, id, &mut client, 10);
    let writes_before = client.stats().writes;
    let count = allocations_during(|| {
        let start = now();
        // Heartbeats each way every 100 µs, for 50 ms.
        while now() - start < 50_000_000 {
            poll_all(&mut acceptor, id, &mut client, now());
            assert!(matches!(client.front(), Err(RecvError::Empty)));
        }
    });
    assert_eq!(count, 0, "idle polling (heartbeats included) allocated");
    assert!(client.is_connected());
    assert!(
        client.stats().writes - writes_before > 10,
        "heartbeats were measured too"
    );
}

#[test]
fn pushing_into_a_full_queue_allocates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut acceptor, mut client, id) = loopback_pair::<C>(dir.path(), ConnectionOptions::new());
    exchange(&mut acceptor, id, &mut client, 10);
    // Fill the client's queue while the acceptor's side does not pop.
    let payload = [9u8; 1000];
    let mut pushed = 0u32;
    loop {
        let t = now();
        poll_all(&mut acceptor, id, &mut client, t);
        match client.alloc(payload.len() as u32, 5) {
            Ok(mut slot) => {
                slot.payload_mut().copy_from_slice(&payload);
                slot.push();
                pushed += 1;
            }
            Err(spsc_core::SendError::Full) => break,
            Err(other) => panic!("{other:?}"),
        }
    }
    let count = allocations_during(|| {
        for _ in 0..2000 {
            poll_all(&mut acceptor, id, &mut client, now());
            assert!(matches!(
                client.alloc(payload.len() as u32, 5),
                Err(spsc_core::SendError::Full)
            ));
        }
    });
    assert_eq!(count, 0, "a full queue's alloc and poll allocated");
    // Then the acceptor's side pops everything, still without allocating.
    let count = allocations_during(|| {
        let server = acceptor.connection(id).unwrap();
        for _ in 0..pushed {
            receive(server, 5, payload.len());
        }
    });
    assert_eq!(count, 0);
}

#[test]
fn a_login_listener_with_silent_sockets_polls_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let options = shm_tcp::AcceptorOptions::new(ConnectionOptions::new().dir(dir.path()));
    let mut listener = shm_tcp::LoginListener::bind("server", "day1", &options).unwrap();
    // Two sockets that connect and say nothing (accepted, read each poll), one half a frame.
    let silent: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(listener.local_addr()).unwrap())
        .collect();
    std::io::Write::write_all(&mut &silent[1], &[1, 0, 0, 0]).unwrap();
    let start = now();
    while listener.pending() < 2 {
        assert!(listener.poll(now()).is_none());
        assert!(
            now() - start < 5_000_000_000,
            "the sockets were never accepted"
        );
    }
    let count = allocations_during(|| {
        for _ in 0..2000 {
            assert!(listener.poll(now()).is_none());
        }
    });
    assert_eq!(count, 0, "an idle listener's poll allocated");
    assert_eq!(listener.pending(), 2);
}
