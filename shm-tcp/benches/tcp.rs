//! Criterion benchmarks of shm-tcp against raw TCP, across processes over loopback, in one
//! group: the 64-byte round trip of raw TCP (non-blocking, `TCP_NODELAY`, polled) and of a
//! shm-tcp `Connection` (persisted send queue and acks; state files on a disk, and in
//! `/dev/shm`).
//!
//! `cargo bench -p shm-tcp --bench tcp`. Each measurement (`iter_custom`) starts a fresh peer
//! process (this binary, re-executed) and a fresh pair of state files, and times only the
//! exchange. For percentiles, per-round ratios, streams and the power-loss mode, run the
//! `report` bench instead (see BENCHMARKS.md).

// The report uses more of it (streams, batches, the power-loss mode) than this bench does.
#[allow(dead_code)]
mod common;

use std::time::Duration;

use common::{round_trips, run_peer_if_asked, NoTimer, OURS, OURS_SHM, RAW, WARMUP_ROUND_TRIPS};
use criterion::{BenchmarkId, Criterion, Throughput};

/// Short times so the whole bench takes well under a minute on two cores.
fn configure() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10)
        .configure_from_args()
}

fn bench_round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("round_trip");
    group.throughput(Throughput::Elements(1));
    for contender in [RAW, OURS, OURS_SHM] {
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

fn main() {
    run_peer_if_asked();
    // What a reader needs to compare these times with another machine's.
    eprintln!(
        "shm-tcp benches: CPU {}; load average {}",
        common::cpu_model(),
        common::load_average()
    );
    common::placement();
    let mut criterion = configure();
    bench_round_trip(&mut criterion);
    criterion.final_summary();
}
