//! Criterion benchmarks of the channel across processes, every contender in the same group: the
//! 64-byte round trip (the 8-byte and same-bytes raw floors, the channel with 1 and 16 lanes, TCP
//! loopback and a Unix socket, busy-polled and blocking) and one-way throughput of 64 B, 1 KiB
//! and 64 KiB messages.
//!
//! `cargo bench -p shm-channel --bench channel` (a filter narrows it: `-- round_trip`). Each
//! measurement (`iter_custom`) starts a fresh peer process (this binary, re-executed) and times
//! only the exchange itself. For percentiles, paired floor ratios and per-round ranges, run the
//! `report` bench instead (see BENCHMARKS.md).

mod common;

use std::time::Duration;

use common::{
    round_trips, run_peer_if_asked, stream, NoTimer, Transport, FLOOR, ROUND_TRIP_CONTENDERS,
    SAME_BYTES_FLOOR, STREAM_CONTENDERS, WARMUP_ROUND_TRIPS,
};
use criterion::{BenchmarkId, Criterion, Throughput};

/// Short times so the whole bench takes a couple of minutes on two cores.
fn configure() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .sample_size(10)
        .configure_from_args()
}

fn bench_round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("round_trip");
    group.throughput(Throughput::Elements(1));
    for contender in [FLOOR, SAME_BYTES_FLOOR]
        .into_iter()
        .chain(ROUND_TRIP_CONTENDERS)
    {
        group.bench_function(BenchmarkId::new(contender.label(), "64 B"), |b| {
            b.iter_custom(|iters| {
                round_trips(
                    contender,
                    64,
                    WARMUP_ROUND_TRIPS,
                    iters,
                    Duration::MAX,
                    &mut NoTimer,
                )
                .unwrap_or_else(|e| panic!("{}: {e}", contender.label()))
                .1
            })
        });
    }
    group.finish();
}

fn bench_throughput(c: &mut Criterion) {
    for (size, label) in [(64usize, "64 B"), (1024, "1 KiB"), (64 * 1024, "64 KiB")] {
        let mut group = c.benchmark_group(format!("throughput/{label}"));
        // Bytes per iteration (one message): criterion prints GiB/s; messages/s is 1 / time.
        group.throughput(Throughput::Bytes(size as u64));
        for contender in STREAM_CONTENDERS {
            debug_assert!(!matches!(
                contender.transport,
                Transport::Floor | Transport::SameBytesFloor
            ));
            group.bench_function(contender.label(), |b| {
                b.iter_custom(|iters| {
                    stream(contender, size, iters, Duration::MAX)
                        .unwrap_or_else(|e| panic!("{}: {e}", contender.label()))
                        .1
                })
            });
        }
        group.finish();
    }
}

fn main() {
    run_peer_if_asked();
    // What a reader needs to compare these times with another machine's.
    eprintln!(
        "shm-channel benches: CPU {}; load average {}",
        common::cpu_model(),
        common::load_average()
    );
    common::placement();
    let mut criterion = configure();
    bench_round_trip(&mut criterion);
    bench_throughput(&mut criterion);
    criterion.final_summary();
}
