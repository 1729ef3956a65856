//! Two threads ping-pong a message through a pair of rings and print round-trip percentiles:
//! our `Ring<u64, _>`, our `MessageRing` with 64-byte messages (one lane, and 16 lanes when the
//! payload fits a lane), and a raw two-atomic exchange (the hardware floor: one cache line moving
//! each way, nothing else).
//!
//! ```text
//! cargo run --release -p spsc-core --example ring_pingpong -- [round_trips] [payload_bytes]
//! ```
//!
//! Defaults: 200 000 round trips, 64-byte message payloads. Each round trip is timed with
//! `Instant` (about 20 ns of timer cost is included in every figure, the floor's too), and every
//! byte of every echoed message is checked. The criterion and report benches (`cargo bench -p
//! spsc-core`) measure more carefully; the report also runs a floor that moves a 64-byte payload
//! and a sequence word, the fairer reference for 64-byte messages (BENCHMARKS.md).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use spsc_core::{
    spin_hint, CachePadded, MessageReceiver, MessageRing, MessageSender, Ring, SendSlot,
};

/// Round-trip latencies of one contender, sorted.
struct Samples(Vec<u32>);

impl Samples {
    fn quantile(&self, q: f64) -> u32 {
        let index = ((self.0.len() - 1) as f64 * q).round() as usize;
        self.0[index]
    }

    fn print(&self, name: &str, floor_p50: Option<u32>, elapsed: Duration) {
        let p50 = self.quantile(0.5);
        let ratio = floor_p50.map_or(String::from("1.00x (floor)"), |floor| {
            format!("{:.2}x floor", f64::from(p50) / f64::from(floor.max(1)))
        });
        println!(
            "{name:<28} p50 {p50:>6} ns  p99 {:>6} ns  p99.9 {:>7} ns  max {:>8} ns  {:>7.2} M round trips/s  {ratio}",
            self.quantile(0.99),
            self.quantile(0.999),
            self.0[self.0.len() - 1],
            self.0.len() as f64 / elapsed.as_secs_f64() / 1e6,
        );
    }
}

/// Runs `round_trips` timed exchanges: `ping(i)` sends and waits for the echo of `i`.
fn measure(round_trips: usize, mut ping: impl FnMut(u64)) -> (Samples, Duration) {
    for i in 0..(round_trips / 10) as u64 {
        ping(i); // warm-up: caches, branch predictors, CPU frequency
    }
    let mut samples = Vec::with_capacity(round_trips);
    let started = Instant::now();
    for i in 0..round_trips as u64 {
        let t0 = Instant::now();
        ping(i);
        samples.push(t0.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
    }
    let elapsed = started.elapsed();
    samples.sort_unstable();
    (Samples(samples), elapsed)
}

fn floor(round_trips: usize) -> (Samples, Duration) {
    let ping = Arc::new(CachePadded(AtomicU64::new(u64::MAX)));
    let pong = Arc::new(CachePadded(AtomicU64::new(u64::MAX)));
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let (ping, pong, stop) = (ping.clone(), pong.clone(), stop.clone());
        thread::spawn(move || {
            let mut last = u64::MAX;
            while !stop.load(Ordering::Relaxed) {
                let seen = ping.load(Ordering::Acquire);
                if seen != last {
                    last = seen;
                    pong.store(seen, Ordering::Release);
                } else {
                    spin_hint();
                }
            }
        })
    };
    let result = measure(round_trips, |i| {
        ping.store(i, Ordering::Release);
        while pong.load(Ordering::Acquire) != i {
            spin_hint();
        }
    });
    stop.store(true, Ordering::Relaxed);
    echo.join().expect("echo thread");
    result
}

fn ring_u64(round_trips: usize) -> (Samples, Duration) {
    static THERE: Ring<u64, 1024> = Ring::new();
    static BACK: Ring<u64, 1024> = Ring::new();
    let owner = std::num::NonZeroU32::MIN;
    let (mut there, mut back) = (
        THERE.claim_producer(owner).unwrap(),
        BACK.claim_consumer(owner).unwrap(),
    );
    let echo = thread::spawn(move || {
        let (mut rx, mut tx) = (
            THERE.claim_consumer(owner).unwrap(),
            BACK.claim_producer(owner).unwrap(),
        );
        loop {
            match rx.pop() {
                Some(u64::MAX) => return,
                Some(value) => while tx.push(value).is_err() {},
                None => spin_hint(),
            }
        }
    });
    let result = measure(round_trips, |i| {
        there.push(i).unwrap();
        loop {
            match back.pop() {
                Some(value) => break assert_eq!(value, i),
                None => spin_hint(),
            }
        }
    });
    there.push(u64::MAX).unwrap();
    echo.join().expect("echo thread");
    result
}

