//! Two processes ping-pong messages over a shared-memory [`Channel`], then over TCP loopback and
//! a Unix domain socket, and print the round-trip percentiles and throughput of each, so the
//! difference shows in one run.
//!
//! ```text
//! cargo run --release -p shm-channel --example pingpong
//! cargo run --release -p shm-channel --example pingpong -- --size 1024 --count 50000 --pin
//! ```
//!
//! The program re-executes itself as the echoing peer (`--child ...`, not for direct use), one
//! child process per transport. Each process has exactly one thread, so busy-polling spins at
//! most two threads: fine on a 2-core machine. With a single allowed CPU the "busy" runs yield
//! the CPU between polls instead of spinning.
//!
//! Transports, in two groups compared against the shared-memory channel of their group:
//! - busy-polling: the channel with [`WaitStrategy::BusyPoll`]; TCP loopback (`TCP_NODELAY`) and
//!   a Unix stream socket, both non-blocking, their reads retried in a loop (one `recv` system
//!   call per poll);
//! - blocking: the channel with [`WaitStrategy::Block`] (futex in the segment, no spinning
//!   first), and TCP and Unix sockets with blocking reads.
//!
//! The segment lives in `/dev/shm` under a name unique to this run, and is unlinked as soon as the
//! child has attached (so even Ctrl-C or a crash afterwards leaves no file), and on errors. The
//! Unix socket uses Linux's abstract namespace, which leaves no file either.
//!
//! The process plumbing (peer process, pinning, the channel's attach handshake and echo, the
//! sockets) is shared with the benches: `benches/common/peers.rs`.

#[macro_use]
#[path = "../benches/common/peers.rs"]
mod peers;

use std::env;
use std::io::{self, IsTerminal};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use peers::{
    allowed_cpus, attach_channel, cpu_arg, create_channel, pin_to, pin_to_arg, Error, Mode, Peer,
    Socket,
};
use shm_channel::{Channel, WaitOptions, WaitStrategy};
use spsc_core::{MessageReceiver, RecvError, SendSlot};

/// Ring capacity for messages up to 32 KiB: small, so the rings stay in cache.
const SMALL: usize = 1 << 16;
/// Ring capacity for larger messages (up to 8 MiB); a 32 MiB segment, made only when needed.
const LARGE: usize = 1 << 24;

const USAGE: &str = "\
usage: pingpong [--size BYTES] [--count ROUND_TRIPS] [--pin]

  --size N    message payload in bytes (default 64)
  --count N   timed round trips per transport (default 100000), after a warm-up of
              count/10 (at least 100, at most 10000)
  --pin       pin the two processes to two distinct CPUs of the allowed set";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Shm,
    Tcp,
    Uds,
}

impl Kind {
    fn arg(self) -> &'static str {
        match self {
            Kind::Shm => "shm",
            Kind::Tcp => "tcp",
            Kind::Uds => "uds",
        }
    }

    fn parse(arg: &str) -> Result<Self, Error> {
        [Kind::Shm, Kind::Tcp, Kind::Uds]
            .into_iter()
            .find(|kind| kind.arg() == arg)
            .ok_or_else(|| format!("unknown transport {arg:?}").into())
    }

    fn label(self, mode: Mode) -> &'static str {
        match (self, mode) {
            (Kind::Shm, Mode::Busy) => "shm channel (BusyPoll)",
            (Kind::Tcp, Mode::Busy) => "TCP loopback (non-blocking, polled)",
            (Kind::Uds, Mode::Busy) => "Unix socket (non-blocking, polled)",
            (Kind::Shm, Mode::Block) => "shm channel (futex, Block)",
            (Kind::Tcp, Mode::Block) => "TCP loopback (blocking reads)",
            (Kind::Uds, Mode::Block) => "Unix socket (blocking reads)",
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
    pin: bool,
}

