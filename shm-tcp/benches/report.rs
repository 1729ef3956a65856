//! The interleaved-rounds report of shm-tcp against raw TCP, both over loopback between two
//! processes, each single-threaded and busy-polling: the 64-byte round trip (state files on a
//! disk and in `/dev/shm`, and with `Durability::PowerLoss`), and a one-way stream of 64-byte
//! messages (one message per `push` / `write`, and 64 per `flush_queued` / `write`).
//!
//! Every trial pairs one shm-tcp contender with its raw TCP reference in the same two processes,
//! alternating blocks of 25 ms on the two links (`common`'s docs), and every round runs each
//! pair once, in an order rotated each round, so slow drifts of the machine hit all of them
//! alike. Every ratio is taken within one trial, against the reference blocks of that trial,
//! and reported as the median over the rounds with its range. Prints the CPU, the load, the
//! state folders' file system, markdown tables with percentiles, and the targets as
//! ratios within the same run, PASS or MISS; nothing is asserted on timings.
//!
//! `cargo bench -p shm-tcp --bench report`; `SHM_BENCH_QUICK=1` for a run under 30 s,
//! `SHM_BENCH_ROUNDS=N` to change the number of rounds (default 7, quick 3),
//! `SHM_BENCH_ONLY=rt` or `s64` for one scenario, `SHM_BENCH_CONTENDERS=ours,ours64` for some
//! pairs (by the shm-tcp contender's code), `SHM_TCP_BENCH_DIR=/path` for the state folders of
//! the on-disk contenders (default: the system's temporary folder), `SHM_TCP_BENCH_QUEUE_KIB=64`
//! for 64 KiB send queues instead of 1 MiB.

mod common;

use std::time::{Duration, Instant};

use common::{
    cpu_model, disk_base, load_average, ours, paired_round_trips, paired_stream, placement,
    queue_bytes, run_peer_if_asked, Contender, Measured, RoundTripTimer, BATCH, BLOCK, OURS,
    OURS_BATCH, OURS_SHM, OURS_SYNC, OURS_SYNC_BATCH, QUEUE_ENV, RAW, RAW_BATCH, SYNC_WARMUP,
    WARMUP_MESSAGES, WARMUP_ROUND_TRIPS,
};
use hdrhistogram::Histogram;

/// Round-trip and streaming message size (the targets are for 64 bytes).
const SIZE: usize = 64;
/// The round-trip target: shm-tcp's p50 ÷ raw TCP's, at most.
const RT_TARGET: f64 = 1.05;
/// The streaming target: shm-tcp's batched rate ÷ raw TCP's 64-per-write rate, at least.
const STREAM_TARGET: f64 = 0.8;
/// System calls that wait for the disk in a power-loss round trip: each side's push (`msync`
/// of the send queue) and pop (`msync` of the header).
const MSYNCS_PER_ROUND_TRIP: f64 = 4.0;

/// The round-trip pairs: (raw reference, shm-tcp contender).
const RT_PAIRS: [(Contender, Contender); 3] = [(RAW, OURS), (RAW, OURS_SHM), (RAW, OURS_SYNC)];
/// The streaming pairs: each shm-tcp contender with raw TCP writing as many messages at once.
const STREAM_PAIRS: [(Contender, Contender); 4] = [
    (RAW, OURS),
    (RAW_BATCH, OURS_BATCH),
    (RAW, OURS_SYNC),
    (RAW_BATCH, OURS_SYNC_BATCH),
];

// ---------------------------------------------------------------------------------------------
// Configuration and results
// ---------------------------------------------------------------------------------------------

struct Config {
    quick: bool,
    rounds: usize,
    rt_warmup: u64,
    rt_budget: Duration,
    stream_budget: Duration,
    /// `SHM_BENCH_ONLY`: the scenario keys to run (`rt`, `s64`); all if unset.
    only: Option<Vec<String>>,
    /// `SHM_BENCH_CONTENDERS`: the shm-tcp contenders whose pairs run (`ours`, `ours-shm`,
    /// `ours-sync`, `ours64`, `ours-sync64`); all if unset.
    contenders: Option<Vec<String>>,
}

