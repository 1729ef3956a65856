//! The interleaved-rounds report: cross-process round trips of 64-byte messages over the channel,
//! TCP loopback and a Unix socket (busy-polled and blocking), each paired with the raw
//! two-atomic floor run right before it, and one-way throughput of 64 B, 1 KiB and 64 KiB
//! messages. Every contender runs one short trial per round, in an order rotated each round, so
//! slow drifts of the machine hit all of them alike. Prints markdown tables and the issue's
//! targets as ratios within the same run; nothing is asserted on timings.
//!
//! `cargo bench -p shm-channel --bench report`; `SHM_BENCH_QUICK=1` for a run under 30 s,
//! `SHM_BENCH_ROUNDS=N` to change the number of rounds (default 7, quick 3).

mod common;

use std::time::{Duration, Instant};

use common::{
    placement, round_trips, run_peer_if_asked, stream, Contender, Mode, RoundTripTimer, Transport,
    CONTENDERS, FLOOR, WARMUP_MESSAGES, WARMUP_ROUND_TRIPS,
};
use hdrhistogram::Histogram;

/// Round-trip message size.
const RT_SIZE: usize = 64;
/// Streaming message sizes.
const STREAM_SIZES: [usize; 3] = [64, 1024, 64 * 1024];
/// The target: the channel's busy-polled 64 B round trip p50 ÷ the paired floor's.
const TARGET_RATIO: f64 = 1.25;

// ---------------------------------------------------------------------------------------------
// Round-trip timer
// ---------------------------------------------------------------------------------------------

/// Reads the time-stamp counter, fenced so it is not hoisted above the loads that ended the round
/// trip. Costs a few tens of cycles, paid equally by every contender and the floor.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn ticks() -> u64 {
    // SAFETY: `lfence` and `rdtsc` are baseline x86_64 instructions with no memory effects.
    unsafe {
        core::arch::x86_64::_mm_lfence();
        let t = core::arch::x86_64::_rdtsc();
        core::arch::x86_64::_mm_lfence();
        t
    }
}

/// Elsewhere: nanoseconds of `Instant` from a process-wide origin.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn ticks() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[cfg(target_arch = "x86_64")]
const TIMER_METHOD: &str = "every round trip timed on its own with `lfence; rdtsc` (TSC \
                            calibrated against `Instant`; the fences' few ns are in every \
                            number, the floor's included)";
#[cfg(not(target_arch = "x86_64"))]
const TIMER_METHOD: &str = "every round trip timed on its own with `Instant` (its ~20-50 ns are \
                            in every number, the floor's included)";

/// Nanoseconds per tick, measured by spinning for `span` and comparing with `Instant`.
fn calibrate(span: Duration) -> f64 {
    let (t0, i0) = (ticks(), Instant::now());
    while i0.elapsed() < span {}
    let (t1, elapsed) = (ticks(), i0.elapsed());
    elapsed.as_nanos() as f64 / (t1 - t0).max(1) as f64
}

/// Records every round trip in nanoseconds.
struct HistTimer {
    ns_per_tick: f64,
    hist: Histogram<u64>,
}

impl HistTimer {
    fn new(ns_per_tick: f64) -> Self {
        Self {
            ns_per_tick,
            hist: new_histogram(),
        }
    }
}

impl RoundTripTimer for HistTimer {
    #[inline(always)]
    fn start(&mut self) -> u64 {
        ticks()
    }
    #[inline(always)]
    fn stop(&mut self, t0: u64) {
        let ns = (ticks().wrapping_sub(t0) as f64 * self.ns_per_tick).round() as u64;
        self.hist.saturating_record(ns);
    }
}

/// A histogram of nanoseconds from 1 ns to 60 s, 3 significant digits. Fixed bounds, not
/// `Histogram::new`: an auto-resizing histogram's `saturating_record` does not resize but clamps
/// to its initial maximum of 2, so every round trip of 2048 ns or more would count as 2 ns.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

