//! Two processes ping-pong messages over a shared-memory [`Channel`], over TCP loopback, over
//! this crate's [`Connection`] (TCP with a persisted send queue and acknowledgements) and over a
//! Unix domain socket, and print the round-trip percentiles of each beside two raw floors, so the
//! differences show in one run: among them what recovery (every message delivered exactly once
//! across disconnects and restarts) costs over raw TCP.
//!
//! ```text
//! cargo run --release -p shm-tcp --example pingpong
//! cargo run --release -p shm-tcp --example pingpong -- --lanes 16
//! cargo run --release -p shm-tcp --example pingpong -- --size 1024 --count 50000 --pin
//! ```
//!
//! (This was `shm-channel`'s example. It lives here because it measures this crate as well, and
//! dependencies flow `shm-channel` ← `shm-tcp`, not the other way.)
//!
//! The program re-executes itself as the echoing peer (`--child ...`, not for direct use), one
//! child process per measurement. Each process has exactly one thread, so busy-polling spins at
//! most two threads: fine on a 2-core machine. With a single allowed CPU the "busy" runs yield
//! the CPU between polls instead of spinning.
//!
//! Transports, in two groups compared against the shared-memory channel of their group:
//! - busy-polling: the channel with [`WaitStrategy::BusyPoll`]; TCP loopback (`TCP_NODELAY`) and
//!   a Unix stream socket, both non-blocking, their reads retried in a loop (one `recv` system
//!   call per poll); and this crate's [`Connection`] over TCP loopback (`TCP_NODELAY`,
//!   non-blocking too), polled with `front`, which reads the socket when nothing is buffered (one
//!   `read` per poll), its `push` one `writev` carrying the message and the acknowledgement of the
//!   last pop. Its state files (each side's persisted send queue) live in a fresh folder under
//!   the system's temporary folder, with [`Durability::ProcessCrash`], the default (stores into a
//!   shared file mapping, no system call; the header says which file system the folder is on).
//!   The closing lines give its p50 ÷ raw TCP's: what recovery costs;
//! - blocking: the channel with [`WaitStrategy::Block`] (futex in the segment, no spinning
//!   first), and TCP and Unix sockets with blocking reads.
//!
//! `--lanes N` (1, 2, 4, 8 or 16; default 1) runs the channel as `Channel<C, N>`: message `k` goes
//! to lane `k % N`, so consecutive messages never share a cache line (a round trip moves fewer
//! lines the other side touched one message before), and the largest message is divided by `N`.
//! Each lane count is its own monomorphised code, as in a program that picks one.
//!
//! Right before each transport, two raw floors run against a fresh child: the **8-byte floor**
//! (one word each way, two cache lines) and the **same-bytes floor** (the message's payload and a
//! sequence word each way, each on lines of their own: the least any transport of that message
//! must move). The table shows, for each transport, the placement of the two CPUs told from the
//! 8-byte floor run right before it (this project's 2-vCPU EPYC guest switches by itself between
//! placements: "near", about 107–150 ns for that floor, "far", about 470–530 ns, and now and
//! then "nearest", 70–80 ns; `shm-channel/benches/common/peers.rs` has the rule), and the summary
//! gives the busy channel's ratio to the floors of its own pair. The same-bytes floor is the
//! yardstick for messages of a cache line or more; below that, the 8-byte floor already carries
//! the bytes. Every byte of every message changes from one round trip to the next and every byte
//! of each echo is checked, for every transport and the same-bytes floor alike.
//!
//! The segment lives in `/dev/shm` under a name unique to this run, and is unlinked as soon as the
//! child has attached (so even Ctrl-C or a crash afterwards leaves no file), and on errors; the
//! floors' files likewise. The Unix socket uses Linux's abstract namespace, which leaves no file
//! either. The shm-tcp state folder is removed when its run ends (a crash or Ctrl-C leaves it in
//! the temporary folder).
//!
//! The process plumbing (peer process, pinning, the channel's attach handshake and echo, the
//! sockets, the floors, the placement rule) is shared with `shm-channel`'s benches:
//! `shm-channel/benches/common/peers.rs`; the shm-tcp side with this crate's benches:
//! `benches/common/ours.rs`.

#[macro_use]
#[path = "../../shm-channel/benches/common/peers.rs"]
mod peers;
#[path = "../benches/common/ours.rs"]
mod ours;