impl Config {
    fn from_env() -> Self {
        let quick = std::env::var("SHM_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let rounds = std::env::var("SHM_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&r| r > 0)
            .unwrap_or(if quick { 3 } else { 7 });
        let list = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.split(',').map(|k| k.trim().to_string()).collect())
        };
        Self {
            quick,
            rounds,
            rt_warmup: if quick { 500 } else { WARMUP_ROUND_TRIPS },
            rt_budget: Duration::from_millis(if quick { 200 } else { 800 }),
            stream_budget: Duration::from_millis(if quick { 150 } else { 500 }),
            only: list("SHM_BENCH_ONLY"),
            contenders: list("SHM_BENCH_CONTENDERS"),
        }
    }

    fn runs(&self, key: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|keys| keys.iter().any(|k| k == key))
    }

    fn keeps(&self, contender: Contender) -> bool {
        self.contenders
            .as_ref()
            .is_none_or(|codes| codes.iter().any(|c| c == contender.code()))
    }
}

/// Records every round trip in nanoseconds (`Instant`: its ~20-30 ns are in every number, a
/// fraction of a per-mille of a TCP round trip).
struct HistTimer {
    hist: Histogram<u64>,
}

impl RoundTripTimer for HistTimer {
    #[inline(always)]
    fn start(&mut self) -> Option<Instant> {
        Some(Instant::now())
    }
    #[inline(always)]
    fn stop(&mut self, t0: Option<Instant>) {
        if let Some(t0) = t0 {
            let ns = t0.elapsed().as_nanos();
            self.hist
                .saturating_record(u64::try_from(ns).unwrap_or(u64::MAX));
        }
    }
}

/// A histogram of nanoseconds from 1 ns to 60 s, 3 significant digits (fixed bounds: an
/// auto-resizing histogram's `saturating_record` clamps instead of resizing).
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

fn p50(hist: &Histogram<u64>) -> f64 {
    hist.value_at_quantile(0.5) as f64
}

/// One side of a paired round-trip trial.
struct Side {
    hist: Histogram<u64>,
    measured: Measured,
}

/// A round-trip pair's trials, one per round: `[reference, contender]` each.
struct RtPair {
    reference: Contender,
    contender: Contender,
    trials: Vec<[Side; 2]>,
}

impl RtPair {
    /// Per trial: the side's p50.
    fn p50s(&self, side: usize) -> Vec<f64> {
        self.trials.iter().map(|t| p50(&t[side].hist)).collect()
    }

    /// Per trial: the contender's p50 ÷ the reference's.
    fn ratios(&self) -> Vec<f64> {
        per_round(&self.p50s(1), &self.p50s(0))
    }
}

/// A streaming pair's trials, one per round: `[reference, contender]` each.
struct StreamPair {
    reference: Contender,
    contender: Contender,
    trials: Vec<[Measured; 2]>,
}

fn rate(measured: &Measured) -> f64 {
    measured.count as f64 / measured.elapsed.as_secs_f64().max(1e-9)
}

impl StreamPair {
    /// Per trial: the side's rate, messages per second.
    fn rates(&self, side: usize) -> Vec<f64> {
        self.trials.iter().map(|t| rate(&t[side])).collect()
    }

    /// Per trial: the contender's rate ÷ the reference's.
    fn ratios(&self) -> Vec<f64> {
        per_round(&self.rates(1), &self.rates(0))
    }
}

/// Per round: `a[i] / b[i]`.
fn per_round(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| a / b.max(1e-9)).collect()
}

// ---------------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------------

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// A ratio to two decimals, or to two significant digits below 0.1 (a power-loss stream runs at
/// a thousandth of raw TCP's rate).
fn ratio(value: f64) -> String {
    if value >= 0.1 || value == 0.0 || !value.is_finite() {
        format!("{value:.2}")
    } else {
        let digits = (1.0 - value.log10().floor()).max(0.0) as usize;
        format!("{value:.digits$}")
    }
}

fn ratio_cell(ratios: &[f64]) -> String {
    let (lo, hi) = min_max(ratios);
    format!("{}× ({}–{})", ratio(median(ratios)), ratio(lo), ratio(hi))
}

fn ns_cell(ns: f64) -> String {
    if ns < 10_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 10_000_000.0 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{:.1} ms", ns / 1e6)
    }
}

fn rate_cell(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2} M", rate / 1e6)
    } else {
        format!("{:.1} k", rate / 1e3)
    }
}

fn verdict(pass: bool, margin: f64) -> String {
    if pass {
        format!("PASS ({:.1}% to spare)", margin.abs() * 100.0)
    } else {
        format!("MISS by {:.1}%", margin.abs() * 100.0)
    }
}