// ---------------------------------------------------------------------------------------------
// Configuration and accumulated results
// ---------------------------------------------------------------------------------------------

struct Config {
    quick: bool,
    rounds: usize,
    rt_warmup: u64,
    rt_max: u64,
    rt_budget: Duration,
    stream_budget: Duration,
    /// `SHM_BENCH_ONLY`: the scenario keys to run (`rt`, `s64`, `s1k`, `s64k`); all if unset.
    only: Option<Vec<String>>,
}

impl Config {
    fn from_env() -> Self {
        let quick = std::env::var("SHM_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let rounds = std::env::var("SHM_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&r| r > 0)
            .unwrap_or(if quick { 3 } else { 7 });
        Self {
            quick,
            rounds,
            rt_warmup: if quick { 500 } else { WARMUP_ROUND_TRIPS },
            rt_max: if quick { 50_000 } else { 500_000 },
            rt_budget: Duration::from_millis(if quick { 100 } else { 400 }),
            stream_budget: Duration::from_millis(if quick { 60 } else { 250 }),
            only: std::env::var("SHM_BENCH_ONLY")
                .ok()
                .map(|v| v.split(',').map(|k| k.trim().to_string()).collect()),
        }
    }

    fn runs(&self, key: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|keys| keys.iter().any(|k| k == key))
    }
}

/// The `SHM_BENCH_ONLY` key of a streaming size.
fn stream_key(size: usize) -> String {
    match size {
        64 => "s64".to_string(),
        1024 => "s1k".to_string(),
        _ => format!("s{}k", size / 1024),
    }
}

/// A round-trip contender's results over all rounds.
struct Latency {
    contender: Contender,
    hist: Histogram<u64>,
    round_trips: u64,
    elapsed: Duration,
    /// Per trial: p50 in ns.
    p50s: Vec<f64>,
    /// Per round: p50 ÷ the p50 of the floor trial run just before it.
    ratios: Vec<f64>,
}

impl Latency {
    fn new(contender: Contender) -> Self {
        Self {
            contender,
            hist: new_histogram(),
            round_trips: 0,
            elapsed: Duration::ZERO,
            p50s: Vec::new(),
            ratios: Vec::new(),
        }
    }

    /// Adds one trial; returns its p50.
    fn add(&mut self, trial: (u64, Duration, Histogram<u64>)) -> f64 {
        let (done, elapsed, hist) = trial;
        self.hist.add(&hist).expect("same bounds");
        self.round_trips += done;
        self.elapsed += elapsed;
        let p50 = hist.value_at_quantile(0.5) as f64;
        self.p50s.push(p50);
        p50
    }
}

/// A streaming contender's results over all rounds.
struct Rate {
    contender: Contender,
    /// Per round: messages per second.
    rates: Vec<f64>,
    /// Per round: rate ÷ the busy-polled channel's rate in the same round.
    ratios: Vec<f64>,
}