/// Writes `i` into every 8-byte word of `bytes` (and its low bytes into a shorter tail).
fn fill(bytes: &mut [u8], i: u64) {
    for word in bytes.chunks_mut(8) {
        word.copy_from_slice(&i.to_le_bytes()[..word.len()]);
    }
}

/// Whether `bytes` holds what [`fill`] wrote for `i`.
fn holds(bytes: &[u8], i: u64) -> bool {
    bytes
        .chunks(8)
        .all(|word| word == &i.to_le_bytes()[..word.len()])
}

/// Capacity of each message ring.
const MESSAGE_RING_BYTES: usize = 1 << 16;

fn message_ring<const L: usize>(round_trips: usize, payload: u32) -> (Samples, Duration) {
    // Leaked: the echo thread needs the rings for `'static`, and they live until exit anyway.
    let there_ring: &'static MessageRing<MESSAGE_RING_BYTES, L> =
        Box::leak(Box::new(MessageRing::new()));
    let back_ring: &'static MessageRing<MESSAGE_RING_BYTES, L> =
        Box::leak(Box::new(MessageRing::new()));
    const STOP: u16 = 1;
    let owner = std::num::NonZeroU32::MIN;
    let (mut there, mut back) = (
        there_ring.claim_producer(owner).unwrap(),
        back_ring.claim_consumer(owner).unwrap(),
    );
    let echo = thread::spawn(move || {
        let (mut rx, mut tx) = (
            there_ring.claim_consumer(owner).unwrap(),
            back_ring.claim_producer(owner).unwrap(),
        );
        loop {
            let Ok(message) = rx.front() else {
                spin_hint();
                continue;
            };
            if message.tag() == STOP {
                return;
            }
            // Echo in place: copy the payload straight into the reply's slot.
            let mut reply = loop {
                if let Ok(slot) = tx.alloc(message.len() as u32, 0) {
                    break slot;
                }
            };
            reply.payload_mut().copy_from_slice(message.payload());
            reply.push();
            rx.pop().unwrap();
        }
    });
    let result = measure(round_trips, |i| {
        let mut slot = there.alloc(payload, 0).unwrap();
        fill(slot.payload_mut(), i);
        slot.push();
        loop {
            match back.front() {
                Ok(echoed) => {
                    // Every byte is checked, so the whole message is read back, not its first word.
                    assert!(holds(echoed.payload(), i), "echo out of order or torn");
                    break;
                }
                Err(_) => spin_hint(),
            }
        }
        back.pop().unwrap();
    });
    there.send(STOP, &[]).unwrap();
    echo.join().expect("echo thread");
    result
}

fn main() {
    let mut args = std::env::args().skip(1);
    let round_trips: usize = args
        .next()
        .map_or(200_000, |a| a.parse().expect("round_trips: a number"));
    let payload: u32 = args
        .next()
        .map_or(64, |a| a.parse().expect("payload_bytes: a number"));
    assert!(round_trips >= 10, "round_trips must be at least 10");
    assert!(
        payload <= MessageRing::<MESSAGE_RING_BYTES>::MAX_PAYLOAD,
        "payload_bytes must be at most {}",
        MessageRing::<MESSAGE_RING_BYTES>::MAX_PAYLOAD
    );
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    println!("in-process ping-pong: {round_trips} round trips, {cpus} CPUs available");
    if cpus < 2 {
        println!("note: fewer than 2 CPUs; two spinning threads will share one and latencies will be poor");
    }
    let (floor_samples, elapsed) = floor(round_trips);
    floor_samples.print("raw two-atomic (floor)", None, elapsed);
    let floor_p50 = Some(floor_samples.quantile(0.5));
    let (samples, elapsed) = ring_u64(round_trips);
    samples.print("Ring<u64>", floor_p50, elapsed);
    let (samples, elapsed) = message_ring::<1>(round_trips, payload);
    samples.print(&format!("MessageRing {payload} B"), floor_p50, elapsed);
    if payload <= MessageRing::<MESSAGE_RING_BYTES, 16>::MAX_PAYLOAD {
        let (samples, elapsed) = message_ring::<16>(round_trips, payload);
        samples.print(
            &format!("MessageRing {payload} B, 16 lanes"),
            floor_p50,
            elapsed,
        );
    }
}