use std::env;
use std::io::{self, IsTerminal};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use peers::{
    allowed_cpus, attach_channel, cpu_arg, cpu_model, create_channel, fill, filled_with, fine_p50,
    floor_echo, load_average, pin_to, pin_to_arg, placements, Error, Floor, Mode, Peer, Socket,
    PLACEMENT_GAP,
};
use shm_channel::{Channel, WaitOptions, WaitStrategy};
use shm_tcp::{Connection, Durability};
use spsc_core::{MessageReceiver, RecvError, SendSlot};

/// Ring capacity for small messages (up to 32 KiB with one lane, 2 KiB with 16): small, so the
/// rings stay in cache.
const SMALL: usize = 1 << 16;
/// Ring capacity for larger messages (up to 8 MiB with one lane, 512 KiB with 16); a 32 MiB
/// segment, made only when needed.
const LARGE: usize = 1 << 24;
/// The channel's target: its busy-polled round trip p50 ÷ the same-bytes floor's.
const TARGET_RATIO: f64 = 1.25;
/// shm-tcp's target: its busy-polled round trip p50 ÷ raw TCP's (busy-polled too).
const TCP_TARGET_RATIO: f64 = 1.05;
/// shm-tcp message tags: a ping or its echo, and the end of a run.
const TAG_DATA: u16 = 1;
const TAG_STOP: u16 = 2;

const USAGE: &str = "\
usage: pingpong [--size BYTES] [--count ROUND_TRIPS] [--lanes N] [--pin]

  --size N    message payload in bytes (default 64)
  --count N   timed round trips per transport and per floor (default 100000), after a
              warm-up of count/10 (at least 100, at most 10000)
  --lanes N   lanes of the channel: 1, 2, 4, 8 or 16 (default 1). Message k goes to lane
              k % N, so consecutive messages never share a cache line; the largest message
              is divided by N (64 KiB rings: 32 KiB - 8 with one lane, 2 KiB - 8 with 16)
  --pin       pin the two processes to two distinct CPUs of the allowed set

Prints p50, p99, p99.9 and max of each transport's round trip; 10^9 / p50 (round trips per
second at the median round trip) and the mean rate (all timed round trips / their total time,
stalls included); each transport's ratio to the shm channel of its group; and, from the two
raw floors run before each transport, the placement of the two CPUs and the channel's ratio
to the floors; and shm-tcp's ratio to raw TCP (what its persisted queue and acks cost).";

/// The lane counts `--lanes` accepts: `Channel<C, L>` takes 1 to 16, powers of two.
const LANES: [usize; 5] = [1, 2, 4, 8, 16];

/// Calls `$f::<$cap, L>($args)` with `L` the lane count `$lanes` (one of [`LANES`]): one
/// monomorphised copy per lane count, as a program that picks its lane count would have.
macro_rules! with_lanes {
    ($lanes:expr, $f:ident::<$cap:ident>($($arg:expr),* $(,)?)) => {
        match $lanes {
            1 => $f::<$cap, 1>($($arg),*),
            2 => $f::<$cap, 2>($($arg),*),
            4 => $f::<$cap, 4>($($arg),*),
            8 => $f::<$cap, 8>($($arg),*),
            16 => $f::<$cap, 16>($($arg),*),
            other => unreachable!("--lanes {other} was accepted"),
        }
    };
}

/// The largest payload of a `Channel<C, lanes>`.
fn max_payload<const C: usize, const L: usize>() -> usize {
    Channel::<C, L>::MAX_PAYLOAD as usize
}

/// Whether `size`-byte messages fit the small ring with `lanes` lanes (parent and child must
/// pick the same capacity).
fn fits_small(lanes: usize, size: usize) -> bool {
    size <= with_lanes!(lanes, max_payload::<SMALL>())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Shm,
    Tcp,
    /// This crate's [`Connection`] (busy-polled only).
    Ours,
    Uds,
    /// Either floor: the 8-byte one with no payload, the same-bytes one with the message's.
    Floor,
}