fn main() {
    run_peer_if_asked();
    let config = Config::from_env();
    let started = Instant::now();
    let load_before = load_average();
    let place = placement();

    let mut rts: Vec<RtPair> = RT_PAIRS
        .iter()
        .filter(|(_, c)| config.runs("rt") && config.keeps(*c))
        .map(|&(reference, contender)| RtPair {
            reference,
            contender,
            trials: Vec::new(),
        })
        .collect();
    let mut streams: Vec<StreamPair> = STREAM_PAIRS
        .iter()
        .filter(|(_, c)| config.runs("s64") && config.keeps(*c))
        .map(|&(reference, contender)| StreamPair {
            reference,
            contender,
            trials: Vec::new(),
        })
        .collect();

    for round in 0..config.rounds {
        eprintln!(
            "round {}/{} ({:.0} s so far)",
            round + 1,
            config.rounds,
            started.elapsed().as_secs_f64()
        );
        let k = rts.len();
        for i in 0..k {
            let pair = &mut rts[(round + i) % k];
            let mut timers = [
                HistTimer {
                    hist: new_histogram(),
                },
                HistTimer {
                    hist: new_histogram(),
                },
            ];
            let measured = paired_round_trips(
                pair.reference,
                pair.contender,
                SIZE,
                config.rt_warmup,
                config.rt_budget,
                &mut timers,
            )
            .unwrap_or_else(|e| panic!("{} round trips: {e}", pair.contender.label()));
            let [a, b] = timers;
            pair.trials.push([
                Side {
                    hist: a.hist,
                    measured: measured[0],
                },
                Side {
                    hist: b.hist,
                    measured: measured[1],
                },
            ]);
        }
        let k = streams.len();
        for i in 0..k {
            let pair = &mut streams[(round + i) % k];
            let measured =
                paired_stream(pair.reference, pair.contender, SIZE, config.stream_budget)
                    .unwrap_or_else(|e| panic!("{} stream: {e}", pair.contender.label()));
            pair.trials.push(measured);
        }
    }

    let loads = (load_before, load_average());
    print_header(&config, &place, &loads);
    if !rts.is_empty() {
        print_round_trips(&rts);
    }
    if !streams.is_empty() {
        print_streams(&streams);
    }
    print_durability(&rts, &streams);
    print_targets(&rts, &streams);
    println!(
        "Total time {:.1} s. Compare contenders within one run only.",
        started.elapsed().as_secs_f64()
    );
}

fn print_header(config: &Config, place: &common::Placement, loads: &(String, String)) {
    println!();
    println!(
        "### shm-tcp report: {} round(s){}",
        config.rounds,
        if config.quick {
            " (QUICK: short trials)"
        } else {
            ""
        }
    );
    println!();
    println!("- CPU: {}", cpu_model());
    println!(
        "- load average (1, 5, 15 min) at the start {}, at the end {}",
        loads.0, loads.1
    );
    println!(
        "- {}; {}",
        match place.cpus {
            Some((a, b)) => format!(
                "measuring process pinned to CPU {a}, peer process to CPU {b} ({} allowed)",
                place.allowed
            ),
            None => format!("not pinned ({} CPU(s) allowed)", place.allowed),
        },
        if place.spin {
            "busy loops spin (every poll is one `read` system call, for both)"
        } else {
            "ONE CPU: busy loops yield, numbers mean little"
        }
    );
    println!(
        "- paired trials: each shm-tcp contender and its raw TCP reference connect the same peer \
         process, and the trial alternates blocks of {} ms on the two links; every ratio is the \
         contender's ÷ the reference's within one trial, median over the rounds (min–max)",
        BLOCK.as_millis()
    );
    let base = disk_base();
    println!(
        "- shm-tcp: the measuring process accepts, the peer connects; both sides' state files in \
         a fresh folder per trial under {} ({}) for \"on disk\", under /dev/shm ({}) for \"in \
         /dev/shm\"; send queues of {} KiB (`{QUEUE_ENV}=64` for 64 KiB); \
         `Durability::ProcessCrash` unless the row says PowerLoss (an `msync` after every push \
         and every pop, both sides)",
        base.display(),
        ours::filesystem(&base),
        ours::filesystem(std::path::Path::new("/dev/shm")),
        queue_bytes() / 1024,
    );
    println!(
        "- raw TCP: loopback, `TCP_NODELAY`, non-blocking, `read` retried in a loop; a fixed \
         message size, so no framing; the stream's consumer reads up to 1 MiB per `read`, as \
         shm-tcp's receive buffer does"
    );
    println!(
        "- round trips: {} untimed on each link first ({SYNC_WARMUP} for PowerLoss), then {} ms \
         of blocks per trial, every round trip timed with `Instant`; every byte of each \
         {SIZE}-byte message changes from one round trip to the next and every byte of the echo \
         is checked",
        config.rt_warmup,
        config.rt_budget.as_millis(),
    );
    println!(
        "- streams: an untimed first block of {WARMUP_MESSAGES} messages on each link \
         ({SYNC_WARMUP} for PowerLoss), then {} ms of blocks per trial; a block's time runs from \
         its first message to the consumer's receiving its end mark (one monotonic clock for \
         both processes), so buffers are drained inside it; the consumer reads every word of \
         every message; batches of {BATCH}",
        config.stream_budget.as_millis()
    );
    println!();
}