fn parse_args(args: &[String]) -> Result<Option<Config>, Error> {
    let mut config = Config {
        size: 64,
        count: 100_000,
        warmup: 0,
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
            "--pin" => config.pin = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}").into()),
        }
    }
    let max = Channel::<LARGE>::MAX_PAYLOAD as usize;
    if config.size == 0 || config.size > max {
        return Err(format!("--size must be from 1 to {max} bytes").into());
    }
    if config.count == 0 {
        return Err("--count must be at least 1".into());
    }
    config.warmup = (config.count / 10).clamp(100, 10_000);
    Ok(Some(config))
}

/// The outcome of one transport's run.
struct Stats {
    label: &'static str,
    mode: Mode,
    histogram: Histogram<u64>,
    elapsed: Duration,
    count: u64,
}

fn parent(args: &[String]) -> Result<(), Error> {
    let Some(config) = parse_args(args)? else {
        return Ok(());
    };
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
        total: config.warmup + config.count,
        spin,
    };

    println!(
        "ping-pong between two processes: {} B messages, {} timed round trips per transport \
         (after {} warm-up)",
        config.size, config.count, config.warmup
    );
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
         every transport"
    );
    println!();

    let runs = [
        (Kind::Shm, Mode::Busy),
        (Kind::Tcp, Mode::Busy),
        (Kind::Uds, Mode::Busy),
        (Kind::Shm, Mode::Block),
        (Kind::Tcp, Mode::Block),
        (Kind::Uds, Mode::Block),
    ];
    let mut results = Vec::new();
    for (kind, mode) in runs {
        let stats = run(kind, mode, &config, params, cpus.map(|(_, theirs)| theirs))
            .map_err(|error| format!("{}: {error}", kind.label(mode)))?;
        results.push(stats);
    }
    print_table(&results, &config);
    Ok(())
}

fn print_table(results: &[Stats], config: &Config) {
    println!(
        "{:<36} {:>10} {:>10} {:>10} {:>10} {:>13} {:>8} {:>8}",
        "round trip", "p50", "p99", "p99.9", "max", "round trips/s", "p50/shm", "p99/shm"
    );
    for mode in [Mode::Busy, Mode::Block] {
        println!(
            "{}",
            match mode {
                Mode::Busy => "busy-polling:",
                Mode::Block => "blocking (the receiver sleeps until woken):",
            }
        );
        let group: Vec<&Stats> = results.iter().filter(|s| s.mode == mode).collect();
        let Some(base) = group.first() else { continue };
        let (base50, base99) = (
            base.histogram.value_at_quantile(0.5).max(1) as f64,
            base.histogram.value_at_quantile(0.99).max(1) as f64,
        );
        for stats in group {
            let h = &stats.histogram;
            let (p50, p99) = (h.value_at_quantile(0.5), h.value_at_quantile(0.99));
            println!(
                "  {:<34} {:>10} {:>10} {:>10} {:>10} {:>13.0} {:>8} {:>8}",
                stats.label,
                format_ns(p50),
                format_ns(p99),
                format_ns(h.value_at_quantile(0.999)),
                format_ns(h.max()),
                stats.count as f64 / stats.elapsed.as_secs_f64(),
                format_ratio(p50 as f64 / base50),
                format_ratio(p99 as f64 / base99),
            );
        }
    }
    println!();
    println!(
        "{} timed round trips of {} B each way per transport; ratios are against the shm \
         channel of the same group (lower is better for it)",
        config.count, config.size
    );
}

fn format_ratio(ratio: f64) -> String {
    if ratio < 100.0 {
        format!("{ratio:.1}x")
    } else {
        format!("{ratio:.0}x")
    }
}

fn format_ns(ns: u64) -> String {
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.2} µs", ns as f64 / 1e3)
    } else {
        format!("{:.2} ms", ns as f64 / 1e6)
    }
}

