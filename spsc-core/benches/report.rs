//! The interleaved-rounds report: every contender of every scenario runs one short trial per
//! round, in an order rotated each round, so slow drifts of the machine (other tenants, clock
//! changes) hit all contenders alike. Prints markdown tables (percentiles of every round trip
//! from a histogram; per-round ranges of streaming rates) and the targets as ratios to
//! contenders measured in the same run. Nothing is asserted on timings.
//!
//! `cargo bench -p spsc-core --bench report`; `SPSC_BENCH_QUICK=1` for a run under a minute,
//! `SPSC_BENCH_ROUNDS=N` to change the number of rounds (default 7, quick 3),
//! `SPSC_BENCH_ONLY=pp8,s64` to run only some scenarios (keys: pp8 pp64 pp1k s8 b8 s64 b64 m64
//! m1k; the target checks then cover only those).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{
    cpu_pair, ping_pong, ping_pong_floor, ping_pong_message, stream, stream_message, Channel,
    CopyFloor, Heapless, Ours, OursDense, Payload, RoundTripTimer, Rtrb, BATCH, CAP, LANES,
    MSG_CAP, WARMUP_ROUND_TRIPS,
};
use crossbeam_queue::ArrayQueue;
use hdrhistogram::Histogram;

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

/// Elsewhere: nanoseconds from a process-wide origin (timed in groups, see `TIMER_GROUP`).
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn ticks() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Round trips per timestamp pair: each one on its own with the TSC; in groups of 16 with
/// `Instant`, whose ~20-50 ns cost would otherwise dominate a round trip.
#[cfg(target_arch = "x86_64")]
const TIMER_GROUP: u64 = 1;
#[cfg(not(target_arch = "x86_64"))]
const TIMER_GROUP: u64 = 16;

#[cfg(target_arch = "x86_64")]
const TIMER_METHOD: &str = "every round trip timed on its own with `lfence; rdtsc` (TSC \
                            calibrated against `Instant`; the fences' cost is in every number, \
                            the floor's included)";
#[cfg(not(target_arch = "x86_64"))]
const TIMER_METHOD: &str = "round trips timed in groups of 16 with `Instant`; each group's mean \
                            is recorded 16 times (percentiles are of group means)";

/// Nanoseconds per tick, measured by spinning for `span` and comparing with `Instant`.
fn calibrate(span: Duration) -> f64 {
    let (t0, i0) = (ticks(), Instant::now());
    while i0.elapsed() < span {}
    let (t1, elapsed) = (ticks(), i0.elapsed());
    elapsed.as_nanos() as f64 / (t1 - t0) as f64
}

/// The clock's step in nanoseconds, as seen per recorded round trip: the greatest common divisor
/// of many differences between consecutive reads, divided by the timer group. Some TSCs (this
/// project's AMD EPYC VMs) advance in steps of 20 ticks, 10 ns, so every round trip is known
/// only to that step.
fn clock_step_ns(ns_per_tick: f64) -> f64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let mut step = 0;
    let mut last = ticks();
    for _ in 0..20_000 {
        let now = ticks();
        step = gcd(step, now.wrapping_sub(last));
        last = now;
    }
    step.max(1) as f64 * ns_per_tick / TIMER_GROUP as f64
}

/// The p50 of round trips timed with a clock of step `step_ns`, interpolated within the step.
///
/// A round trip is recorded as a whole number of clock steps, so a plain p50 can only move in
/// whole steps (4% of a 250 ns round trip here). Reading the recorded values as spread evenly
/// over the step around them, as a grouped-data median does, gives the p50 to a fraction of a
/// step. With a clock finer than 2 ns this is the histogram's own p50.
fn p50_within_step(hist: &Histogram<u64>, step_ns: f64) -> f64 {
    if step_ns < 2.0 || hist.is_empty() {
        return hist.value_at_quantile(0.5) as f64;
    }
    let half = hist.len() as f64 / 2.0;
    let mut below = 0u64;
    for bucket in hist.iter_recorded() {
        let count = bucket.count_at_value();
        if (below + count) as f64 >= half {
            let lower_edge = bucket.value_iterated_to() as f64 - step_ns / 2.0;
            return lower_edge + (half - below as f64) / count as f64 * step_ns;
        }
        below += count;
    }
    hist.max() as f64
}

