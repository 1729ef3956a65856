//! The interleaved-rounds report: cross-process round trips of 64-byte messages over the channel
//! (1 lane and 16 lanes), TCP loopback and a Unix socket (busy-polled and blocking), each paired
//! with the two raw floors (the 8-byte one run right before it, the same-bytes one right after),
//! and one-way throughput of 64 B, 1 KiB and 64 KiB messages. Every contender runs one short trial
//! per round, in an order rotated each round, so slow drifts of the machine hit all of them alike.
//! Prints the CPU, the load, the placement of the two CPUs told from the floors (and a table per
//! placement when the run saw more than one), markdown tables, and the targets as ratios
//! within the same run; nothing is asserted on timings.
//!
//! `cargo bench -p shm-channel --bench report`; `SHM_BENCH_QUICK=1` for a run under 30 s,
//! `SHM_BENCH_ROUNDS=N` to change the number of rounds (default 7, quick 3).

mod common;

use std::time::{Duration, Instant};

use common::{
    cpu_model, fine_p50, load_average, placement, placements, round_trips, run_peer_if_asked,
    stream, Contender, Mode, RoundTripTimer, Transport, FLOOR, PLACEMENT_GAP,
    ROUND_TRIP_CONTENDERS, SAME_BYTES_FLOOR, SHM_BUSY, STREAM_CONTENDERS, WARMUP_MESSAGES,
    WARMUP_ROUND_TRIPS,
};
use hdrhistogram::Histogram;

/// Round-trip message size, unless `SHM_BENCH_RT_SIZE` says otherwise (the targets are for 64).
const RT_SIZE: usize = 64;
/// Streaming message sizes.
const STREAM_SIZES: [usize; 3] = [64, 1024, 64 * 1024];
/// The target: the busy-polled channel's 64 B round trip p50 ÷ the paired same-bytes
/// floor's, median over the rounds of one placement.
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
    /// `SHM_BENCH_RT_SIZE`: the round-trip message size (default [`RT_SIZE`]; 8 to 2040 bytes,
    /// which a 16-lane ring of 64 KiB holds). An 8-byte message, say, shows what the channel
    /// adds to the floor when both move one line each way.
    rt_size: usize,
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
            rt_size: std::env::var("SHM_BENCH_RT_SIZE")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|size| (8..=2040).contains(size))
                .unwrap_or(RT_SIZE),
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

/// One round-trip trial.
struct Trial {
    hist: Histogram<u64>,
    round_trips: u64,
    elapsed: Duration,
    p50: f64,
}

/// One contender's trial with the floor trials paired with it: the 8-byte floor right before,
/// the same-bytes floor right after, so a placement change during the three shows as two floors
/// from different placements.
struct Triple {
    /// Index into `ROUND_TRIP_CONTENDERS`.
    contender: usize,
    floor: Trial,
    contender_trial: Trial,
    bytes: Trial,
}

/// A streaming contender's results over all rounds.
struct Rate {
    contender: Contender,
    /// Per round: messages per second.
    rates: Vec<f64>,
    /// Per round: rate ÷ the busy-polled channel's rate in the same round.
    ratios: Vec<f64>,
}

fn round_trip_trial(contender: Contender, config: &Config, ns_per_tick: f64) -> Trial {
    let mut timer = HistTimer::new(ns_per_tick);
    let (round_trips, elapsed) = round_trips(
        contender,
        config.rt_size,
        config.rt_warmup,
        config.rt_max,
        config.rt_budget,
        &mut timer,
    )
    .unwrap_or_else(|e| panic!("{} round trips: {e}", contender.label()));
    let p50 = fine_p50(&timer.hist);
    Trial {
        hist: timer.hist,
        round_trips,
        elapsed,
        p50,
    }
}

/// A set of trials of one contender (one placement's, or the run's), merged.
struct Merged {
    trials: usize,
    hist: Histogram<u64>,
    round_trips: u64,
    elapsed: Duration,
    p50s: Vec<f64>,
    /// Per trial: its p50 ÷ the paired 8-byte floor trial's.
    vs_floor: Vec<f64>,
    /// Per trial: its p50 ÷ the paired same-bytes floor trial's.
    vs_bytes: Vec<f64>,
}

impl Merged {
    fn new() -> Self {
        Self {
            trials: 0,
            hist: new_histogram(),
            round_trips: 0,
            elapsed: Duration::ZERO,
            p50s: Vec::new(),
            vs_floor: Vec::new(),
            vs_bytes: Vec::new(),
        }
    }

