//! The interleaved-rounds report: every contender of every scenario runs one short trial per
//! round, in an order rotated each round, so slow drifts of the machine (other tenants, clock
//! changes) hit all contenders alike. Prints markdown tables (percentiles of every round trip
//! from a histogram; per-round ranges of streaming rates) and the targets as ratios to
//! contenders measured in the same run, per placement of the two vCPUs (near or far, judged
//! from the two-line floor measured around every trial). Nothing is asserted on timings.
//!
//! `cargo bench -p spsc-core --bench report`; `SPSC_BENCH_QUICK=1` for a run under a minute,
//! `SPSC_BENCH_ROUNDS=N` to change the number of rounds (default 7, quick 3),
//! `SPSC_BENCH_ONLY=pp8,s64` to run only some scenarios (keys: pp8 pp64 pp1k s8 b8 s64 b64 m64
//! m1k; the target checks then cover only those), `SPSC_BENCH_BANDS=CLOSE,NEAR` to move the
//! bounds (ns) of the names given to placements (see [`Placements`]).

mod common;

use std::time::{Duration, Instant};

use common::{
    cpu_pair, ping_pong, ping_pong_floor, ping_pong_message, ping_pong_same_bytes_floor, stream,
    stream_message, Channel, CopyFloor, Heapless, Ours, OursDense, Payload, RoundTripTimer, Rtrb,
    SmallRing, BATCH, CAP, LANES, MSG_CAP, WARMUP_ROUND_TRIPS,
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
// Placement
// ---------------------------------------------------------------------------------------------

/// Consecutive two-line floor p50s of a run, sorted, that lie more than this factor apart
/// belong to different placements. This project's VMs switch on their own, within one run,
/// between placements of the two vCPUs whose floors lie 1.8-7x apart (about 73, 131-250 and
/// 470-770 ns have been seen), while the trials of one placement lie within a few percent of
/// each other, and a rule relative to the run's lowest floor would call the middle one far
/// whenever the lowest occurs.
const PLACEMENT_GAP: f64 = 1.5;

/// Band names for a placement's median floor, for the reader (`SPSC_BENCH_BANDS=close,near`
/// moves the two bounds, in ns): on the machines seen so far, "near" is issue 12's near
/// placement (floor 137-250 ns), "far" its far one (485-770 ns), and "close" the 73 ns one seen
/// since. The placements themselves come from the gaps, whatever the bands.
const BANDS_NS: (f64, f64) = (110.0, 350.0);

/// One placement of the two vCPUs, as its two-line floor trials measured it.
struct Cluster {
    lo: f64,
    hi: f64,
    median: f64,
    trials: usize,
}

/// The placements a run saw, from the two-line floor p50s of all its floor trials and probes:
/// sorted, and split wherever one lies more than [`PLACEMENT_GAP`] above the one before. A
/// ratio to a floor measured in another placement means nothing, and ratios differ between
/// placements, so every ratio is reported per placement.
struct Placements {
    /// Ascending by floor.
    clusters: Vec<Cluster>,
    bands: (f64, f64),
}

impl Placements {
    fn new(floor_p50s: &[f64]) -> Self {
        let mut sorted = floor_p50s.to_vec();
        sorted.sort_by(f64::total_cmp);
        let mut groups: Vec<Vec<f64>> = Vec::new();
        for ns in sorted {
            match groups.last_mut() {
                Some(group) if ns <= group[group.len() - 1] * PLACEMENT_GAP => group.push(ns),
                _ => groups.push(vec![ns]),
            }
        }
        let clusters = groups
            .iter()
            .map(|g| Cluster {
                lo: g[0],
                hi: g[g.len() - 1],
                median: median(g),
                trials: g.len(),
            })
            .collect();
        let bands = std::env::var("SPSC_BENCH_BANDS")
            .ok()
            .and_then(|v| {
                let (close, near) = v.split_once(',')?;
                Some((close.trim().parse().ok()?, near.trim().parse().ok()?))
            })
            .unwrap_or(BANDS_NS);
        Self { clusters, bands }
    }

    /// Indices of the placements, lowest floor first.
    fn all(&self) -> std::ops::Range<usize> {
        0..self.clusters.len()
    }

    /// The placement of a floor p50: the one whose range holds it (every logged p50 is in one),
    /// else the nearest by ratio.
    fn of(&self, ns: f64) -> usize {
        let distance = |c: &Cluster| {
            if ns < c.lo {
                c.lo / ns
            } else if ns > c.hi {
                ns / c.hi
            } else {
                1.0
            }
        };
        self.all()
            .min_by(|&a, &b| distance(&self.clusters[a]).total_cmp(&distance(&self.clusters[b])))
            .unwrap_or(0)
    }

    /// The placement of a trial whose bracketing floors measured `lo` and `hi`, or `None` when
    /// they disagree: the placement switched during the trial, which then counts in none.
    fn around(&self, (lo, hi): (f64, f64)) -> Option<usize> {
        let (a, b) = (self.of(lo), self.of(hi));
        (a == b).then_some(a)
    }

    /// "near, floor ≈ 140 ns": the band name and the median floor.
    fn label(&self, p: usize) -> String {
        let median = self.clusters[p].median;
        let band = if median < self.bands.0 {
            "close"
        } else if median < self.bands.1 {
            "near"
        } else {
            "far"
        };
        format!("{band}, floor ≈ {median:.0} ns")
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    /// The two-line ping-pong floor: run around every ping-pong trial, and its p50 sets the
    /// placement.
    Floor,
    /// The same-bytes ping-pong floor (payload and sequence word), run beside [`Role::Floor`].
    SameBytesFloor,
    /// The batch streaming floor (one copy and one index store per batch).
    CopyFloor,
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

/// What one trial of a contender measured.
struct Record {
    /// p50 in ns (ping-pong) or items/s (streaming).
    value: f64,
    /// The two-line floor p50s that place the trial: the floors run just before and just after
    /// it (ping-pong), or the lowest and highest of the probes run around every trial of its
    /// round (streaming, where a ratio compares contenders of the whole round).
    floors: (f64, f64),
    /// The trial's ratio to each of its scenario's references ([`Scenario::refs`]); NaN where
    /// there is none.
    ratios: Vec<f64>,
}

struct Contender {
    name: String,
    role: Role,
    trial: Trial,
    /// All round trips of all rounds.
    hist: Option<Histogram<u64>>,
    records: Vec<Record>,
}

impl Contender {
    /// The trials that ran in `placement` (all trials for `None`).
    fn in_placement<'a>(
        &'a self,
        placements: &'a Placements,
        placement: Option<usize>,
    ) -> impl Iterator<Item = &'a Record> + 'a {
        self.records
            .iter()
            .filter(move |r| placement.is_none() || placements.around(r.floors) == placement)
    }

    fn values(&self, placements: &Placements, placement: Option<usize>) -> Vec<f64> {
        self.in_placement(placements, placement)
            .map(|r| r.value)
            .collect()
    }

    fn ratios(&self, placements: &Placements, placement: Option<usize>, r: usize) -> Vec<f64> {
        self.in_placement(placements, placement)
            .map(|rec| rec.ratios[r])
            .filter(|x| !x.is_nan())
            .collect()
    }
}

enum Kind {
    /// Ping-pong. The floors are not rotated but run around every other contender's trial (a
    /// *paired* floor), since this machine's two vCPUs move between placements within one run.
    PingPong,
    /// Streaming, with the payload bytes per item (for GB/s).
    Stream {
        bytes: usize,
        /// What the first ratio column divides by, per round.
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
    /// What each ratio column divides by: in ping-pong the floors, in the order of their
    /// contenders; in streaming the baseline, then the copy floor if the scenario has one.
    refs: Vec<&'static str>,
    contenders: Vec<Contender>,
}

impl Scenario {
    fn contender(&self, name: &str) -> Option<&Contender> {
        self.contenders.iter().find(|c| c.name == name)
    }
}

fn contender(name: impl Into<String>, role: Role, trial: Trial) -> Contender {
    Contender {
        name: name.into(),
        role,
        trial,
        hist: None,
        records: Vec::new(),
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

const FLOOR_NAME: &str = "floor (2 atomics, 2 lines)";
const SAME_BYTES_FLOOR_NAME: &str = "same-bytes floor (64 B + seq word, 4 lines)";
const WALK_NAME: &str = "same bytes, walking 1024 slot pairs (no queue)";

fn floor_contender() -> Contender {
    contender(
        FLOOR_NAME,
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

fn same_bytes_floor_contender() -> Contender {
    contender(
        SAME_BYTES_FLOOR_NAME,
        Role::SameBytesFloor,
        Box::new(|n, ns_per_tick| {
            latency(ping_pong_same_bytes_floor::<[u8; 64], _>(
                1,
                WARMUP_ROUND_TRIPS,
                n,
                HistTimer::new(ns_per_tick),
            ))
        }),
    )
}

/// The same-bytes exchange walking [`CAP`] slot pairs, as a ring of that capacity does: not a
/// floor any ratio divides by, but a contender whose ratio to the same-bytes floor is what the
/// walk through memory costs on its own.
fn walking_contender() -> Contender {
    contender(
        WALK_NAME,
        Role::Ours,
        Box::new(|n, ns_per_tick| {
            latency(ping_pong_same_bytes_floor::<[u8; 64], _>(
                CAP,
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
    // A 64-byte message has a floor of its own bytes beside the two-line one; for 8 bytes the
    // two-line floor already moves the message's bytes (the sequence word is the message).
    let mut contenders = vec![floor_contender()];
    let mut refs = vec!["two-line floor"];
    if T::SIZE > 8 {
        contenders.push(same_bytes_floor_contender());
        refs.push("same-bytes floor");
    }
    if T::SIZE == 64 {
        // What the walk through a 1024-slot ring costs with no queue, and our ring with a walk
        // that stays in L1: together they say where the rest of a 64-byte round trip goes.
        contenders.push(walking_contender());
        contenders.push(ping_contender::<T, SmallRing<T>>());
    }
    contenders.extend([
        ping_contender::<T, Ours<T>>(),
        ping_contender::<T, OursDense<T>>(),
        ping_contender::<T, Rtrb<T>>(),
        ping_contender::<T, Heapless<T>>(),
        ping_contender::<T, ArrayQueue<T>>(),
        message_ping_contender::<1>(message_len),
        message_ping_contender::<LANES>(message_len),
    ]);
    Scenario {
        key,
        title: format!("Ping-pong round trip, {} messages", T::LABEL),
        kind: Kind::PingPong,
        n,
        refs,
        contenders,
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
    let mut refs = vec!["fastest reference"];
    if batch {
        // What a batch of cached stores cannot beat: the bare copy through a shared array.
        let mut floor = stream_contender::<T, CopyFloor<T>>(true);
        floor.role = Role::CopyFloor;
        contenders.push(floor);
        refs.push("copy floor");
    }
    Scenario {
        key,
        title,
        kind: Kind::Stream {
            bytes: T::SIZE,
            baseline: Baseline::BestReference,
        },
        n,
        refs,
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
            refs: vec!["two-line floor"],
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
            refs: vec!["Ring<[u8; 64]> single ops"],
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
            refs: vec!["fastest reference"],
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

/// The median of `values`, or `None` when there are none.
fn median_of(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| median(values))
}

/// Median, range and count of per-trial ratios, as table text.
fn ratio_cell(ratios: &[f64]) -> String {
    if ratios.is_empty() {
        return "–".into();
    }
    let (lo, hi) = min_max(ratios);
    format!(
        "{:.2}× ({lo:.2}–{hi:.2}) n={}",
        median(ratios),
        ratios.len()
    )
}

/// The median of per-placement values, "–" where a placement has none; `scale` and `digits`
/// format them.
fn placed_values(values: Vec<Vec<f64>>, scale: f64, digits: usize) -> String {
    values
        .iter()
        .map(|v| median_of(v).map_or("–".into(), |m| format!("{:.digits$}", m / scale)))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// How many trials (ping-pong) or rounds (streaming) ran in each placement, and how many
/// straddled a switch.
fn placement_counts(c: &Contender, placements: &Placements) -> String {
    let mut parts = Vec::new();
    let mut placed = 0;
    for p in placements.all() {
        let count = c.in_placement(placements, Some(p)).count();
        placed += count;
        parts.push(format!("{count} {}", placements.label(p)));
    }
    parts.push(format!("{} straddling a switch", c.records.len() - placed));
    parts.join(", ")
}

/// The column headings of one ratio per placement, and their alignment row.
fn ratio_headings(refs: &[String], placements: &Placements) -> (String, String) {
    let mut header = String::new();
    let mut align = String::new();
    for r in refs {
        for p in placements.all() {
            header += &format!(" ÷ {r} ({}) |", placements.label(p));
            align += "---:|";
        }
    }
    (header, align)
}

/// "close / near / far": the band names of the run's placements, in column order.
fn placement_order(placements: &Placements) -> String {
    placements
        .all()
        .map(|p| format!("≈{:.0}", placements.clusters[p].median))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn print_ping(scenario: &Scenario, step_ns: f64, placements: &Placements) {
    println!("### {}\n", scenario.title);
    let refs: Vec<String> = scenario.refs.iter().map(|r| r.to_string()).collect();
    let (ratio_header, ratio_align) = ratio_headings(&refs, placements);
    println!(
        "| contender | p50 ns by placement ({} ns floor) | per-trial p50 min–max ns | p99 ns | \
         p99.9 ns |{ratio_header}\n|---|---:|---:|---:|---:|{ratio_align}",
        placement_order(placements)
    );
    for c in &scenario.contenders {
        let Some(h) = &c.hist else { continue };
        let all = c.values(placements, None);
        let (lo, hi) = min_max(&all);
        let by_placement = placements
            .all()
            .map(|p| c.values(placements, Some(p)))
            .collect();
        let mut row = format!(
            "| {} | {} | {lo:.0}–{hi:.0} | {} | {} |",
            c.name,
            placed_values(by_placement, 1.0, 0),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
        );
        for r in 0..refs.len() {
            let own = matches!((c.role, r), (Role::Floor, 0) | (Role::SameBytesFloor, 1));
            for p in placements.all() {
                let cell = if own {
                    "1 (reference)".into()
                } else {
                    ratio_cell(&c.ratios(placements, Some(p), r))
                };
                row += &format!(" {cell} |");
            }
        }
        println!("{row}");
    }
    if let Some(floor) = scenario.contenders.first() {
        println!(
            "\nTwo-line floor trials: {}. p50s are interpolated within the clock's {step_ns:.1} \
             ns step; p99 and p99.9 are over all round trips of all trials, every placement.",
            placement_counts(floor, placements)
        );
    }
    println!();
}

fn print_stream(scenario: &Scenario, bytes: usize, baseline: Baseline, placements: &Placements) {
    println!("### {}\n", scenario.title);
    let mut refs: Vec<String> = scenario.refs.iter().map(|r| r.to_string()).collect();
    if let Baseline::Named(_) = baseline {
        refs[0] += " of the round";
    }
    let (ratio_header, ratio_align) = ratio_headings(&refs, placements);
    println!(
        "| contender | Mitems/s median by placement ({} ns floor) | min–max (all rounds) | GB/s \
         (median, all) |{ratio_header}\n|---|---:|---:|---:|{ratio_align}",
        placement_order(placements)
    );
    for c in &scenario.contenders {
        let all = c.values(placements, None);
        let (lo, hi) = min_max(&all);
        let by_placement = placements
            .all()
            .map(|p| c.values(placements, Some(p)))
            .collect();
        let mut row = format!(
            "| {} | {} | {:.1}–{:.1} | {:.2} |",
            c.name,
            placed_values(by_placement, 1e6, 1),
            lo / 1e6,
            hi / 1e6,
            median(&all) * bytes as f64 / 1e9,
        );
        for r in 0..refs.len() {
            for p in placements.all() {
                let cell = if c.role == Role::CopyFloor && r == 1 {
                    "1 (reference)".into()
                } else {
                    ratio_cell(&c.ratios(placements, Some(p), r))
                };
                row += &format!(" {cell} |");
            }
        }
        println!("{row}");
    }
    if let Some(first) = scenario.contenders.first() {
        println!(
            "\nRounds: {} (a round's placement is that of all the floor probes run around its \
             trials).",
            placement_counts(first, placements)
        );
    }
    for p in placements.all() {
        let best = scenario
            .contenders
            .iter()
            .filter(|c| c.role == Role::Reference)
            .filter_map(|c| Some((c.name.as_str(), median_of(&c.values(placements, Some(p)))?)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((name, rate)) = best {
            println!(
                "Fastest reference by median ({}): {name}, {:.1} Mitems/s.",
                placements.label(p),
                rate / 1e6
            );
        }
    }
    println!();
}

/// A target on a ratio: at most or at least `bound`.
#[derive(Clone, Copy)]
enum Bound {
    AtMost(f64),
    AtLeast(f64),
}

impl Bound {
    /// "PASS", or "MISS by" how far the ratio lies on the wrong side of the bound.
    fn verdict(self, ratio: f64) -> String {
        match self {
            Bound::AtMost(b) if ratio <= b => "PASS".into(),
            Bound::AtLeast(b) if ratio >= b => "PASS".into(),
            Bound::AtMost(b) | Bound::AtLeast(b) => {
                format!("MISS by {:.2}×", (ratio - b).abs())
            }
        }
    }

    fn text(self) -> String {
        match self {
            Bound::AtMost(b) => format!("≤ {b:.2}×"),
            Bound::AtLeast(b) => format!("≥ {b:.2}×"),
        }
    }
}

/// Read-only access to a finished run for the target lines.
struct Run<'a> {
    scenarios: &'a [Scenario],
    placements: &'a Placements,
}

impl Run<'_> {
    /// The median of `name`'s ratios to reference `r` in scenario `key`, trials in `placement`.
    fn ratio(&self, key: &str, name: &str, r: usize, placement: usize) -> Option<f64> {
        let scenario = self.scenarios.iter().find(|s| s.key == key)?;
        let c = scenario.contender(name)?;
        median_of(&c.ratios(self.placements, Some(placement), r))
    }

    /// The median value (p50 ns or items/s) of `name` in scenario `key`, trials in `placement`.
    fn value(&self, key: &str, name: &str, placement: usize) -> Option<f64> {
        let scenario = self.scenarios.iter().find(|s| s.key == key)?;
        median_of(
            &scenario
                .contender(name)?
                .values(self.placements, Some(placement)),
        )
    }

    /// `part` for every placement it has a figure for, as "placement: figure" joined by "; ".
    fn per_placement(&self, mut part: impl FnMut(usize) -> Option<String>) -> Option<String> {
        let parts: Vec<String> = self
            .placements
            .all()
            .filter_map(|p| Some(format!("{}: {}", self.placements.label(p), part(p)?)))
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// One line per target or figure: its ratio in each placement that occurred, with a verdict
    /// when there is a target; nothing when the scenario did not run.
    fn line(&self, label: &str, key: &str, name: &str, r: usize, bound: Option<Bound>) {
        let Some(parts) = self.per_placement(|p| {
            let ratio = self.ratio(key, name, r, p)?;
            Some(match bound {
                Some(b) => format!("{ratio:.2}× {}", b.verdict(ratio)),
                None => format!("{ratio:.2}×"),
            })
        }) else {
            return;
        };
        let target = bound.map_or(String::new(), |b| format!(" (target {})", b.text()));
        println!("- {label}{target}: {parts}");
    }
}

fn print_targets(run: &Run<'_>) {
    println!(
        "### Targets (median per-trial ratios of this run, per placement; printed, never \
         asserted)\n"
    );
    let ring = "spsc_core::Ring";
    let dense = "spsc_core::DenseRing";
    let lanes1 = message_ring_name::<1>(64);
    let lanes16 = message_ring_name::<LANES>(64);
    let at_most = Some(Bound::AtMost(1.15));

    // Round trips: each contender to the floor that moves the same bytes.
    run.line(
        "`Ring<u64>` ping-pong p50 ÷ two-line floor",
        "pp8",
        ring,
        0,
        at_most,
    );
    run.line(
        "`Ring<[u8; 64]>` ping-pong p50 ÷ same-bytes floor",
        "pp64",
        ring,
        1,
        at_most,
    );
    run.line(
        "`Ring<[u8; 64], 64>` (64 slots) ping-pong p50 ÷ same-bytes floor",
        "pp64",
        SmallRing::<[u8; 64]>::NAME,
        1,
        at_most,
    );
    run.line(
        "Same bytes walking 1024 slot pairs (no queue) ÷ same-bytes floor: what the walk alone \
         costs",
        "pp64",
        WALK_NAME,
        1,
        None,
    );
    if let Some(parts) = run.per_placement(|p| {
        let walk = run.ratio("pp64", WALK_NAME, 1, p)?;
        Some(format!("{:.2}×", run.ratio("pp64", ring, 1, p)? / walk))
    }) {
        println!(
            "- `Ring<[u8; 64]>` (1024 slots) ÷ the walking exchange (quotient of the two medians \
             above; no target): {parts}"
        );
    }
    run.line(
        "`MessageRing<_, 16>` 64 B ping-pong p50 ÷ same-bytes floor",
        "pp64",
        &lanes16,
        1,
        at_most,
    );
    run.line(
        "`MessageRing` (one lane) 64 B ping-pong p50 ÷ same-bytes floor (no target: one lane \
         keeps the largest message at C/2 - 8)",
        "pp64",
        &lanes1,
        1,
        None,
    );
    for (label, name) in [
        ("`Ring<[u8; 64]>`", ring),
        ("`MessageRing<_, 16>` 64 B", lanes16.as_str()),
        ("`MessageRing` (one lane) 64 B", lanes1.as_str()),
    ] {
        run.line(
            &format!("{label} ping-pong p50 ÷ two-line floor (no target; as issue 12 quotes it)"),
            "pp64",
            name,
            0,
            None,
        );
    }
    run.line(
        "Same-bytes floor (64 B) ÷ two-line floor (what the second line each way costs)",
        "pp64",
        SAME_BYTES_FLOOR_NAME,
        0,
        None,
    );

    // Single-op streaming: `Ring` is the ring for single operations.
    for (key, label) in [("s8", "u64"), ("s64", "[u8; 64]")] {
        run.line(
            &format!("`Ring<{label}>` streaming single ops ÷ the fastest reference of the round"),
            key,
            ring,
            0,
            Some(Bound::AtLeast(1.0)),
        );
    }

    // Batches: `DenseRing` is the batch ring, against both the copy floor and the references.
    for (key, label) in [("b8", "u64"), ("b64", "[u8; 64]")] {
        let dense_parts = run.per_placement(|p| {
            let to_floor = run.ratio(key, dense, 1, p)?;
            let to_ref = run.ratio(key, dense, 0, p)?;
            let mut misses = Vec::new();
            if to_floor < 0.95 {
                misses.push(format!("{:.2}× on the copy floor", 0.95 - to_floor));
            }
            if to_ref < 0.95 {
                misses.push(format!("{:.2}× on the reference", 0.95 - to_ref));
            }
            let verdict = if misses.is_empty() {
                "PASS".to_string()
            } else {
                format!("MISS by {}", misses.join(" and "))
            };
            Some(format!(
                "{to_floor:.2}× the copy floor, {to_ref:.2}× the fastest reference, {verdict}"
            ))
        });
        if let Some(parts) = dense_parts {
            println!(
                "- `DenseRing<{label}>` batch streaming (target ≥ 0.95× the copy floor and ≥ \
                 0.95× the fastest reference of the round): {parts}"
            );
        }
        let ring_parts = run.per_placement(|p| {
            let to_floor = run.ratio(key, ring, 1, p)?;
            let to_ref = run.ratio(key, ring, 0, p)?;
            Some(format!(
                "{to_floor:.2}× the copy floor, {to_ref:.2}× the fastest reference"
            ))
        });
        if let Some(parts) = ring_parts {
            println!(
                "- `Ring<{label}>` batch streaming (no target: the price of the one-line \
                 hand-off): {parts}"
            );
        }
        run.line(
            &format!("`rtrb` batch streaming {label} ÷ the copy floor (no target)"),
            key,
            "rtrb",
            1,
            None,
        );
    }

    // For choosing: the batch ring's round trip, and what lanes do to small messages.
    run.line(
        "`DenseRing<u64>` ping-pong p50 ÷ two-line floor (no target; for choosing)",
        "pp8",
        dense,
        0,
        None,
    );
    run.line(
        "`DenseRing<[u8; 64]>` ping-pong p50 ÷ same-bytes floor (no target; for choosing)",
        "pp64",
        dense,
        1,
        None,
    );
    for (lanes, name) in [
        ("one lane", message_ring_name::<1>(8)),
        ("16 lanes", message_ring_name::<LANES>(8)),
    ] {
        run.line(
            &format!("`MessageRing` ({lanes}) 8 B ping-pong p50 ÷ two-line floor (no target)"),
            "pp8",
            &name,
            0,
            None,
        );
    }

    for (lanes, name) in [("one lane", &lanes1), ("16 lanes", &lanes16)] {
        run.line(
            &format!(
                "`MessageRing` ({lanes}) streaming 64 B ÷ `Ring<[u8; 64]>` single ops of the \
                 same round"
            ),
            "m64",
            name,
            0,
            Some(Bound::AtLeast(0.5)),
        );
    }

    println!("\nReference crates' p50 ÷ paired floor (64 B: ÷ the same-bytes floor):\n");
    for (key, r) in [("pp8", 0), ("pp64", 1)] {
        for p in run.placements.all() {
            let parts: Vec<String> = ["rtrb", "heapless::spsc", "crossbeam ArrayQueue"]
                .iter()
                .filter_map(|name| Some(format!("{name} {:.2}×", run.ratio(key, name, r, p)?)))
                .collect();
            if !parts.is_empty() {
                println!(
                    "- {key} ({}): {}",
                    run.placements.label(p),
                    parts.join("; ")
                );
            }
        }
    }
    for p in run.placements.all() {
        if let Some(ns) = run.value("pp8", FLOOR_NAME, p) {
            println!(
                "- two-line floor p50 ({}): {ns:.0} ns (median of its pp8 trials)",
                run.placements.label(p)
            );
        }
    }
    println!();
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

/// Adds a latency outcome to a contender's histogram; returns its p50 (interpolated within the
/// clock step).
fn add_latency(c: &mut Contender, outcome: Outcome, step_ns: f64) -> f64 {
    let Outcome::Latency(h) = outcome else {
        unreachable!("ping-pong trials give latencies")
    };
    let p50 = p50_within_step(&h, step_ns);
    match &mut c.hist {
        Some(all) => all.add(&h).expect("auto-resizing histograms add"),
        None => c.hist = Some(h),
    }
    p50
}

/// Runs every floor of a ping-pong scenario once, in order (the two-line floor first), records
/// their trials and returns their p50s.
fn run_floors(
    scenario: &mut Scenario,
    floors: &[usize],
    ns_per_tick: f64,
    step_ns: f64,
    floor_log: &mut Vec<f64>,
) -> Vec<f64> {
    let n = scenario.n;
    let p50s: Vec<f64> = floors
        .iter()
        .map(|&f| {
            let c = &mut scenario.contenders[f];
            let outcome = (c.trial)(n, ns_per_tick);
            add_latency(c, outcome, step_ns)
        })
        .collect();
    let two_line = p50s[0];
    floor_log.push(two_line);
    for (j, &f) in floors.iter().enumerate() {
        // A floor's ratio to each floor of the same batch: 1 to itself, and the same-bytes
        // floor's to the two-line floor run just before it.
        let ratios = (0..floors.len())
            .map(|r| if r <= j { p50s[j] / p50s[r] } else { f64::NAN })
            .collect();
        scenario.contenders[f].records.push(Record {
            value: p50s[j],
            floors: (two_line, two_line),
            ratios,
        });
    }
    p50s
}

/// A short two-line floor run that places a streaming round; returns its p50.
fn probe(ns_per_tick: f64, step_ns: f64) -> f64 {
    let (_, timer) = ping_pong_floor(500, 3_000, HistTimer::new(ns_per_tick));
    p50_within_step(&timer.hist, step_ns)
}

/// One round of one scenario: every contender once, starting at a rotating position.
fn run_round(
    scenario: &mut Scenario,
    round: usize,
    ns_per_tick: f64,
    step_ns: f64,
    floor_log: &mut Vec<f64>,
) {
    let n = scenario.n;
    let len = scenario.contenders.len();
    match scenario.kind {
        Kind::PingPong => {
            let floors: Vec<usize> = (0..len)
                .filter(|&i| {
                    matches!(
                        scenario.contenders[i].role,
                        Role::Floor | Role::SameBytesFloor
                    )
                })
                .collect();
            assert_eq!(
                scenario.contenders[floors[0]].role,
                Role::Floor,
                "the two-line floor comes first"
            );
            // Floors before and after every trial: a trial whose two floors disagree about the
            // placement straddled a switch, and the ratio is to the mean of the two.
            let mut before = run_floors(scenario, &floors, ns_per_tick, step_ns, floor_log);
            for k in 0..len {
                let i = (k + round) % len;
                if floors.contains(&i) {
                    continue;
                }
                let c = &mut scenario.contenders[i];
                let outcome = (c.trial)(n, ns_per_tick);
                let p50 = add_latency(c, outcome, step_ns);
                let after = run_floors(scenario, &floors, ns_per_tick, step_ns, floor_log);
                let ratios = before
                    .iter()
                    .zip(&after)
                    .map(|(b, a)| p50 / ((b + a) / 2.0))
                    .collect();
                scenario.contenders[i].records.push(Record {
                    value: p50,
                    floors: (before[0], after[0]),
                    ratios,
                });
                before = after;
            }
        }
        Kind::Stream { baseline, .. } => {
            let mut rates = vec![0.0; len];
            let mut probes = vec![probe(ns_per_tick, step_ns)];
            for k in 0..len {
                let i = (k + round) % len;
                let c = &mut scenario.contenders[i];
                let Outcome::Rate(r) = (c.trial)(n, ns_per_tick) else {
                    unreachable!("streaming trials give rates")
                };
                rates[i] = r;
                probes.push(probe(ns_per_tick, step_ns));
            }
            let floors = min_max(&probes);
            floor_log.extend(probes);
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
            let copy_floor = scenario
                .contenders
                .iter()
                .position(|c| c.role == Role::CopyFloor)
                .map(|f| rates[f]);
            for (c, r) in scenario.contenders.iter_mut().zip(rates) {
                let mut ratios = vec![r / base];
                ratios.extend(copy_floor.map(|floor| r / floor));
                c.records.push(Record {
                    value: r,
                    floors,
                    ratios,
                });
            }
        }
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The CPU as `/proc/cpuinfo` names it (model name, and the vendor's family, model and stepping,
/// since a hypervisor may shorten the name to "AMD EPYC"), or what is known elsewhere.
fn cpu_model() -> String {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return format!(
            "unknown ({}; no /proc/cpuinfo on this system)",
            std::env::consts::ARCH
        );
    };
    // The first processor's entry describes them all on the machines this runs on.
    let field = |name: &str| {
        info.lines()
            .take_while(|line| !line.trim().is_empty())
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_string())
            })
    };
    let ids: Vec<String> = [
        ("vendor_id", ""),
        ("cpu family", "family "),
        ("model", "model "),
        ("stepping", "stepping "),
    ]
    .iter()
    .filter_map(|(key, prefix)| Some(format!("{prefix}{}", field(key)?)))
    .collect();
    let name = field("model name").unwrap_or_else(|| {
        format!(
            "unnamed {} CPU (no \"model name\" in /proc/cpuinfo)",
            std::env::consts::ARCH
        )
    });
    if ids.is_empty() {
        name
    } else {
        format!("{name} ({})", ids.join(", "))
    }
}

/// The 1-, 5- and 15-minute load averages, where the system reports them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or("not available".into(), |l| {
        l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    })
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

    let load_before = load_average();
    let started = Instant::now();
    let mut floor_log = Vec::new();
    for round in 0..rounds {
        for scenario in &mut scenarios {
            run_round(scenario, round, ns_per_tick, step_ns, &mut floor_log);
        }
        eprintln!(
            "round {}/{rounds} done ({:.1} s)",
            round + 1,
            started.elapsed().as_secs_f64()
        );
    }
    let placements = Placements::new(&floor_log);

    println!("## spsc-core benchmark report\n");
    println!("- CPU: {}", cpu_model());
    println!(
        "- load average (1, 5, 15 min) before the run: {load_before}; after: {}",
        load_average()
    );
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
         {} round trips per trial after {WARMUP_ROUND_TRIPS} warm-up ones; every word of every \
         message is checked on every receipt, on both sides",
        stream_budget().as_millis(),
        CAP - 1,
        MSG_CAP / 1024,
        ping_round_trips(scale)
    );
    let described: Vec<String> = placements
        .all()
        .map(|p| {
            let c = &placements.clusters[p];
            format!(
                "{} in {} floor trials and probes (p50 {:.0}–{:.0} ns)",
                placements.label(p),
                c.trials,
                c.lo,
                c.hi
            )
        })
        .collect();
    println!(
        "- placements, from the two-line floor's p50 in every floor trial and probe (sorted, and \
         split where one exceeds the one before by more than {PLACEMENT_GAP}×; named close below \
         {:.0} ns, near below {:.0} ns, far above): {}. A ping-pong trial counts in a placement \
         when the floors run just before and after it both lie in it; a streaming round when all \
         its probes do\n",
        placements.bands.0,
        placements.bands.1,
        if described.is_empty() {
            "no floor ran".to_string()
        } else {
            described.join("; ")
        }
    );

    for scenario in &scenarios {
        match scenario.kind {
            Kind::PingPong => print_ping(scenario, step_ns, &placements),
            Kind::Stream { bytes, baseline } => {
                print_stream(scenario, bytes, baseline, &placements)
            }
        }
    }
    print_targets(&Run {
        scenarios: &scenarios,
        placements: &placements,
    });
    println!(
        "Total time {:.1} s. Streaming ranges are per-round rates; compare contenders within one \
         run only.",
        started.elapsed().as_secs_f64()
    );
}