fn round_trip_trial(
    contender: Contender,
    config: &Config,
    ns_per_tick: f64,
) -> (u64, Duration, Histogram<u64>) {
    let mut timer = HistTimer::new(ns_per_tick);
    let (done, elapsed) = round_trips(
        contender,
        RT_SIZE,
        config.rt_warmup,
        config.rt_max,
        config.rt_budget,
        &mut timer,
    )
    .unwrap_or_else(|e| panic!("{} round trips: {e}", contender.label()));
    (done, elapsed, timer.hist)
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

fn ratio_cell(ratios: &[f64]) -> String {
    let (lo, hi) = min_max(ratios);
    format!("{:.2}× ({lo:.2}–{hi:.2})", median(ratios))
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

fn size_label(size: usize) -> String {
    if size >= 1024 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

// ---------------------------------------------------------------------------------------------

fn main() {
    run_peer_if_asked();
    let config = Config::from_env();
    let started = Instant::now();
    let place = placement();
    let ns_per_tick = calibrate(Duration::from_millis(if config.quick { 20 } else { 100 }));

    let mut floor = Latency::new(FLOOR);
    let mut latencies: Vec<Latency> = CONTENDERS.iter().map(|&c| Latency::new(c)).collect();
    if !config.runs("rt") {
        latencies.clear();
    }
    let mut streams: Vec<(usize, Vec<Rate>)> = STREAM_SIZES
        .iter()
        .filter(|&&size| config.runs(&stream_key(size)))
        .map(|&size| {
            let rates = CONTENDERS
                .iter()
                .map(|&contender| Rate {
                    contender,
                    rates: Vec::new(),
                    ratios: Vec::new(),
                })
                .collect();
            (size, rates)
        })
        .collect();

    for round in 0..config.rounds {
        eprintln!(
            "round {}/{} ({:.0} s so far)",
            round + 1,
            config.rounds,
            started.elapsed().as_secs_f64()
        );
        let k = latencies.len();
        for i in 0..k {
            // (No latency contenders when `SHM_BENCH_ONLY` leaves out `rt`.)
            let latency = &mut latencies[(round + i) % k];
            let floor_p50 = floor.add(round_trip_trial(FLOOR, &config, ns_per_tick));
            let p50 = latency.add(round_trip_trial(latency.contender, &config, ns_per_tick));
            latency.ratios.push(p50 / floor_p50.max(1.0));
        }
        for (size, rates) in &mut streams {
            let k = rates.len();
            let mut this_round = vec![0.0; k];
            for i in 0..k {
                let index = (round + i) % k;
                let contender = rates[index].contender;
                let (count, elapsed) = stream(contender, *size, u64::MAX, config.stream_budget)
                    .unwrap_or_else(|e| panic!("{} stream of {size} B: {e}", contender.label()));
                this_round[index] = count as f64 / elapsed.as_secs_f64().max(1e-9);
            }
            let base = this_round[0];
            for (rate, value) in rates.iter_mut().zip(this_round) {
                rate.rates.push(value);
                rate.ratios.push(value / base);
            }
        }
    }

    print_report(&config, &place, ns_per_tick, &floor, &latencies, &streams);
    println!(
        "Total time {:.1} s. Compare contenders within one run only.",
        started.elapsed().as_secs_f64()
    );
}

fn print_report(
    config: &Config,
    place: &common::Placement,
    ns_per_tick: f64,
    floor: &Latency,
    latencies: &[Latency],
    streams: &[(usize, Vec<Rate>)],
) {
    println!();
    println!(
        "### shm-channel report: {} round(s){}",
        config.rounds,
        if config.quick {
            " (QUICK: short trials)"
        } else {
            ""
        }
    );
    println!();
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
            "busy loops spin"
        } else {
            "ONE CPU: busy loops yield, numbers mean little"
        }
    );
    println!("- {TIMER_METHOD}; {ns_per_tick:.4} ns per tick");
    println!(
        "- round trips: {} untimed warm-up, then up to {} timed or {} ms per trial; streams: \
         {WARMUP_MESSAGES} warm-up messages, then {} ms per trial",
        config.rt_warmup,
        config.rt_max,
        config.rt_budget.as_millis(),
        config.stream_budget.as_millis()
    );
    println!();

    if !latencies.is_empty() {
        print_round_trips(floor, latencies);
    }
    for (size, rates) in streams {
        print_stream(*size, rates);
    }
    if !latencies.is_empty() {
        print_targets(floor, latencies);
    }
}

fn print_round_trips(floor: &Latency, latencies: &[Latency]) {
    println!("#### Cross-process round trip, {RT_SIZE} B messages");
    println!();
    println!(
        "| contender | p50 | p99 | p99.9 | max | round trips/s | per-trial p50 min–max | p50 \
         ÷ paired floor: median (min–max) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (i, latency) in std::iter::once(floor).chain(latencies).enumerate() {
        if i == 4 {
            println!("| *blocking: receivers sleep until woken* | | | | | | | |");
        }
        let h = &latency.hist;
        let (lo, hi) = min_max(&latency.p50s);
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {}–{} | {} |",
            latency.contender.label(),
            ns_cell(h.value_at_quantile(0.5) as f64),
            ns_cell(h.value_at_quantile(0.99) as f64),
            ns_cell(h.value_at_quantile(0.999) as f64),
            ns_cell(h.max() as f64),
            latency.round_trips as f64 / latency.elapsed.as_secs_f64().max(1e-9),
            ns_cell(lo),
            ns_cell(hi),
            if i == 0 {
                "1 (reference)".to_string()
            } else {
                ratio_cell(&latency.ratios)
            }
        );
    }
    println!();
}