    fn add(&mut self, trial: &Trial, floor: &Trial, bytes: &Trial) {
        self.trials += 1;
        self.hist.add(&trial.hist).expect("same bounds");
        self.round_trips += trial.round_trips;
        self.elapsed += trial.elapsed;
        self.p50s.push(trial.p50);
        self.vs_floor.push(trial.p50 / floor.p50.max(1.0));
        self.vs_bytes.push(trial.p50 / bytes.p50.max(1.0));
    }

    fn p50(&self) -> f64 {
        fine_p50(&self.hist)
    }
}

/// The round-trip results of one placement (or of the whole run): the two floors and every
/// contender, each over the triples classified there.
struct Group {
    /// "near", "far", "one placement", …, with its 8-byte floor range; "all trials" for the run.
    title: String,
    /// Triples in this group.
    triples: usize,
    floor: Merged,
    bytes: Merged,
    /// Parallel to `ROUND_TRIP_CONTENDERS`.
    contenders: Vec<Merged>,
}

impl Group {
    fn new(title: String) -> Self {
        Self {
            title,
            triples: 0,
            floor: Merged::new(),
            bytes: Merged::new(),
            contenders: ROUND_TRIP_CONTENDERS
                .iter()
                .map(|_| Merged::new())
                .collect(),
        }
    }

    fn add(&mut self, triple: &Triple) {
        let (floor, bytes) = (&triple.floor, &triple.bytes);
        self.triples += 1;
        self.floor.add(floor, floor, bytes);
        self.bytes.add(bytes, floor, bytes);
        self.contenders[triple.contender].add(&triple.contender_trial, floor, bytes);
    }

    fn find(&self, transport: Transport, mode: Mode, lanes: usize) -> &Merged {
        let index = ROUND_TRIP_CONTENDERS
            .iter()
            .position(|c| c.transport == transport && c.mode == mode && c.lanes == lanes)
            .expect("every contender is measured");
        &self.contenders[index]
    }
}

/// How a run's round-trip triples fall into placements.
struct Classified {
    /// One line saying what was detected, for the header.
    summary: String,
    /// Per placement, nearest first; a single one when the run saw one.
    groups: Vec<Group>,
    /// Every triple, whatever its placement.
    all: Group,
}