impl Kind {
    fn arg(self) -> &'static str {
        match self {
            Kind::Shm => "shm",
            Kind::Tcp => "tcp",
            Kind::Ours => "shm-tcp",
            Kind::Uds => "uds",
            Kind::Floor => "floor",
        }
    }

    fn parse(arg: &str) -> Result<Self, Error> {
        [Kind::Shm, Kind::Tcp, Kind::Ours, Kind::Uds, Kind::Floor]
            .into_iter()
            .find(|kind| kind.arg() == arg)
            .ok_or_else(|| format!("unknown transport {arg:?}").into())
    }

    fn label(self, mode: Mode, lanes: usize) -> String {
        let lanes = if lanes == 1 {
            "1 lane".to_string()
        } else {
            format!("{lanes} lanes")
        };
        match (self, mode) {
            (Kind::Shm, Mode::Busy) => format!("shm channel (BusyPoll, {lanes})"),
            (Kind::Tcp, Mode::Busy) => "TCP loopback (non-blocking, polled)".to_string(),
            (Kind::Ours, _) => "shm-tcp (persisted, acked, polled)".to_string(),
            (Kind::Uds, Mode::Busy) => "Unix socket (non-blocking, polled)".to_string(),
            (Kind::Shm, Mode::Block) => format!("shm channel (futex Block, {lanes})"),
            (Kind::Tcp, Mode::Block) => "TCP loopback (blocking reads)".to_string(),
            (Kind::Uds, Mode::Block) => "Unix socket (blocking reads)".to_string(),
            (Kind::Floor, _) => "floor".to_string(),
        }
    }
}

/// A mode as the `--child` arguments spell it (the benches describe their peer's job otherwise).
impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Busy => "busy",
            Mode::Block => "block",
        }
    }

    fn parse(arg: &str) -> Result<Self, Error> {
        [Mode::Busy, Mode::Block]
            .into_iter()
            .find(|mode| mode.arg() == arg)
            .ok_or_else(|| format!("unknown mode {arg:?}").into())
    }
}

/// What both processes need to know about a run.
#[derive(Clone, Copy, Debug)]
struct Params {
    size: usize,
    lanes: usize,
    /// Round trips the child echoes: warm-up plus timed.
    total: u64,
    /// `false` with a single allowed CPU: poll loops yield instead of spinning.
    spin: bool,
}

impl Params {
    fn wait_options(&self, mode: Mode) -> WaitOptions {
        WaitOptions::new(match (mode, self.spin) {
            (Mode::Busy, true) => WaitStrategy::BusyPoll,
            (Mode::Busy, false) => WaitStrategy::SpinThenYield { spins: 64 },
            (Mode::Block, _) => WaitStrategy::Block { spin_first: 0 },
        })
    }