fn run(
    kind: Kind,
    mode: Mode,
    config: &Config,
    params: Params,
    child_cpu: Option<usize>,
) -> Result<Stats, Error> {
    let label = kind.label(mode);
    let mut progress = Progress::new(label, config.count);
    let stats = match kind {
        Kind::Shm if config.size <= Channel::<SMALL>::MAX_PAYLOAD as usize => {
            run_shm::<SMALL>(mode, config, params, child_cpu, &mut progress)
        }
        Kind::Shm => run_shm::<LARGE>(mode, config, params, child_cpu, &mut progress),
        Kind::Tcp | Kind::Uds => {
            let start_child = |address: &str| spawn(kind, mode, address, params, child_cpu);
            let (socket, child) = match kind {
                Kind::Tcp => Socket::accept_tcp(start_child)?,
                _ => Socket::accept_uds(start_child)?,
            };
            run_socket(socket, child, mode, config, params, &mut progress)
        }
    };
    progress.clear();
    let (histogram, elapsed) = stats?;
    Ok(Stats {
        label,
        mode,
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

/// Writes `seq` into the first bytes of a message (as many as fit).
fn stamp(buf: &mut [u8], seq: u64) {
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
}

fn check_echo(payload: &[u8], seq: u64, size: usize) -> Result<(), Error> {
    let n = size.min(8);
    if payload.len() != size || payload[..n] != seq.to_le_bytes()[..n] {
        return Err(format!("round trip {seq}: the echo does not match what was sent").into());
    }
    Ok(())
}

fn run_shm<const C: usize>(
    mode: Mode,
    config: &Config,
    params: Params,
    child_cpu: Option<usize>,
    progress: &mut Progress,
) -> Result<(Histogram<u64>, Duration), Error> {
    // Unlinks the segment once the child has attached, or on an error before.
    let (mut tx, mut rx, mut child) = create_channel::<C>("pingpong", |name| {
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
        stamp(&mut message, seq);
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
        stamp(&mut message, seq);
        socket.write_all(&message, || params.relax())?;
        socket.read_message(&mut echo, || params.relax())?;
        check_echo(&echo, seq, size)
    })?;
    drop(socket);
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
            &params.total.to_string(),
            if params.spin { "spin" } else { "yield" },
            &cpu_arg(cpu),
        ]);
    })
}

/// A running count on stderr, a few times a second: in place on a terminal, a line per second
/// otherwise.
struct Progress {
    label: &'static str,
    total: u64,
    tty: bool,
    last: Instant,
}

impl Progress {
    fn new(label: &'static str, total: u64) -> Self {
        let tty = io::stderr().is_terminal();
        if tty {
            eprint!("\r  {label}: starting");
        } else {
            eprintln!("  {label}: starting");
        }
        Self {
            label,
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
        let (label, total) = (self.label, self.total);
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
    let [kind, mode, address, size, total, spin, cpu] = args else {
        return Err("--child takes 7 arguments (internal use)".into());
    };
    let (kind, mode) = (Kind::parse(kind)?, Mode::parse(mode)?);
    let params = Params {
        size: size.parse()?,
        total: total.parse()?,
        spin: spin == "spin",
    };
    pin_to_arg(cpu)?;
    match kind {
        Kind::Shm if params.size <= Channel::<SMALL>::MAX_PAYLOAD as usize => {
            echo_shm::<SMALL>(address, mode, params)
        }
        Kind::Shm => echo_shm::<LARGE>(address, mode, params),
        Kind::Tcp => echo_socket(Socket::connect_tcp(address)?, mode, params),
        Kind::Uds => echo_socket(Socket::connect_uds(address)?, mode, params),
    }
}

fn echo_shm<const C: usize>(name: &str, mode: Mode, params: Params) -> Result<(), Error> {
    let (mut tx, mut rx) = attach_channel::<C>(name)?;
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

fn echo_socket(mut socket: Socket, mode: Mode, params: Params) -> Result<(), Error> {
    socket.set_mode(mode)?;
    let mut buf = vec![0u8; params.size];
    for _ in 0..params.total {
        socket.read_message(&mut buf, || params.relax())?;
        socket.write_all(&buf, || params.relax())?;
    }
    Ok(())
}
