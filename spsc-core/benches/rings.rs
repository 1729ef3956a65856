//! Criterion benchmarks of the rings against reference crates, every contender in the same group.
//!
//! `cargo bench -p spsc-core --bench rings` (a filter narrows it: `-- ping_pong`). Each
//! measurement (`iter_custom`) creates fresh queues and two threads pinned to two distinct CPUs,
//! and times only the loop itself. For percentiles and per-round ranges, run the `report` bench
//! instead (see BENCHMARKS.md).

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{
    fill_payload, payload_holds, ping_pong, ping_pong_floor, ping_pong_message,
    ping_pong_same_bytes_floor, stream, stream_message, Channel, Heapless, MsgRing, NoTimer, Ours,
    OursDense, Payload, Rtrb, Rx, Tx, BATCH, LANES, WARMUP_ROUND_TRIPS,
};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;

/// Short times so the whole bench finishes in a few minutes on two cores.
fn configure() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

fn ping_pong_one<T: Payload, C: Channel<T>>(group: &mut BenchmarkGroup<'_, WallTime>) {
    group.bench_function(C::NAME, |b| {
        b.iter_custom(|iters| ping_pong::<T, C, _>(WARMUP_ROUND_TRIPS, iters, NoTimer).0)
    });
}

fn ping_pong_size<T: Payload>(c: &mut Criterion, message_len: Option<u32>) {
    let mut group = c.benchmark_group(format!("ping_pong/{}", T::LABEL));
    group.throughput(Throughput::Elements(1));
    group.bench_function("floor (2 atomics)", |b| {
        b.iter_custom(|iters| ping_pong_floor(WARMUP_ROUND_TRIPS, iters, NoTimer).0)
    });
    if T::SIZE > 8 {
        // The payload and a sequence word each way: what moving `T` itself costs.
        group.bench_function("floor (same bytes)", |b| {
            b.iter_custom(|iters| {
                ping_pong_same_bytes_floor::<T, _>(1, WARMUP_ROUND_TRIPS, iters, NoTimer).0
            })
        });
    }
    ping_pong_one::<T, Ours<T>>(&mut group);
    ping_pong_one::<T, OursDense<T>>(&mut group);
    ping_pong_one::<T, Rtrb<T>>(&mut group);
    ping_pong_one::<T, Heapless<T>>(&mut group);
    ping_pong_one::<T, ArrayQueue<T>>(&mut group);
    if let Some(len) = message_len {
        group.bench_function("spsc_core::MessageRing", |b| {
            b.iter_custom(|iters| {
                ping_pong_message::<1, _>(len, WARMUP_ROUND_TRIPS, iters, NoTimer).0
            })
        });
        group.bench_function("spsc_core::MessageRing, 16 lanes", |b| {
            b.iter_custom(|iters| {
                ping_pong_message::<LANES, _>(len, WARMUP_ROUND_TRIPS, iters, NoTimer).0
            })
        });
    }
    group.finish();
}

fn bench_ping_pong(c: &mut Criterion) {
    ping_pong_size::<u64>(c, Some(8));
    ping_pong_size::<[u8; 64]>(c, Some(64));
    let mut group = c.benchmark_group("ping_pong/1 KiB");
    group.bench_function("floor (2 atomics)", |b| {
        b.iter_custom(|iters| ping_pong_floor(WARMUP_ROUND_TRIPS, iters, NoTimer).0)
    });
    group.bench_function("spsc_core::MessageRing", |b| {
        b.iter_custom(|iters| ping_pong_message::<1, _>(1024, WARMUP_ROUND_TRIPS, iters, NoTimer).0)
    });
    group.bench_function("spsc_core::MessageRing, 16 lanes", |b| {
        b.iter_custom(|iters| {
            ping_pong_message::<LANES, _>(1024, WARMUP_ROUND_TRIPS, iters, NoTimer).0
        })
    });
    group.finish();
}

fn stream_one<T: Payload, C: Channel<T>>(group: &mut BenchmarkGroup<'_, WallTime>, batch: bool) {
    let name = if batch && !C::NATIVE_BATCH {
        format!("{} (single ops)", C::NAME)
    } else {
        C::NAME.to_string()
    };
    group.bench_function(name, |b| {
        b.iter_custom(|iters| stream::<T, C>(iters, Duration::MAX, batch).1)
    });
}

fn stream_size<T: Payload>(c: &mut Criterion, batch: bool) {
    let kind = if batch { "batch" } else { "single" };
    let mut group = c.benchmark_group(format!("stream_{kind}/{}", T::LABEL));
    group.throughput(Throughput::Elements(1));
    stream_one::<T, Ours<T>>(&mut group, batch);
    stream_one::<T, OursDense<T>>(&mut group, batch);
    stream_one::<T, Rtrb<T>>(&mut group, batch);
    stream_one::<T, Heapless<T>>(&mut group, batch);
    stream_one::<T, ArrayQueue<T>>(&mut group, batch);
    group.finish();
}