fn print_round_trips(rts: &[RtPair]) {
    println!(
        "#### Cross-process round trip over loopback, {SIZE} B messages ({} rounds)",
        rts[0].trials.len()
    );
    println!();
    println!(
        "| contender | p50 | p99 | p99.9 | max | 10⁹ ÷ p50 (/s) | mean rate, incl. stalls (/s) \
         | per-trial p50 min–max | p50 ÷ raw TCP's of the trial: median (min–max) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let row = |label: &str, sides: Vec<&Side>, ratio: String| {
        let mut hist = new_histogram();
        let mut total = Measured::default();
        let mut p50s = Vec::new();
        for side in &sides {
            hist.add(&side.hist).expect("same bounds");
            total += side.measured;
            p50s.push(p50(&side.hist));
        }
        let (lo, hi) = min_max(&p50s);
        println!(
            "| {label} | {} | {} | {} | {} | {:.0} | {:.0} | {}–{} | {ratio} |",
            ns_cell(p50(&hist)),
            ns_cell(hist.value_at_quantile(0.99) as f64),
            ns_cell(hist.value_at_quantile(0.999) as f64),
            ns_cell(hist.max() as f64),
            1e9 / p50(&hist).max(1.0),
            total.count as f64 / total.elapsed.as_secs_f64().max(1e-9),
            ns_cell(lo),
            ns_cell(hi),
        );
    };
    let references: Vec<&Side> = rts.iter().flat_map(|p| &p.trials).map(|t| &t[0]).collect();
    row(
        &format!("{}: every trial's reference blocks", RAW.label()),
        references,
        "1 (reference)".to_string(),
    );
    for pair in rts {
        row(
            pair.contender.label(),
            pair.trials.iter().map(|t| &t[1]).collect(),
            ratio_cell(&pair.ratios()),
        );
    }
    println!();
    for pair in rts {
        let trace: Vec<String> = pair
            .p50s(0)
            .iter()
            .map(|p| format!("{:.1}", p / 1e3))
            .collect();
        println!(
            "- raw TCP p50 in the trials with {} (µs, in run order): {}",
            pair.contender.label(),
            trace.join(" ")
        );
    }
    println!(
        "- PowerLoss trials hold few round trips (each waits for the disk four times): their \
         p99.9 is about their max."
    );
    println!();
}

fn print_streams(streams: &[StreamPair]) {
    println!(
        "#### One-way stream, {SIZE} B messages ({} rounds)",
        streams[0].trials.len()
    );
    println!();
    println!(
        "| contender | msgs/s min | median | max | MB/s (payload), median | ÷ the trial's \
         reference: median (min–max) | reference |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    let row = |label: &str, rates: &[f64], ratio: String, reference: &str| {
        let (lo, hi) = min_max(rates);
        let mid = median(rates);
        println!(
            "| {label} | {} | {} | {} | {:.0} | {ratio} | {reference} |",
            rate_cell(lo),
            rate_cell(mid),
            rate_cell(hi),
            mid * SIZE as f64 / 1e6,
        );
    };
    for reference in [RAW, RAW_BATCH] {
        let rates: Vec<f64> = streams
            .iter()
            .filter(|p| p.reference == reference)
            .flat_map(|p| p.rates(0))
            .collect();
        if !rates.is_empty() {
            row(
                &format!("{}: every trial's reference blocks", reference.label()),
                &rates,
                "1 (reference)".to_string(),
                "",
            );
        }
    }
    for pair in streams {
        row(
            pair.contender.label(),
            &pair.rates(1),
            ratio_cell(&pair.ratios()),
            pair.reference.label(),
        );
    }
    let (one, many) = (
        find_stream(streams, OURS).or_else(|| find_stream(streams, OURS_SYNC)),
        find_stream(streams, OURS_BATCH).or_else(|| find_stream(streams, OURS_SYNC_BATCH)),
    );
    if let (Some(one), Some(many)) = (one, many) {
        println!();
        println!(
            "Raw TCP, {BATCH} messages per write ÷ one per write (their trials of the same round): \
             {} (what batching buys raw TCP).",
            ratio_cell(&per_round(&many.rates(0), &one.rates(0)))
        );
    }
    println!();
}