    /// Between two polls that found nothing.
    fn relax(&self) {
        if self.spin {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("--child") => child(&args[1..]),
        _ => parent(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pingpong: {error}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The measuring (parent) process.

struct Config {
    size: usize,
    count: u64,
    warmup: u64,
    lanes: usize,
    pin: bool,
}

fn parse_args(args: &[String]) -> Result<Option<Config>, Error> {
    let mut config = Config {
        size: 64,
        count: 100_000,
        warmup: 0,
        lanes: 1,
        pin: false,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<u64, Error> {
            let text = args
                .next()
                .ok_or(format!("{name} needs a value\n{USAGE}"))?;
            text.replace('_', "")
                .parse()
                .map_err(|_| format!("{name}: {text:?} is not a number\n{USAGE}").into())
        };
        match arg.as_str() {
            "--size" => config.size = usize::try_from(value("--size")?)?,
            "--count" => config.count = value("--count")?,
            "--lanes" => config.lanes = usize::try_from(value("--lanes")?)?,
            "--pin" => config.pin = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}").into()),
        }
    }
    if !LANES.contains(&config.lanes) {
        return Err(format!("--lanes must be one of {LANES:?}\n{USAGE}").into());
    }
    // shm-tcp's largest message is 16 bytes less than the one-lane channel's (its frame header).
    let max = with_lanes!(config.lanes, max_payload::<LARGE>())
        .min(Connection::<LARGE>::MAX_PAYLOAD as usize);
    if config.size == 0 || config.size > max {
        return Err(format!(
            "--size must be from 1 to {max} bytes with {} lane(s)",
            config.lanes
        )
        .into());
    }
    if config.count == 0 {
        return Err("--count must be at least 1".into());
    }
    config.warmup = (config.count / 10).clamp(100, 10_000);
    Ok(Some(config))
}

/// The outcome of one measurement.
struct Stats {
    label: String,
    histogram: Histogram<u64>,
    elapsed: Duration,
    count: u64,
}

impl Stats {
    fn p50(&self) -> f64 {
        fine_p50(&self.histogram)
    }
}

/// One transport's run and the two floors run right before it.
struct Run {
    kind: Kind,
    mode: Mode,
    floor: Stats,
    bytes: Stats,
    stats: Stats,
}

fn parent(args: &[String]) -> Result<(), Error> {
    let Some(config) = parse_args(args)? else {
        return Ok(());
    };
    let load_before = load_average();
    let allowed = allowed_cpus()?;
    let spin = allowed.len() >= 2;
    let cpus = if config.pin {
        match allowed[..] {
            [mine, theirs, ..] => {
                pin_to(mine)?;
                Some((mine, theirs))
            }
            _ => {
                eprintln!("pingpong: --pin needs two allowed CPUs; running unpinned");
                None
            }
        }
    } else {
        None
    };
    let params = Params {
        size: config.size,
        lanes: config.lanes,
        total: config.warmup + config.count,
        spin,
    };

    println!(
        "ping-pong between two processes: {} B messages, {} timed round trips per transport \
         and per floor (after {} warm-up); channel with {} lane(s)",
        config.size, config.count, config.warmup, config.lanes
    );
    println!("CPU: {}", cpu_model());
    println!(
        "{} CPU(s) allowed; {}; {}",
        allowed.len(),
        match cpus {
            Some((a, b)) => format!("pinned to CPUs {a} and {b}"),
            None => "not pinned (--pin to pin)".to_string(),
        },
        if spin {
            "busy runs spin one thread per process"
        } else {
            "one CPU: busy runs yield between polls"
        }
    );
    println!(
        "every round trip is timed with Instant::now(); its overhead (~20-30 ns) is included for \
         every transport and floor"
    );
    let temp = env::temp_dir();
    println!(
        "shm-tcp: state files in a fresh folder under {} ({}), Durability::ProcessCrash (the \
         default), TCP_NODELAY, polled with front()",
        temp.display(),
        ours::filesystem(&temp)
    );
    println!();

    let runs = [
        (Kind::Shm, Mode::Busy),
        (Kind::Tcp, Mode::Busy),
        (Kind::Ours, Mode::Busy),
        (Kind::Uds, Mode::Busy),
        (Kind::Shm, Mode::Block),
        (Kind::Tcp, Mode::Block),
        (Kind::Uds, Mode::Block),
    ];
    let child_cpu = cpus.map(|(_, theirs)| theirs);
    let mut results = Vec::new();
    for (kind, mode) in runs {
        let label = kind.label(mode, config.lanes);
        let floor = run_floor(0, &config, params, child_cpu)
            .map_err(|error| format!("the 8-byte floor before {label}: {error}"))?;
        let bytes = run_floor(config.size, &config, params, child_cpu)
            .map_err(|error| format!("the same-bytes floor before {label}: {error}"))?;
        let stats = run(kind, mode, &config, params, child_cpu)
            .map_err(|error| format!("{label}: {error}"))?;
        results.push(Run {
            kind,
            mode,
            floor,
            bytes,
            stats,
        });
    }
    print_table(&results, &config);
    println!(
        "load average (1, 5, 15 min): {load_before} at the start, {} at the end (other work on \
         the machine takes the CPUs the spinning processes need)",
        load_average()
    );
    Ok(())
}

fn print_table(results: &[Run], config: &Config) {
    let floors: Vec<f64> = results.iter().map(|r| r.floor.p50()).collect();
    let (clusters, which) = placements(&floors);
    println!(
        "{:<38} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11} {:>7} {:>7}  placement",
        "round trip", "p50", "p99", "p99.9", "max", "1e9/p50 /s", "mean /s *", "p50/shm", "p99/shm"
    );
    let row = |stats: &Stats, base: Option<(f64, f64)>, placement: &str| {
        let h = &stats.histogram;
        let (p50, p99) = (stats.p50(), h.value_at_quantile(0.99) as f64);
        let ratios = base.map_or_else(
            || (String::new(), String::new()),
            |(base50, base99)| {
                (
                    format_ratio(p50 / base50.max(1.0)),
                    format_ratio(p99 / base99.max(1.0)),
                )
            },
        );
        println!(
            "  {:<36} {:>9} {:>9} {:>9} {:>9} {:>11.0} {:>11.0} {:>7} {:>7}  {placement}",
            stats.label,
            format_ns(p50),
            format_ns(p99),
            format_ns(h.value_at_quantile(0.999) as f64),
            format_ns(h.max() as f64),
            1e9 / p50.max(1.0),
            stats.count as f64 / stats.elapsed.as_secs_f64(),
            ratios.0,
            ratios.1,
        );
    };
    let placement_of = |i: usize| {
        format!(
            "{} (8-byte floor {})",
            clusters[which[i]].name,
            format_ns(floors[i])
        )
    };
    println!("floors (the pair run right before the busy shm channel):");
    let first = &results[0];
    row(&first.floor, None, &placement_of(0));
    row(&first.bytes, None, &placement_of(0));
    for mode in [Mode::Busy, Mode::Block] {
        println!(
            "{}",
            match mode {
                Mode::Busy => "busy-polling:",
                Mode::Block => "blocking (the receiver sleeps until woken):",
            }
        );
        let group: Vec<(usize, &Run)> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.mode == mode)
            .collect();
        let Some((_, base)) = group.first() else {
            continue;
        };
        let base = (
            base.stats.p50(),
            base.stats.histogram.value_at_quantile(0.99) as f64,
        );
        for (i, run) in group {
            row(&run.stats, Some(base), &placement_of(i));
        }
    }
    println!();
    println!(
        "{} timed round trips of {} B each way per transport and per floor.",
        config.count, config.size
    );
    println!(
        "1e9/p50: round trips per second at the median round trip. mean /s *: timed round trips \
         / their total time, so every stall (a process descheduled, an interrupt) is in it; on a \
         shared machine it swings by up to 4x between runs while the p50 holds: read p50 first."
    );
    println!(
        "p50/shm, p99/shm: the row's percentile / the shm channel's in the same group: 2.0x \
         means that transport takes twice the channel's time (the channel is 2x faster); below \
         1.0x it beats the channel."
    );
    println!(
        "placement: where the two CPUs were, told from the 8-byte floor run right before each row \
         (sorted floor p50s; a gap of more than {PLACEMENT_GAP}x between neighbours starts another \
         placement); {}",
        if clusters.len() == 1 {
            "one placement throughout this run".to_string()
        } else {
            format!(
                "{} placements in this run: compare rows of one placement",
                clusters.len()
            )
        }
    );
    // The channel against the floors of its own pair.
    let busy = &results[0];
    let (p50, floor, bytes) = (busy.stats.p50(), busy.floor.p50(), busy.bytes.p50());
    let ratio = p50 / bytes.max(1.0);
    println!(
        "{}: p50 = {:.2}x the same-bytes floor (target <= {TARGET_RATIO:.2}x: {}), {:.2}x the \
         8-byte floor; same-bytes floor = {:.2}x the 8-byte floor; {}",
        busy.stats.label,
        ratio,
        if ratio <= TARGET_RATIO {
            format!(
                "PASS, {:.0}% to spare",
                (1.0 - ratio / TARGET_RATIO) * 100.0
            )
        } else {
            format!("MISS by {:.0}%", (ratio / TARGET_RATIO - 1.0) * 100.0)
        },
        p50 / floor.max(1.0),
        bytes / floor.max(1.0),
        placement_of(0),
    );
    // What recovery costs: shm-tcp against raw TCP, both busy-polled.
    let find = |kind: Kind| {
        results
            .iter()
            .position(|r| r.kind == kind && r.mode == Mode::Busy)
    };
    if let (Some(ours), Some(tcp)) = (find(Kind::Ours), find(Kind::Tcp)) {
        let (o, t) = (&results[ours].stats, &results[tcp].stats);
        let ratio = o.p50() / t.p50().max(1.0);
        let p99 = |s: &Stats| s.histogram.value_at_quantile(0.99) as f64;
        println!(
            "{}: p50 = {:.2}x {}'s (target <= {TCP_TARGET_RATIO:.2}x: {}), p99 = {:.2}x: what \
             exactly-once delivery across disconnects and restarts costs over raw TCP; one run \
             of each, one after the other, so the ratio moves by about 10% between runs: `cargo \
             bench -p shm-tcp --bench report` alternates the two within one pair of processes{}",
            o.label,
            ratio,
            t.label,
            if ratio <= TCP_TARGET_RATIO {
                format!(
                    "PASS, {:.0}% to spare",
                    (1.0 - ratio / TCP_TARGET_RATIO) * 100.0
                )
            } else {
                format!("MISS by {:.0}%", (ratio / TCP_TARGET_RATIO - 1.0) * 100.0)
            },
            p99(o) / p99(t).max(1.0),
            if which[ours] == which[tcp] {
                String::new()
            } else {
                format!(
                    " (the two ran in different placements, {} and {}: run again to compare)",
                    clusters[which[tcp]].name, clusters[which[ours]].name
                )
            },
        );
    }
    println!();
}

fn format_ratio(ratio: f64) -> String {
    if ratio < 100.0 {
        format!("{ratio:.1}x")
    } else {
        format!("{ratio:.0}x")
    }
}

fn format_ns(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

fn run(
    kind: Kind,
    mode: Mode,
    config: &Config,
    params: Params,
    child_cpu: Option<usize>,
) -> Result<Stats, Error> {
    let label = kind.label(mode, config.lanes);
    let mut progress = Progress::new(&label, config.count);
    let small = fits_small(params.lanes, params.size);
    let stats = match kind {
        Kind::Shm if small => with_lanes!(
            params.lanes,
            run_shm::<SMALL>(mode, config, params, child_cpu, &mut progress)
        ),
        Kind::Shm => with_lanes!(
            params.lanes,
            run_shm::<LARGE>(mode, config, params, child_cpu, &mut progress)
        ),
        Kind::Tcp | Kind::Uds => {
            let start_child = |address: &str| spawn(kind, mode, address, params, child_cpu);
            let (socket, child) = match kind {
                Kind::Tcp => Socket::accept_tcp(start_child)?,
                _ => Socket::accept_uds(start_child)?,
            };
            run_socket(socket, child, mode, config, params, &mut progress)
        }
        Kind::Ours if params.size <= Connection::<SMALL>::MAX_PAYLOAD as usize => {
            run_ours::<SMALL>(config, params, child_cpu, &mut progress)
        }
        Kind::Ours => run_ours::<LARGE>(config, params, child_cpu, &mut progress),
        Kind::Floor => unreachable!("floors run through run_floor"),
    };
    progress.clear();
    let (histogram, elapsed) = stats?;
    Ok(Stats {
        label,
        histogram,
        elapsed,
        count: config.count,
    })
}

/// One floor run: the 8-byte floor with `payload == 0`, else the same-bytes floor.
fn run_floor(
    payload: usize,
    config: &Config,
    params: Params,
    child_cpu: Option<usize>,
) -> Result<Stats, Error> {
    let label = if payload == 0 {
        "floor: 8 B (2 atomics, 2 lines)".to_string()
    } else {
        format!("floor: same bytes ({payload} B + seq)")
    };
    let mut progress = Progress::new(&label, config.count);
    let floor_params = Params {
        size: payload,
        ..params
    };
    let mut floor = Floor::start(payload, |path| {
        spawn(Kind::Floor, Mode::Busy, path, floor_params, child_cpu)
    })?;
    let mut message = vec![0u8; payload];
    // Sequence numbers from 1: the echo word starts at 0.
    let result = measure(config, &mut progress, |seq| {
        floor.round_trip(seq + 1, &mut message, || params.relax())
    });
    progress.clear();
    let (histogram, elapsed) = result?;
    floor.finish()?;
    Ok(Stats {
        label,
        histogram,
        elapsed,
        count: config.count,
    })
}

/// Times `config.count` calls of `round_trip` after `config.warmup` untimed ones.
fn measure(
    config: &Config,
    progress: &mut Progress,
    mut round_trip: impl FnMut(u64) -> Result<(), Error>,
) -> Result<(Histogram<u64>, Duration), Error> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for seq in 0..config.warmup {
        round_trip(seq)?;
    }
    let started = Instant::now();
    for i in 0..config.count {
        let t0 = Instant::now();
        round_trip(config.warmup + i)?;
        let ns = t0.elapsed().as_nanos();
        histogram.saturating_record(u64::try_from(ns).unwrap_or(u64::MAX));
        if i % 1024 == 0 {
            progress.tick(i);
        }
    }
    Ok((histogram, started.elapsed()))
}

fn check_echo(payload: &[u8], seq: u64, size: usize) -> Result<(), Error> {
    if payload.len() != size || !filled_with(payload, seq) {
        return Err(format!("round trip {seq}: the echo does not match what was sent").into());
    }
    Ok(())
}

fn run_shm<const C: usize, const L: usize>(
    mode: Mode,
    config: &Config,
    params: Params,
    child_cpu: Option<usize>,
    progress: &mut Progress,
) -> Result<(Histogram<u64>, Duration), Error> {
    // Unlinks the segment once the child has attached, or on an error before.
    let (mut tx, mut rx, mut child) = create_channel::<C, L>("pingpong", |name| {
        spawn(Kind::Shm, mode, name, params, child_cpu)
    })?;

    let size = params.size;
    // The channel reports a dead peer (an unreaped zombie child counts as dead); the timeout
    // also lets us look at the child's exit status now and then.
    let wait = params
        .wait_options(mode)
        .timeout(Duration::from_millis(100));
    let mut message = vec![0u8; size];
    let result = measure(config, progress, |seq| {
        fill(&mut message, seq);
        filled_slot!(tx, 1, &message, params.relax()).push();
        loop {
            match rx.wait_readable(&wait) {
                Ok(()) => break,
                Err(RecvError::TimedOut) => child.check_running()?,
                Err(e) => return Err(e.into()),
            }
        }
        let echo = rx.front()?;
        check_echo(echo.payload(), seq, size)?;
        rx.pop()?;
        Ok(())
    })?;
    child.finish()?;
    Ok(result)
}

fn run_socket(
    mut socket: Socket,
    mut child: Peer,
    mode: Mode,
    config: &Config,
    params: Params,
    progress: &mut Progress,
) -> Result<(Histogram<u64>, Duration), Error> {
    socket.set_mode(mode)?;
    let size = params.size;
    let mut message = vec![0u8; size];
    let mut echo = vec![0u8; size];
    let result = measure(config, progress, |seq| {
        fill(&mut message, seq);
        socket.write_all(&message, || params.relax())?;
        socket.read_message(&mut echo, || params.relax())?;
        check_echo(&echo, seq, size)
    })?;
    drop(socket);
    child.finish()?;
    Ok(result)
}

/// shm-tcp's run: this process is the acceptor, the child connects; both keep their state files
/// in a fresh folder under the system's temporary folder, removed at the end.
fn run_ours<const C: usize>(
    config: &Config,
    params: Params,
    child_cpu: Option<usize>,
    progress: &mut Progress,
) -> Result<(Histogram<u64>, Duration), Error> {
    let dir = tempfile::Builder::new()
        .prefix("shm-tcp-pingpong-")
        .tempdir()?;
    let options = ours::options::<C>(dir.path(), Durability::ProcessCrash);
    let mut acceptor = ours::bind::<C>(&options)?;
    let address = ours::address(acceptor.local_addr().port(), dir.path());
    let mut child = spawn(Kind::Ours, Mode::Busy, &address, params, child_cpu)?;
    let id = ours::await_login(&mut acceptor, || child.check_running())?;
    let conn = acceptor
        .connection(id)
        .ok_or("the child's connection is gone")?;
    let size = params.size;
    let mut poller = ours::Poller::new();
    let mut message = vec![0u8; size];
    let result = measure(config, progress, |seq| {
        fill(&mut message, seq);
        ours::send(conn, TAG_DATA, &message, false, &mut poller, || {
            params.relax()
        })?;
        ours::recv(
            conn,
            &mut poller,
            || params.relax(),
            |_, echo| check_echo(echo, seq, size),
        )?
    })?;
    ours::send(conn, TAG_STOP, &[], false, &mut poller, || params.relax())?;
    child.finish()?;
    Ok(result)
}

/// Starts the echoing child of one run (`--child ...`).
fn spawn(
    kind: Kind,
    mode: Mode,
    address: &str,
    params: Params,
    cpu: Option<usize>,
) -> Result<Peer, Error> {
    Peer::spawn(|command| {
        command.args([
            "--child",
            kind.arg(),
            mode.arg(),
            address,
            &params.size.to_string(),
            &params.lanes.to_string(),
            &params.total.to_string(),
            if params.spin { "spin" } else { "yield" },
            &cpu_arg(cpu),
        ]);
    })
}

/// A running count on stderr, a few times a second: in place on a terminal, a line per second
/// otherwise.
struct Progress {
    label: String,
    total: u64,
    tty: bool,
    last: Instant,
}

impl Progress {
    fn new(label: &str, total: u64) -> Self {
        let tty = io::stderr().is_terminal();
        if tty {
            eprint!("\r  {label}: starting");
        } else {
            eprintln!("  {label}: starting");
        }
        Self {
            label: label.to_string(),
            total,
            tty,
            last: Instant::now(),
        }
    }

    fn tick(&mut self, done: u64) {
        let every = if self.tty { 250 } else { 1000 };
        if self.last.elapsed() < Duration::from_millis(every) {
            return;
        }
        self.last = Instant::now();
        let (label, total) = (&self.label, self.total);
        if self.tty {
            eprint!("\r\x1b[K  {label}: {done}/{total}");
        } else {
            eprintln!("  {label}: {done}/{total}");
        }
    }

    fn clear(&self) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The echoing (child) process.

fn child(args: &[String]) -> Result<(), Error> {
    let [kind, mode, address, size, lanes, total, spin, cpu] = args else {
        return Err("--child takes 8 arguments (internal use)".into());
    };
    let (kind, mode) = (Kind::parse(kind)?, Mode::parse(mode)?);
    let params = Params {
        size: size.parse()?,
        lanes: lanes.parse()?,
        total: total.parse()?,
        spin: spin == "spin",
    };
    if !LANES.contains(&params.lanes) {
        return Err(format!("--child: {} lanes (internal use)", params.lanes).into());
    }
    pin_to_arg(cpu)?;
    let small = fits_small(params.lanes, params.size);
    match kind {
        Kind::Shm if small => with_lanes!(params.lanes, echo_shm::<SMALL>(address, mode, params)),
        Kind::Shm => with_lanes!(params.lanes, echo_shm::<LARGE>(address, mode, params)),
        Kind::Tcp => echo_socket(Socket::connect_tcp(address)?, mode, params),
        Kind::Uds => echo_socket(Socket::connect_uds(address)?, mode, params),
        Kind::Ours if params.size <= Connection::<SMALL>::MAX_PAYLOAD as usize => {
            echo_ours::<SMALL>(address, params)
        }
        Kind::Ours => echo_ours::<LARGE>(address, params),
        Kind::Floor => {
            let parent = rustix::process::getppid();
            floor_echo(
                address,
                params.size,
                || params.relax(),
                || rustix::process::getppid() != parent,
            )
        }
    }
}

fn echo_shm<const C: usize, const L: usize>(
    name: &str,
    mode: Mode,
    params: Params,
) -> Result<(), Error> {
    let (mut tx, mut rx) = attach_channel::<C, L>(name)?;
    // Returns `Disconnected` if the parent dies: then we stop too.
    let wait = params.wait_options(mode);
    for _ in 0..params.total {
        let message = rx.recv_wait(&wait)?;
        let echo = filled_slot!(tx, message.tag(), message.payload(), params.relax());
        // Pop the request before publishing the reply: pop is the commit.
        rx.pop()?;
        echo.push();
    }
    Ok(())
}

/// shm-tcp's echo: pops each message before pushing its copy back, so the `writev` of the echo
/// carries the acknowledgement of that pop in front of it. Stops at the parent's stop message.
fn echo_ours<const C: usize>(address: &str, params: Params) -> Result<(), Error> {
    let mut conn = ours::connect::<C>(address, Durability::ProcessCrash)?;
    let mut poller = ours::Poller::new();
    let mut buf = vec![0u8; params.size];
    loop {
        let (tag, len) = ours::recv(
            &mut conn,
            &mut poller,
            || params.relax(),
            |tag, payload| {
                let len = payload.len().min(buf.len());
                buf[..len].copy_from_slice(&payload[..len]);
                (tag, payload.len())
            },
        )?;
        match tag {
            TAG_STOP => return Ok(()),
            TAG_DATA if len == params.size => {}
            _ => return Err(format!("unexpected message: tag {tag}, {len} bytes").into()),
        }
        ours::send(&mut conn, TAG_DATA, &buf, false, &mut poller, || {
            params.relax()
        })?;
    }
}

fn echo_socket(mut socket: Socket, mode: Mode, params: Params) -> Result<(), Error> {
    socket.set_mode(mode)?;
    let mut buf = vec![0u8; params.size];
    for _ in 0..params.total {
        socket.read_message(&mut buf, || params.relax())?;
        socket.write_all(&buf, || params.relax())?;
    }
    Ok(())
}