fn bench_stream(c: &mut Criterion) {
    for batch in [false, true] {
        stream_size::<u64>(c, batch);
        stream_size::<[u8; 64]>(c, batch);
    }
}

fn bench_message_stream(c: &mut Criterion) {
    for len in [64u32, 1024] {
        let mut group = c.benchmark_group(format!("stream_message/{len} B"));
        group.throughput(Throughput::Bytes(u64::from(len)));
        group.bench_function("spsc_core::MessageRing", |b| {
            b.iter_custom(|iters| stream_message::<1>(len, iters, Duration::MAX).1)
        });
        group.bench_function("spsc_core::MessageRing, 16 lanes", |b| {
            b.iter_custom(|iters| stream_message::<LANES>(len, iters, Duration::MAX).1)
        });
        if len == 64 {
            // The element ring of the same payload, for the "≥ half of Ring<[u8; 64]>" target.
            stream_one::<[u8; 64], Ours<[u8; 64]>>(&mut group, false);
        }
        group.finish();
    }
}

/// One thread pushes a batch and pops it back, so every line stays in its own cache: what is
/// measured is the instructions of the batch calls alone, which the two-thread streams hide
/// behind line transfers.
fn batch_cpu_one<T: Payload, C: Channel<T>>(group: &mut BenchmarkGroup<'_, WallTime>) {
    group.bench_function(C::NAME, |b| {
        let mut queue = C::create();
        let (mut tx, mut rx) = queue.split();
        let items: Vec<T> = (0..BATCH as u64).map(T::from_seq).collect();
        let mut out = vec![T::from_seq(0); BATCH];
        b.iter(|| {
            let pushed = tx.push_batch(black_box(&items));
            let popped = rx.pop_batch(black_box(&mut out));
            assert_eq!(
                pushed, popped,
                "a batch pushed into an empty ring pops whole"
            );
            black_box(&out);
        })
    });
}

/// The same with single operations: `BATCH` pushes, then `BATCH` pops, on one thread. In the
/// two-thread streams the slower side's instructions set the rate whenever the queue settles
/// near-full (the consumer) or near-empty (the producer).
fn single_cpu_one<T: Payload, C: Channel<T>>(group: &mut BenchmarkGroup<'_, WallTime>) {
    group.bench_function(C::NAME, |b| {
        let mut queue = C::create();
        let (mut tx, mut rx) = queue.split();
        b.iter(|| {
            for seq in 0..BATCH as u64 {
                assert!(
                    tx.try_push(black_box(T::from_seq(seq))).is_ok(),
                    "a batch fits an empty ring"
                );
            }
            for seq in 0..BATCH as u64 {
                let value = rx.try_pop().expect("every pushed value pops");
                assert!(black_box(value).holds(seq), "in order");
            }
        })
    });
}

/// The message ring's send and receive of `BATCH` messages of `len` bytes on one thread (alloc,
/// fill, push; then front, read every word, pop), beside the element rings of the same size.
fn message_cpu(group: &mut BenchmarkGroup<'_, WallTime>, len: u32) {
    use spsc_core::{MessageReceiver, MessageRing, MessageSender, SendSlot};
    group.bench_function("spsc_core::MessageRing", |b| {
        let mut ring: Box<MsgRing> = Box::new(MessageRing::new());
        let (mut tx, mut rx) = ring.split();
        b.iter(|| {
            for seq in 0..BATCH as u64 {
                let mut slot = tx.alloc(len, 1).expect("a batch fits an empty ring");
                fill_payload(slot.payload_mut(), black_box(seq));
                slot.push();
            }
            for seq in 0..BATCH as u64 {
                let message = rx.front().expect("every sent message is received");
                assert!(payload_holds(message.payload(), seq), "in order");
                rx.pop().expect("front was there");
            }
        })
    });
}

fn cpu_size<T: Payload>(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("batch_cpu/{}", T::LABEL));
    group.throughput(Throughput::Elements(BATCH as u64));
    batch_cpu_one::<T, Ours<T>>(&mut group);
    batch_cpu_one::<T, OursDense<T>>(&mut group);
    batch_cpu_one::<T, Rtrb<T>>(&mut group);
    group.finish();
    let mut group = c.benchmark_group(format!("single_cpu/{}", T::LABEL));
    group.throughput(Throughput::Elements(BATCH as u64));
    single_cpu_one::<T, Ours<T>>(&mut group);
    single_cpu_one::<T, OursDense<T>>(&mut group);
    single_cpu_one::<T, Rtrb<T>>(&mut group);
    if let Ok(len) = u32::try_from(core::mem::size_of::<T>()) {
        message_cpu(&mut group, len);
    }
    group.finish();
}

fn bench_cpu(c: &mut Criterion) {
    cpu_size::<u64>(c);
    cpu_size::<[u8; 64]>(c);
}

criterion_group! {
    name = benches;
    config = configure();
    targets = bench_ping_pong, bench_stream, bench_message_stream, bench_cpu
}
criterion_main!(benches);