fn print_stream(size: usize, rates: &[Rate]) {
    println!("#### One-way throughput, {} messages", size_label(size));
    println!();
    println!(
        "| contender | msgs/s min | median | max | GB/s min | median | max | ÷ shm channel \
         (busy-poll) of the round: median (min–max) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for rate in rates {
        let (lo, hi) = min_max(&rate.rates);
        let mid = median(&rate.rates);
        let gb = |r: f64| r * size as f64 / 1e9;
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {} |",
            rate.contender.label(),
            rate_cell(lo),
            rate_cell(mid),
            rate_cell(hi),
            gb(lo),
            gb(mid),
            gb(hi),
            if rate.contender == CONTENDERS[0] {
                "1 (reference)".to_string()
            } else {
                ratio_cell(&rate.ratios)
            }
        );
    }
    println!();
}

fn print_targets(floor: &Latency, latencies: &[Latency]) {
    println!("#### Targets (median per-round ratios of this run; printed, never asserted)");
    println!();
    let find = |transport, mode| {
        latencies
            .iter()
            .find(|l| l.contender.transport == transport && l.contender.mode == mode)
            .expect("every contender is measured")
    };
    let shm = find(Transport::Shm, Mode::Busy);
    let ratio = median(&shm.ratios);
    println!(
        "- shm channel (busy-poll) {RT_SIZE} B round trip p50 = {ratio:.2}× the paired floor \
         (target ≤ {TARGET_RATIO:.2}×): {}",
        if ratio <= TARGET_RATIO {
            "met"
        } else {
            "NOT met"
        }
    );
    let p50 = |l: &Latency| l.hist.value_at_quantile(0.5) as f64;
    let floor_p50 = p50(floor);
    let block = find(Transport::Shm, Mode::Block);
    let tcp_block = find(Transport::Tcp, Mode::Block);
    let uds_block = find(Transport::Uds, Mode::Block);
    println!(
        "- blocking wake-up round trip p50: shm channel (futex) {}, blocking TCP {} ({:.2}× \
         the channel), blocking Unix socket {} ({:.2}× the channel)",
        ns_cell(p50(block)),
        ns_cell(p50(tcp_block)),
        p50(tcp_block) / p50(block).max(1.0),
        ns_cell(p50(uds_block)),
        p50(uds_block) / p50(block).max(1.0),
    );
    let tcp = find(Transport::Tcp, Mode::Busy);
    println!(
        "- for the issue's reference figures (floor ≈ 0.3 µs; busy-polled TCP ≈ 17×, blocking \
         TCP ≈ 41× the floor): this run's floor p50 {}, busy-polled TCP {:.1}×, blocking TCP \
         {:.1}× (median per-round ratios)",
        ns_cell(floor_p50),
        median(&tcp.ratios),
        median(&tcp_block.ratios),
    );
    println!();
}

fn rate_cell(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2} M", rate / 1e6)
    } else {
        format!("{:.1} k", rate / 1e3)
    }
}