/// Records every round trip (or group mean) in nanoseconds.
struct HistTimer {
    ns_per_tick: f64,
    hist: Histogram<u64>,
}

impl HistTimer {
    fn new(ns_per_tick: f64) -> Self {
        Self {
            ns_per_tick,
            // Explicit bounds: an auto-resizing histogram does not grow on `saturating_record`,
            // it clamps to its initial range, which would record every slow round trip as ~2 ns.
            hist: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .expect("bounds and 3 significant digits are valid"),
        }
    }
}

impl RoundTripTimer for HistTimer {
    #[inline(always)]
    fn group(&self) -> u64 {
        TIMER_GROUP
    }
    #[inline(always)]
    fn start(&mut self) -> u64 {
        ticks()
    }
    #[inline(always)]
    fn stop(&mut self, t0: u64) {
        let elapsed = ticks().wrapping_sub(t0);
        let ns = (elapsed as f64 * self.ns_per_tick / TIMER_GROUP as f64).round() as u64;
        self.hist.saturating_record_n(ns, TIMER_GROUP);
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Floor,
    Ours,
    Reference,
}

/// One trial's outcome.
enum Outcome {
    Latency(Histogram<u64>),
    /// Items per second.
    Rate(f64),
}

type Trial = Box<dyn Fn(u64, f64) -> Outcome>;

struct Contender {
    name: String,
    role: Role,
    trial: Trial,
    /// All round trips of all rounds.
    hist: Option<Histogram<u64>>,
    /// Per trial: p50 of the round trips (ping-pong) or items/s (streaming).
    per_round: Vec<f64>,
    /// Per round: this contender's p50 ÷ the p50 of the floor trial run just before it
    /// (ping-pong), or its rate ÷ the scenario's baseline rate in the same round (streaming).
    ratios: Vec<f64>,
}

enum Kind {
    /// Ping-pong; the floor contender is not rotated but run right before every other contender
    /// (a *paired* floor), since this machine's two vCPUs move between near and far placements
    /// (floor round trips of ~250 ns and ~770 ns have both been seen) within one run.
    PingPong,
    /// Streaming, with the payload bytes per item (for GB/s).
    Stream {
        bytes: usize,
        /// What the ratio column divides by, per round.
        baseline: Baseline,
    },
}

#[derive(Clone, Copy)]
enum Baseline {
    /// The fastest reference crate of the same round.
    BestReference,
    /// The named contender of the same round.
    Named(&'static str),
}

struct Scenario {
    key: &'static str,
    title: String,
    kind: Kind,
    /// Round trips or items per trial.
    n: u64,
    contenders: Vec<Contender>,
}

fn contender(name: impl Into<String>, role: Role, trial: Trial) -> Contender {
    Contender {
        name: name.into(),
        role,
        trial,
        hist: None,
        per_round: Vec::new(),
        ratios: Vec::new(),
    }
}

fn role_of<T: Payload, C: Channel<T>>() -> Role {
    if C::REFERENCE {
        Role::Reference
    } else {
        Role::Ours
    }
}

fn latency(duration_and_timer: (Duration, HistTimer)) -> Outcome {
    Outcome::Latency(duration_and_timer.1.hist)
}

fn floor_contender() -> Contender {
    contender(
        "floor (2 atomics, 2 lines)",
        Role::Floor,
        Box::new(|n, ns_per_tick| {
            latency(ping_pong_floor(
                WARMUP_ROUND_TRIPS,
                n,
                HistTimer::new(ns_per_tick),
            ))
        }),
    )
}

fn ping_contender<T: Payload, C: Channel<T>>() -> Contender {
    contender(
        C::NAME,
        role_of::<T, C>(),
        Box::new(|n, ns_per_tick| {
            latency(ping_pong::<T, C, _>(
                WARMUP_ROUND_TRIPS,
                n,
                HistTimer::new(ns_per_tick),
            ))
        }),
    )
}

/// The contender name of our message ring with `L` lanes and `len`-byte messages.
fn message_ring_name<const L: usize>(len: u32) -> String {
    if L == 1 {
        format!("spsc_core::MessageRing ({len} B)")
    } else {
        format!("spsc_core::MessageRing, {L} lanes ({len} B)")
    }
}

fn message_ping_contender<const L: usize>(len: u32) -> Contender {
    contender(
        message_ring_name::<L>(len),
        Role::Ours,
        Box::new(move |n, ns_per_tick| {
            latency(ping_pong_message::<L, _>(
                len,
                WARMUP_ROUND_TRIPS,
                n,
                HistTimer::new(ns_per_tick),
            ))
        }),
    )
}

fn rate((items, elapsed): (u64, Duration)) -> Outcome {
    Outcome::Rate(items as f64 / elapsed.as_secs_f64().max(1e-12))
}

/// Longest a streaming trial runs before the producer stops early (`SPSC_BENCH_QUICK`: 1/4).
fn stream_budget() -> Duration {
    if env_flag("SPSC_BENCH_QUICK") {
        Duration::from_millis(50)
    } else {
        Duration::from_millis(200)
    }
}

fn stream_contender<T: Payload, C: Channel<T>>(batch: bool) -> Contender {
    let name = if batch && !C::NATIVE_BATCH {
        format!("{} (single ops: no batch API)", C::NAME)
    } else {
        C::NAME.to_string()
    };
    contender(
        name,
        role_of::<T, C>(),
        Box::new(move |n, _| rate(stream::<T, C>(n, stream_budget(), batch))),
    )
}

fn message_stream_contender<const L: usize>(len: u32) -> Contender {
    contender(
        message_ring_name::<L>(len),
        Role::Ours,
        Box::new(move |n, _| rate(stream_message::<L>(len, n, stream_budget()))),
    )
}

fn ping_scenario<T: Payload>(key: &'static str, n: u64, message_len: u32) -> Scenario {
    Scenario {
        key,
        title: format!("Ping-pong round trip, {} messages", T::LABEL),
        kind: Kind::PingPong,
        n,
        contenders: vec![
            floor_contender(),
            ping_contender::<T, Ours<T>>(),
            ping_contender::<T, OursDense<T>>(),
            ping_contender::<T, Rtrb<T>>(),
            ping_contender::<T, Heapless<T>>(),
            ping_contender::<T, ArrayQueue<T>>(),
            message_ping_contender::<1>(message_len),
            message_ping_contender::<LANES>(message_len),
        ],
    }
}

fn stream_scenario<T: Payload>(key: &'static str, n: u64, batch: bool) -> Scenario {
    let title = if batch {
        format!(
            "Streaming, batch ops ({BATCH} per call), {} items",
            T::LABEL
        )
    } else {
        format!("Streaming, single ops, {} items", T::LABEL)
    };
    let mut contenders = vec![
        stream_contender::<T, Ours<T>>(batch),
        stream_contender::<T, OursDense<T>>(batch),
        stream_contender::<T, Rtrb<T>>(batch),
        stream_contender::<T, Heapless<T>>(batch),
        stream_contender::<T, ArrayQueue<T>>(batch),
    ];
    if batch {
        // What a batch of cached stores cannot beat: the bare copy through a shared array.
        let mut floor = stream_contender::<T, CopyFloor<T>>(true);
        floor.role = Role::Floor;
        contenders.push(floor);
    }
    Scenario {
        key,
        title,
        kind: Kind::Stream {
            bytes: T::SIZE,
            baseline: Baseline::BestReference,
        },
        n,
        contenders,
    }
}

/// Round trips per ping-pong trial.
fn ping_round_trips(scale: u64) -> u64 {
    20_000 * scale
}

fn scenarios(scale: u64) -> Vec<Scenario> {
    let ping_n = ping_round_trips(scale);
    vec![
        ping_scenario::<u64>("pp8", ping_n, 8),
        ping_scenario::<[u8; 64]>("pp64", ping_n, 64),
        Scenario {
            key: "pp1k",
            title: "Ping-pong round trip, 1 KiB messages (message ring only)".into(),
            kind: Kind::PingPong,
            n: ping_n,
            contenders: vec![
                floor_contender(),
                message_ping_contender::<1>(1024),
                message_ping_contender::<LANES>(1024),
            ],
        },
        stream_scenario::<u64>("s8", 400_000 * scale, false),
        stream_scenario::<u64>("b8", 400_000 * scale, true),
        stream_scenario::<[u8; 64]>("s64", 200_000 * scale, false),
        stream_scenario::<[u8; 64]>("b64", 200_000 * scale, true),
        Scenario {
            key: "m64",
            title: "Streaming, message ring, 64 B payloads (Ring<[u8; 64]> single ops beside it)"
                .into(),
            kind: Kind::Stream {
                bytes: 64,
                baseline: Baseline::Named("spsc_core::Ring"),
            },
            n: 200_000 * scale,
            contenders: vec![
                message_stream_contender::<1>(64),
                message_stream_contender::<LANES>(64),
                stream_contender::<[u8; 64], Ours<[u8; 64]>>(false),
            ],
        },
        Scenario {
            key: "m1k",
            title: "Streaming, message ring, 1 KiB payloads".into(),
            kind: Kind::Stream {
                bytes: 1024,
                baseline: Baseline::BestReference,
            },
            n: 25_000 * scale,
            contenders: vec![
                message_stream_contender::<1>(1024),
                message_stream_contender::<LANES>(1024),
            ],
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// Statistics and printing
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

/// Median and range of a contender's per-round ratios, as table text.
fn ratio_cell(ratios: &[f64]) -> String {
    if ratios.is_empty() || ratios.iter().any(|r| r.is_nan()) {
        return "–".into();
    }
    let (lo, hi) = min_max(ratios);
    format!("{:.2}× ({lo:.2}–{hi:.2})", median(ratios))
}

/// What the target checks need from the tables, keyed by `scenario key / contender name`.
#[derive(Default)]
struct Summary {
    /// Median per-round ratio of every non-floor contender to the floor: p50 ÷ the paired
    /// floor's p50 (ping-pong), or rate ÷ the floor's rate in the same round (batch streaming).
    floor_ratio: HashMap<String, f64>,
    /// Median per-round ratio of every streaming contender to its scenario's baseline.
    rate_ratio: HashMap<String, f64>,
    /// Median items/s of every streaming contender.
    rate: HashMap<String, f64>,
    /// The fastest reference (by median items/s) per streaming scenario.
    best_ref: HashMap<&'static str, (String, f64)>,
}

fn print_ping(scenario: &Scenario, step_ns: f64, summary: &mut Summary) {
    println!("### {}\n", scenario.title);
    println!(
        "| contender | p50 ns | p99 ns | p99.9 ns | mean ns | per-trial p50 min–max ns | p50 ÷ paired floor: median (min–max) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for c in &scenario.contenders {
        let Some(h) = &c.hist else { continue };
        let (lo, hi) = min_max(&c.per_round);
        let ratio = if c.role == Role::Floor {
            "1 (reference)".into()
        } else {
            ratio_cell(&c.ratios)
        };
        println!(
            "| {} | {:.0} | {} | {} | {:.0} | {lo:.0}–{hi:.0} | {ratio} |",
            c.name,
            p50_within_step(h, step_ns),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.mean(),
        );
        if c.role != Role::Floor {
            summary
                .floor_ratio
                .insert(format!("{}/{}", scenario.key, c.name), median(&c.ratios));
        }
    }
    println!();
}

fn print_stream(scenario: &Scenario, bytes: usize, baseline: Baseline, summary: &mut Summary) {
    println!("### {}\n", scenario.title);
    let base_name = match baseline {
        Baseline::BestReference => "fastest reference of the round".to_string(),
        Baseline::Named(name) => format!("{name} of the round"),
    };
    println!(
        "| contender | Mitems/s min | median | max | GB/s (median) | ÷ {base_name}: median (min–max) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for c in &scenario.contenders {
        let med = median(&c.per_round);
        let (lo, hi) = min_max(&c.per_round);
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.2} | {} |",
            c.name,
            lo / 1e6,
            med / 1e6,
            hi / 1e6,
            med * bytes as f64 / 1e9,
            ratio_cell(&c.ratios)
        );
        let key = format!("{}/{}", scenario.key, c.name);
        summary.rate.insert(key.clone(), med);
        summary.rate_ratio.insert(key, median(&c.ratios));
    }
    if let Some(floor) = scenario.contenders.iter().find(|c| c.role == Role::Floor) {
        for c in scenario.contenders.iter().filter(|c| c.role != Role::Floor) {
            let per_round: Vec<f64> = c
                .per_round
                .iter()
                .zip(&floor.per_round)
                .map(|(rate, floor_rate)| rate / floor_rate)
                .collect();
            summary
                .floor_ratio
                .insert(format!("{}/{}", scenario.key, c.name), median(&per_round));
        }
    }
    let best = scenario
        .contenders
        .iter()
        .filter(|c| c.role == Role::Reference)
        .map(|c| (c.name.clone(), median(&c.per_round)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((name, rate)) = best {
        println!(
            "\nFastest reference by median: {name}, {:.1} Mitems/s.",
            rate / 1e6
        );
        summary.best_ref.insert(scenario.key, (name, rate));
    }
    println!();
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

fn print_targets(summary: &Summary) {
    println!("### Targets (median per-round ratios of this run; printed, never asserted)\n");
    let ring = "spsc_core::Ring";
    let floor_ratio = |key: &str| summary.floor_ratio.get(key).copied();
    for (key, label) in [("pp8", "u64"), ("pp64", "[u8; 64]")] {
        if let Some(r) = floor_ratio(&format!("{key}/{ring}")) {
            println!(
                "- Ring ping-pong {label} p50 = {r:.2}× floor (target ≤ 1.15×): {}",
                verdict(r <= 1.15)
            );
        }
    }
    for (lanes, name) in [
        ("one lane", message_ring_name::<1>(64)),
        ("16 lanes", message_ring_name::<LANES>(64)),
    ] {
        if let Some(r) = floor_ratio(&format!("pp64/{name}")) {
            println!(
                "- MessageRing ({lanes}) ping-pong 64 B p50 = {r:.2}× floor (target ≤ 1.25×): {}",
                verdict(r <= 1.25)
            );
        }
    }
    for (key, label) in [
        ("s8", "single ops, 8 B"),
        ("s64", "single ops, 64 B"),
        ("b8", "batch ops, 8 B"),
        ("b64", "batch ops, 64 B"),
    ] {
        let name = format!("{key}/{ring}");
        if let (Some(r), Some(rate)) = (summary.rate_ratio.get(&name), summary.rate.get(&name)) {
            let best = summary.best_ref.get(key).map_or(String::new(), |(n, v)| {
                format!("; fastest reference by median: {n}, {:.1}", v / 1e6)
            });
            println!(
                "- Ring streaming {label}: {:.1} Mitems/s = {r:.2}× the fastest reference of \
                 each round{best} (target ≥ 1.00×): {}",
                rate / 1e6,
                verdict(*r >= 1.0)
            );
        }
    }
    // The dense ring is the element ring for batches: the same targets, beside `Ring`'s.
    let dense = "spsc_core::DenseRing";
    for (key, label) in [("b8", "batch ops, 8 B"), ("b64", "batch ops, 64 B")] {
        let name = format!("{key}/{dense}");
        if let (Some(r), Some(rate)) = (summary.rate_ratio.get(&name), summary.rate.get(&name)) {
            println!(
                "- DenseRing streaming {label}: {:.1} Mitems/s = {r:.2}× the fastest reference \
                 of each round (target ≥ 1.00×): {}",
                rate / 1e6,
                verdict(*r >= 1.0)
            );
        }
    }
    for (key, label) in [("b8", "8 B"), ("b64", "64 B")] {
        let queues = [ring, dense, "rtrb"]
            .iter()
            .filter_map(|name| {
                Some(format!(
                    "{name} {:.2}×",
                    floor_ratio(&format!("{key}/{name}"))?
                ))
            })
            .collect::<Vec<_>>();
        if !queues.is_empty() {
            println!(
                "- Batch streaming {label}, rate ÷ the copy floor of the same round (the bare \
                 copy through a shared array; no target): {}",
                queues.join(", ")
            );
        }
    }
    for (key, label) in [("pp8", "u64"), ("pp64", "[u8; 64]")] {
        if let Some(r) = floor_ratio(&format!("{key}/{dense}")) {
            println!("- DenseRing ping-pong {label} p50 = {r:.2}× floor (no target; for choosing)");
        }
    }
    for (lanes, name) in [
        ("one lane", message_ring_name::<1>(64)),
        ("16 lanes", message_ring_name::<LANES>(64)),
    ] {
        let msg = format!("m64/{name}");
        if let (Some(r), Some(rate)) = (summary.rate_ratio.get(&msg), summary.rate.get(&msg)) {
            println!(
                "- MessageRing ({lanes}) streaming 64 B: {:.1} Mmsg/s = {r:.2}× Ring<[u8; 64]> \
                 single ops of the same rounds (target ≥ 0.50×): {}",
                rate / 1e6,
                verdict(*r >= 0.5)
            );
        }
    }
    println!(
        "\nReference crates' p50 ÷ paired floor in this run (the issue quotes, u64: rtrb 1.31×, \
         heapless 2.05×, crossbeam 2.24×):\n"
    );
    for key in ["pp8", "pp64"] {
        let mut line = format!("- {key}:");
        for name in ["rtrb", "heapless::spsc", "crossbeam ArrayQueue"] {
            if let Some(r) = floor_ratio(&format!("{key}/{name}")) {
                line += &format!(" {name} {r:.2}×;");
            }
        }
        println!("{line}");
    }
    println!();
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

/// Adds a latency outcome to a contender; returns its p50 (interpolated within the clock step).
fn add_latency(c: &mut Contender, outcome: Outcome, step_ns: f64) -> f64 {
    let Outcome::Latency(h) = outcome else {
        unreachable!("ping-pong trials give latencies")
    };
    let p50 = p50_within_step(&h, step_ns);
    c.per_round.push(p50);
    match &mut c.hist {
        Some(all) => all.add(&h).expect("auto-resizing histograms add"),
        None => c.hist = Some(h),
    }
    p50
}

/// One round of one scenario: every contender once, starting at a rotating position.
fn run_round(scenario: &mut Scenario, round: usize, ns_per_tick: f64, step_ns: f64) {
    let n = scenario.n;
    let len = scenario.contenders.len();
    match scenario.kind {
        Kind::PingPong => {
            let floor = scenario
                .contenders
                .iter()
                .position(|c| c.role == Role::Floor)
                .expect("ping-pong scenarios have a floor");
            for k in 0..len {
                let i = (k + round) % len;
                if i == floor {
                    continue;
                }
                let floor_outcome = (scenario.contenders[floor].trial)(n, ns_per_tick);
                let floor_p50 =
                    add_latency(&mut scenario.contenders[floor], floor_outcome, step_ns);
                let c = &mut scenario.contenders[i];
                let outcome = (c.trial)(n, ns_per_tick);
                let p50 = add_latency(c, outcome, step_ns);
                c.ratios.push(p50 / floor_p50);
            }
        }
        Kind::Stream { baseline, .. } => {
            let mut rates = vec![0.0; len];
            for k in 0..len {
                let i = (k + round) % len;
                let c = &mut scenario.contenders[i];
                let Outcome::Rate(r) = (c.trial)(n, ns_per_tick) else {
                    unreachable!("streaming trials give rates")
                };
                c.per_round.push(r);
                rates[i] = r;
            }
            let base = scenario
                .contenders
                .iter()
                .zip(&rates)
                .filter(|(c, _)| match baseline {
                    Baseline::BestReference => c.role == Role::Reference,
                    Baseline::Named(name) => c.name == name,
                })
                .map(|(_, &r)| r)
                .fold(f64::NAN, f64::max);
            for (c, r) in scenario.contenders.iter_mut().zip(rates) {
                c.ratios.push(r / base);
            }
        }
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn main() {
    let quick = env_flag("SPSC_BENCH_QUICK");
    let rounds: usize = std::env::var("SPSC_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(if quick { 3 } else { 7 });
    let scale = if quick { 1 } else { 10 };

    let pair = cpu_pair();
    let ns_per_tick = calibrate(Duration::from_millis(if quick { 50 } else { 200 }));
    let step_ns = clock_step_ns(ns_per_tick);
    let mut scenarios = scenarios(scale);
    if let Ok(only) = std::env::var("SPSC_BENCH_ONLY") {
        let keys: Vec<&str> = only.split(',').map(str::trim).collect();
        scenarios.retain(|s| keys.contains(&s.key));
    }

    println!("## spsc-core benchmark report\n");
    println!(
        "- {rounds} interleaved rounds{}; every contender runs one trial per scenario per round, \
         in an order rotated each round",
        if quick { " (quick mode)" } else { "" }
    );
    match pair {
        Some((a, b)) => println!("- two threads pinned to CPUs {} and {}", a.id, b.id),
        None => println!("- NOTE: fewer than two CPUs: threads not pinned, numbers meaningless"),
    }
    println!(
        "- timing: {TIMER_METHOD}; {ns_per_tick:.4} ns per tick; the clock advances in steps of \
         {step_ns:.1} ns, and p50s are interpolated within that step (see BENCHMARKS.md)"
    );
    println!(
        "- streaming trials stop early after {} ms (the producer checks every 4096 items)\n\
         - element rings hold {CAP} elements (heapless {}), message rings {} KiB; ping-pong: \
         {} round trips per trial after {WARMUP_ROUND_TRIPS} warm-up ones",
        stream_budget().as_millis(),
        CAP - 1,
        MSG_CAP / 1024,
        ping_round_trips(scale)
    );
    println!();

    let started = Instant::now();
    for round in 0..rounds {
        for scenario in &mut scenarios {
            run_round(scenario, round, ns_per_tick, step_ns);
        }
        eprintln!(
            "round {}/{rounds} done ({:.1} s)",
            round + 1,
            started.elapsed().as_secs_f64()
        );
    }

    let mut summary = Summary::default();
    for scenario in &scenarios {
        match scenario.kind {
            Kind::PingPong => print_ping(scenario, step_ns, &mut summary),
            Kind::Stream { bytes, baseline } => {
                print_stream(scenario, bytes, baseline, &mut summary)
            }
        }
    }
    print_targets(&summary);
    println!(
        "Total time {:.1} s. Streaming ranges are per-round rates; compare contenders within one \
         run only.",
        started.elapsed().as_secs_f64()
    );
}