fn find_rt(rts: &[RtPair], contender: Contender) -> Option<&RtPair> {
    rts.iter().find(|p| p.contender == contender)
}

fn find_stream(streams: &[StreamPair], contender: Contender) -> Option<&StreamPair> {
    streams.iter().find(|p| p.contender == contender)
}

/// PowerLoss against ProcessCrash (both on disk): each one's ratio to the raw reference of its
/// own trial, divided, per round.
fn print_durability(rts: &[RtPair], streams: &[StreamPair]) {
    let rt = (find_rt(rts, OURS), find_rt(rts, OURS_SYNC));
    let one = (find_stream(streams, OURS), find_stream(streams, OURS_SYNC));
    let many = (
        find_stream(streams, OURS_BATCH),
        find_stream(streams, OURS_SYNC_BATCH),
    );
    let both = |a: bool, b: bool| a && b;
    if !both(rt.0.is_some(), rt.1.is_some())
        && !both(one.0.is_some(), one.1.is_some())
        && !both(many.0.is_some(), many.1.is_some())
    {
        return;
    }
    println!(
        "#### What power-loss durability costs (`Durability::PowerLoss` ÷ `ProcessCrash`, both \
         on disk; each one's ratio to the raw reference of its own trial, divided, per round)"
    );
    println!();
    println!(
        "| measure | ProcessCrash, median | PowerLoss, median | PowerLoss ÷ ProcessCrash: \
         median (min–max) | added time, median |"
    );
    println!("|---|---:|---:|---:|---:|");
    if let (Some(fast), Some(sync)) = rt {
        let (f, s) = (fast.p50s(1), sync.p50s(1));
        let added = median(&s) - median(&f);
        println!(
            "| round trip p50 | {} | {} | {} | {} per round trip, {} per msync (4 per round \
             trip) |",
            ns_cell(median(&f)),
            ns_cell(median(&s)),
            ratio_cell(&per_round(&sync.ratios(), &fast.ratios())),
            ns_cell(added),
            ns_cell(added / MSYNCS_PER_ROUND_TRIP),
        );
    }
    for (name, pair) in [
        ("stream, one per push", one),
        ("stream, ×64 per flush", many),
    ] {
        if let (Some(fast), Some(sync)) = pair {
            let (f, s) = (median(&fast.rates(1)), median(&sync.rates(1)));
            println!(
                "| {name}, msgs/s | {} | {} | {} | {} per message |",
                rate_cell(f),
                rate_cell(s),
                ratio_cell(&per_round(&sync.ratios(), &fast.ratios())),
                ns_cell(1e9 / s.max(1e-9) - 1e9 / f.max(1e-9)),
            );
        }
    }
    println!();
}

fn print_targets(rts: &[RtPair], streams: &[StreamPair]) {
    println!("#### Targets (median per-trial ratios of this run; printed, never asserted)");
    println!();
    if let Some(ours) = find_rt(rts, OURS) {
        let ratios = ours.ratios();
        let r = median(&ratios);
        println!(
            "- round trip, {SIZE} B, persistence and acks on: {} p50 ÷ {} p50 = {} (target ≤ \
             {RT_TARGET:.2}×): {}",
            OURS.label(),
            RAW.label(),
            ratio_cell(&ratios),
            verdict(r <= RT_TARGET, 1.0 - r / RT_TARGET),
        );
        if let Some(shm) = find_rt(rts, OURS_SHM) {
            println!(
                "  - with the state in /dev/shm instead: {} of raw TCP",
                ratio_cell(&shm.ratios()),
            );
        }
    }
    if let Some(ours) = find_stream(streams, OURS_BATCH) {
        let ratios = ours.ratios();
        let r = median(&ratios);
        println!(
            "- stream, {SIZE} B, batched: {} ÷ {} = {} of its rate (target ≥ \
             {STREAM_TARGET:.2}×): {}",
            OURS_BATCH.label(),
            RAW_BATCH.label(),
            ratio_cell(&ratios),
            verdict(r >= STREAM_TARGET, r / STREAM_TARGET - 1.0),
        );
    }
    if let Some(ours) = find_stream(streams, OURS) {
        println!(
            "- stream, {SIZE} B, one message per push ÷ raw TCP one per write: {} of its rate \
             (no target)",
            ratio_cell(&ours.ratios()),
        );
    }
    if let (Some(fast), Some(sync)) = (find_rt(rts, OURS), find_rt(rts, OURS_SYNC)) {
        println!(
            "- power-loss durability: the round trip takes {} of ProcessCrash's (no target; the \
             table above has the streams)",
            ratio_cell(&per_round(&sync.ratios(), &fast.ratios())),
        );
    }
    println!();
}