/// Classifies the triples by placement. First the triples during which the placement changed
/// are set aside: within one placement the same-bytes floor costs a steady multiple of the
/// 8-byte floor, so a triple whose two floors are out of that ratio (off the run's median ratio
/// by more than [`PLACEMENT_GAP`] either way) had them in different placements, and its
/// contender trial in either. They count in the run's totals, in no placement. The rest are
/// classified by their 8-byte floor trial ([`placements`]: a gap of more than [`PLACEMENT_GAP`]
/// between neighbouring p50s separates two placements).
fn classify(triples: &[Triple]) -> Classified {
    let ratios: Vec<f64> = triples
        .iter()
        .map(|t| t.bytes.p50 / t.floor.p50.max(1.0))
        .collect();
    let typical = median(&ratios);
    let steady: Vec<&Triple> = triples
        .iter()
        .zip(&ratios)
        .filter(|(_, &r)| r <= typical * PLACEMENT_GAP && r >= typical / PLACEMENT_GAP)
        .map(|(t, _)| t)
        .collect();
    let switched = triples.len() - steady.len();
    let floors: Vec<f64> = steady.iter().map(|t| t.floor.p50).collect();
    let (clusters, which) = placements(&floors);
    let mut groups: Vec<Group> = clusters
        .iter()
        .map(|c| {
            Group::new(format!(
                "{} (8-byte floor trials {}–{})",
                c.name,
                ns_cell(c.low),
                ns_cell(c.high)
            ))
        })
        .collect();
    let mut all = Group::new("all trials".to_string());
    for triple in triples {
        all.add(triple);
    }
    for (triple, &placement) in steady.iter().zip(&which) {
        groups[placement].add(triple);
    }
    let rule = format!(
        "told from the 8-byte floor trials' p50s: sorted, a gap of more than {PLACEMENT_GAP}× \
         between neighbours starts another placement; named by this project's EPYC guest's \
         bands: nearest below 100 ns, near below 350 ns, far above"
    );
    let parts: Vec<String> = clusters
        .iter()
        .zip(&groups)
        .map(|(c, g)| {
            format!(
                "{} {}–{} ({} triples)",
                c.name,
                ns_cell(c.low),
                ns_cell(c.high),
                g.triples
            )
        })
        .collect();
    let mut summary = match clusters.len() {
        0 => "no steady triple to tell it from".to_string(),
        1 => format!("one placement throughout: {} ({rule})", parts[0]),
        n => format!(
            "{n} placements: {} ({rule}); reported per placement",
            parts.join(", ")
        ),
    };
    if switched > 0 {
        summary.push_str(&format!(
            "; {switched} triple(s) of {} had their two floors in different placements (the \
             same-bytes ÷ 8-byte floor ratio off the run's {typical:.2}× by more than \
             {PLACEMENT_GAP}×: the placement changed during them): in the run's totals, in no \
             placement's table",
            triples.len()
        ));
    }
    Classified {
        summary,
        groups,
        all,
    }
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
    let load_before = load_average();
    let place = placement();
    let ns_per_tick = calibrate(Duration::from_millis(if config.quick { 20 } else { 100 }));

    let mut triples: Vec<Triple> = Vec::new();
    let mut streams: Vec<(usize, Vec<Rate>)> = STREAM_SIZES
        .iter()
        .filter(|&&size| config.runs(&stream_key(size)))
        .map(|&size| {
            let rates = STREAM_CONTENDERS
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
        let k = if config.runs("rt") {
            ROUND_TRIP_CONTENDERS.len()
        } else {
            0
        };
        for i in 0..k {
            let index = (round + i) % k;
            let contender = ROUND_TRIP_CONTENDERS[index];
            let floor = round_trip_trial(FLOOR, &config, ns_per_tick);
            let contender_trial = round_trip_trial(contender, &config, ns_per_tick);
            let bytes = round_trip_trial(SAME_BYTES_FLOOR, &config, ns_per_tick);
            triples.push(Triple {
                contender: index,
                floor,
                contender_trial,
                bytes,
            });
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

    let loads = (load_before, load_average());
    print_report(&config, &place, ns_per_tick, &loads, &triples, &streams);
    println!(
        "Total time {:.1} s. Compare contenders within one run only.",
        started.elapsed().as_secs_f64()
    );
}

fn print_report(
    config: &Config,
    place: &common::Placement,
    ns_per_tick: f64,
    loads: &(String, String),
    triples: &[Triple],
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
            "busy loops spin"
        } else {
            "ONE CPU: busy loops yield, numbers mean little"
        }
    );
    println!("- {TIMER_METHOD}; {ns_per_tick:.4} ns per tick");
    println!(
        "- round trips: {} untimed warm-up, then up to {} timed or {} ms per trial; every \
         contender trial between an 8-byte floor trial and a same-bytes floor trial; streams: \
         {WARMUP_MESSAGES} warm-up messages, then {} ms per trial",
        config.rt_warmup,
        config.rt_max,
        config.rt_budget.as_millis(),
        config.stream_budget.as_millis()
    );
    println!(
        "- every byte of each {}-byte round-trip message changes from one message to the \
         next, and every byte of the echo is checked, by every contender and the same-bytes floor",
        config.rt_size
    );
    let classified = (!triples.is_empty()).then(|| classify(triples));
    if let Some(classified) = &classified {
        println!("- placement: {}", classified.summary);
        let trace: Vec<String> = triples
            .iter()
            .map(|t| format!("{:.0}", t.floor.p50))
            .collect();
        println!(
            "- 8-byte floor trial p50s in run order (ns): {}",
            trace.join(" ")
        );
    }
    println!();

    if let Some(classified) = &classified {
        if classified.groups.len() > 1 {
            for group in &classified.groups {
                print_round_trips(group, config.rt_size, true);
            }
            println!(
                "The run's trials of every placement together (placements mixed: for the \
                 blocking and socket rows, whose times dwarf the difference):"
            );
            println!();
        }
        print_round_trips(&classified.all, config.rt_size, false);
    }
    for (size, rates) in streams {
        print_stream(*size, rates);
    }
    if let Some(classified) = &classified {
        print_targets(classified, config.rt_size);
    }
}

fn print_round_trips(group: &Group, size: usize, per_placement: bool) {
    println!(
        "#### Cross-process round trip, {size} B messages: {} ({} triples)",
        group.title, group.triples
    );
    println!();
    println!(
        "| contender | trials | p50 | p99 | p99.9 | max | 10⁹ ÷ p50 (/s) | mean rate, incl. \
         stalls (/s) | per-trial p50 min–max | p50 ÷ 8-byte floor: median (min–max) | p50 ÷ \
         same-bytes floor: median (min–max) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let rows = [(FLOOR, &group.floor), (SAME_BYTES_FLOOR, &group.bytes)]
        .into_iter()
        .chain(ROUND_TRIP_CONTENDERS.into_iter().zip(&group.contenders));
    let mut blocking_seen = false;
    for (contender, merged) in rows {
        if contender.mode == Mode::Block && !blocking_seen {
            blocking_seen = true;
            if per_placement {
                // The futex and blocking socket rows change by microseconds with the load, not
                // by the placement's hundreds of nanoseconds: the all-trials table has them.
                break;
            }
            println!("| *blocking: receivers sleep until woken* | | | | | | | | | | |");
        }
        if merged.trials == 0 {
            println!("| {} | 0 | | | | | | | | | |", contender.label());
            continue;
        }
        let h = &merged.hist;
        let (lo, hi) = min_max(&merged.p50s);
        let ratio = |ratios: &[f64], reference: bool| {
            if reference {
                "1 (reference)".to_string()
            } else {
                ratio_cell(ratios)
            }
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {}–{} | {} | {} |",
            contender.label(),
            merged.trials,
            ns_cell(merged.p50()),
            ns_cell(h.value_at_quantile(0.99) as f64),
            ns_cell(h.value_at_quantile(0.999) as f64),
            ns_cell(h.max() as f64),
            1e9 / merged.p50().max(1.0),
            merged.round_trips as f64 / merged.elapsed.as_secs_f64().max(1e-9),
            ns_cell(lo),
            ns_cell(hi),
            ratio(&merged.vs_floor, contender == FLOOR),
            ratio(&merged.vs_bytes, contender == SAME_BYTES_FLOOR),
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
            if rate.contender == SHM_BUSY {
                "1 (reference)".to_string()
            } else {
                ratio_cell(&rate.ratios)
            }
        );
    }
    println!();
}

fn print_targets(classified: &Classified, size: usize) {
    println!("#### Targets (median per-trial ratios of this run; printed, never asserted)");
    println!();
    let placements: &[Group] = &classified.groups;
    for lanes in [1, 16] {
        let name = if lanes == 1 { "1 lane" } else { "16 lanes" };
        let mut verdicts = Vec::new();
        for group in placements {
            let shm = group.find(Transport::Shm, Mode::Busy, lanes);
            if shm.trials == 0 {
                continue;
            }
            let (bytes, floor) = (median(&shm.vs_bytes), median(&shm.vs_floor));
            let pass = bytes <= TARGET_RATIO;
            let verdict = if size != RT_SIZE {
                format!("the target is set for {RT_SIZE} B messages")
            } else if pass {
                format!(
                    "PASS ({:.0}% to spare)",
                    (1.0 - bytes / TARGET_RATIO) * 100.0
                )
            } else {
                format!("MISS by {:.0}%", (bytes / TARGET_RATIO - 1.0) * 100.0)
            };
            println!(
                "- {}: shm channel, {name}, busy-poll, {size} B round trip p50 = {bytes:.2}× \
                 the same-bytes floor (target ≤ {TARGET_RATIO:.2}×): {verdict}; {floor:.2}× the \
                 8-byte floor; same-bytes floor = {:.2}× the 8-byte floor",
                group.title,
                median(&group.bytes.vs_floor),
            );
            verdicts.push((group.title.clone(), (pass, bytes)));
        }
        if size == RT_SIZE && verdicts.iter().any(|v| !v.1 .0) {
            let missed: Vec<String> = verdicts
                .iter()
                .filter(|v| !v.1 .0)
                .map(|v| format!("{} by {:.0}%", v.0, (v.1 .1 / TARGET_RATIO - 1.0) * 100.0))
                .collect();
            let scope = if verdicts.iter().any(|v| v.1 .0) {
                "met in this run's other placement(s)"
            } else {
                "met in no placement of this run"
            };
            println!(
                "  - {name}: out of reach in {} ({scope}); BENCHMARKS.md, \"Why the 64-byte \
                 target is out of reach\", says why",
                missed.join(", ")
            );
        }
    }
    let all = &classified.all;
    let p50 = |m: &Merged| m.p50();
    let block = all.find(Transport::Shm, Mode::Block, 1);
    let tcp_block = all.find(Transport::Tcp, Mode::Block, 1);
    let uds_block = all.find(Transport::Uds, Mode::Block, 1);
    println!(
        "- blocking wake-up round trip p50 (all trials): shm channel (futex) {}, blocking TCP {} \
         ({:.2}× the channel), blocking Unix socket {} ({:.2}× the channel)",
        ns_cell(p50(block)),
        ns_cell(p50(tcp_block)),
        p50(tcp_block) / p50(block).max(1.0),
        ns_cell(p50(uds_block)),
        p50(uds_block) / p50(block).max(1.0),
    );
    let tcp = all.find(Transport::Tcp, Mode::Busy, 1);
    println!(
        "- for the issue's reference figures (8-byte floor ≈ 0.3 µs; busy-polled TCP ≈ 17×, \
         blocking TCP ≈ 41× the floor): this run's 8-byte floor p50 {}, busy-polled TCP {:.1}×, \
         blocking TCP {:.1}× (median per-trial ratios, all trials)",
        ns_cell(p50(&all.floor)),
        median(&tcp.vs_floor),
        median(&tcp_block.vs_floor),
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
