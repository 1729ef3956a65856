//! The journal's report: interleaved rounds in one run, every contender paired with a bare floor
//! measured in the same round, ratios with their min–max range over the rounds, targets printed
//! as PASS/MISS; nothing is asserted on timings.
//!
//! 1. **Append rate**, 64-byte frames, to `/dev/shm` and to a disk folder: `alloc`, payload copy,
//!    `publish`, with the next page made by `maintain` between timed blocks of
//!    1,024 frames (`PrepareNext::Manual`), with the default `PrepareNext::Eager` (no
//!    `maintain`: the page is made inside one `alloc`), and with checksums; ÷ the floor, a
//!    `memcpy` of the 64 bytes plus one Release store per frame into mapped page files of the
//!    same size, in the same folder, at the same stride. Both make their next page between the
//!    timed blocks and pre-fault it there (the journal's `maintain` writes one zero per 4 KiB
//!    page; the floor does the same), so neither takes page faults in the timed part, except the
//!    default `Eager` contender, whose page is made inside one `alloc` without pre-faulting. `Durability::PowerLoss` (an `msync` per frame) on far fewer frames,
//!    ÷ the floor with an `msync` per frame.
//! 2. **Publish-to-read latency**, 8 and 64 bytes: process A appends to journal J1; process B
//!    busy-polls J1 and appends the echo to J2, which A busy-polls; round trip ÷ 2, against the
//!    same-bytes raw floor of the channel report (`common/peers.rs`), in the same rounds.
//! 3. **Publish cost with 0, 1, 4, 16 subscribers**: the writer's append rate (timed exactly as
//!    in 1) while N reader processes read the same journal. Readers block on the journal's futex
//!    (`WaitStrategy::Block`), all pinned to the other CPU: on two vCPUs, 16 busy-polling readers
//!    would measure the scheduler, not the journal.
//! 4. **Catch-up read**: a reader replaying whole pages (page cache, from the disk folder; and
//!    `/dev/shm`), ÷ a `memcpy` of the same page bytes from fresh read-only mappings.
//!
//! `cargo bench -p shm-channel --bench journal` (about a minute); `SHM_BENCH_QUICK=1` for a short
//! run, `SHM_BENCH_ROUNDS=N` (default 9, quick 3), `SHM_BENCH_ONLY=append,latency,subs,replay`,
//! `SHM_BENCH_DISK_DIR=<folder>` (default: cargo's `target/tmp`).

#[allow(dead_code, unused_macros, unused_imports)]
#[path = "common/peers.rs"]
mod peers;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use peers::{
    allowed_cpus, cpu_arg, cpu_model, fill, filled_with, fine_p50, floor_echo, load_average,
    pin_to, pin_to_arg, unique_name, Error, Floor, Peer, CONNECT_TIMEOUT, LIVENESS_EVERY,
};
use rustix::fs::{Mode as FileMode, OFlags};
use rustix::mm::{MapFlags, MsyncFlags, ProtFlags};
use shm_channel::journal::layout::{frame_len, PAGE_HEADER_SIZE};
use shm_channel::journal::{
    Durability, JournalOptions, JournalReader, JournalWriter, PrepareNext, ReadError, ReadFrom,
    ReaderOptions,
};
use shm_channel::WaitStrategy;

const PEER_ENV: &str = "SHM_JOURNAL_BENCH_PEER";
/// The journals' page size (the default).
const PAGE: u64 = 16 << 20;
/// Frames per timed block (the next page is made between two blocks).
const BLOCK: u64 = 1024;
/// The tag that stops a peer.
const STOP: u16 = u16::MAX;
const APPEND_SIZE: usize = 64;
const LATENCY_SIZES: [usize; 2] = [8, 64];
const SUBSCRIBERS: [usize; 4] = [0, 1, 4, 16];

// ---------------------------------------------------------------------------------------------
// Timing and formatting
// ---------------------------------------------------------------------------------------------

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

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn ticks() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn calibrate(span: Duration) -> f64 {
    let (t0, i0) = (ticks(), Instant::now());
    while i0.elapsed() < span {}
    let (t1, elapsed) = (ticks(), i0.elapsed());
    elapsed.as_nanos() as f64 / (t1 - t0).max(1) as f64
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `median× (min–max)`.
fn ratio(values: &[f64]) -> String {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.2}× ({lo:.2}–{hi:.2})", median(values))
}

/// `median× (min–max)` with 5 decimals, for tiny ratios.
fn ratio_fine(values: &[f64]) -> String {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.5}× ({lo:.5}–{hi:.5})", median(values))
}

/// PASS/MISS of a median ratio against a target (`at_least`: higher is better).
fn verdict(value: f64, target: f64, at_least: bool) -> String {
    let pass = if at_least {
        value >= target
    } else {
        value <= target
    };
    if pass {
        format!("PASS ({value:.2}× vs {target}×)")
    } else {
        format!("MISS ({value:.2}× vs {target}×)")
    }
}

fn mega(rate: f64) -> String {
    format!("{:.1} M/s", rate / 1e6)
}

/// The file system type of `path`, from `statfs`.
fn fs_type(path: &Path) -> String {
    match rustix::fs::statfs(path) {
        Ok(st) => match st.f_type as u32 {
            0x0102_1994 => "tmpfs".into(),
            0xEF53 => "ext4".into(),
            0x5846_5342 => "xfs".into(),
            0x9123_683E => "btrfs".into(),
            0x794C_7630 => "overlayfs".into(),
            other => format!("f_type {other:#x}"),
        },
        Err(e) => format!("unknown ({e})"),
    }
}

fn rotate<T: Copy>(items: &[T], round: usize) -> Vec<T> {
    let mut v = items.to_vec();
    let n = v.len();
    v.rotate_left(round % n);
    v
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

struct Config {
    rounds: usize,
    append_frames: u64,
    power_budget: Duration,
    rt_warmup: u64,
    rt_max: u64,
    rt_budget: Duration,
    sub_frames: u64,
    replay_pages: u64,
    disk: PathBuf,
    only: Option<Vec<String>>,
    /// The CPU of the measuring process and the CPU of its peers.
    cpus: (Option<usize>, Option<usize>),
}

impl Config {
    fn from_env() -> Result<Self, Error> {
        let quick = std::env::var("SHM_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let rounds = std::env::var("SHM_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&r| r > 0)
            .unwrap_or(if quick { 3 } else { 9 });
        let disk = std::env::var_os("SHM_BENCH_DISK_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
        std::fs::create_dir_all(&disk)?;
        let cpus = allowed_cpus()?;
        Ok(Self {
            rounds,
            append_frames: if quick { 150_000 } else { 1_000_000 },
            power_budget: Duration::from_millis(if quick { 60 } else { 400 }),
            rt_warmup: if quick { 500 } else { 2_000 },
            rt_max: if quick { 50_000 } else { 1_000_000 },
            rt_budget: Duration::from_millis(if quick { 100 } else { 1_000 }),
            sub_frames: if quick { 150_000 } else { 1_000_000 },
            replay_pages: if quick { 2 } else { 4 },
            disk,
            only: std::env::var("SHM_BENCH_ONLY")
                .ok()
                .map(|v| v.split(',').map(|k| k.trim().to_string()).collect()),
            cpus: (cpus.first().copied(), cpus.get(1).copied()),
        })
    }

    fn runs(&self, key: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|keys| keys.iter().any(|k| k == key))
    }
}

fn remove_journal(dir: &Path, name: &str) {
    let _ = std::fs::remove_dir_all(dir.join(name));
}

// ---------------------------------------------------------------------------------------------
// The floor's page files
// ---------------------------------------------------------------------------------------------

/// A fresh page-sized file, mapped shared read-write (or read-only), unmapped on drop.
struct RawPage {
    base: NonNull<u8>,
    len: usize,
}

impl RawPage {
    fn create(path: &Path, len: usize) -> Result<Self, Error> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            FileMode::from_raw_mode(0o600),
        )?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        Self::map(&fd, len, ProtFlags::READ | ProtFlags::WRITE)
    }

    /// One zero written per 4 KiB page past the header, as the journal's `maintain` does.
    fn prefault(&self) {
        for offset in (PAGE_HEADER_SIZE..self.len).step_by(4096) {
            // SAFETY: inside our own fresh mapping; a zero over a zero.
            unsafe { self.base.as_ptr().add(offset).write_volatile(0) };
        }
    }

    fn open_read(path: &Path) -> Result<Self, Error> {
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, FileMode::empty())?;
        let len = rustix::fs::fstat(&fd)?.st_size as usize;
        Self::map(&fd, len, ProtFlags::READ)
    }

    fn map(fd: &std::os::fd::OwnedFd, len: usize, prot: ProtFlags) -> Result<Self, Error> {
        // SAFETY: a fresh shared mapping of a file of `len` bytes; no existing memory changes.
        let base =
            unsafe { rustix::mm::mmap(core::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0)? };
        let base = NonNull::new(base.cast::<u8>()).ok_or("mmap returned null")?;
        Ok(Self { base, len })
    }
}

impl Drop for RawPage {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; nothing borrowed from it outlives it.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// The append floor: frames at our stride in fresh mapped page files; per frame a `memcpy` of
/// the payload and one Release store of a length word (and an `msync` if `sync`).
struct FloorWriter {
    folder: PathBuf,
    page: RawPage,
    next: Option<RawPage>,
    number: u64,
    offset: usize,
    sync: bool,
}

impl FloorWriter {
    fn new(folder: PathBuf, sync: bool) -> Result<Self, Error> {
        std::fs::create_dir(&folder)?;
        let page = RawPage::create(&folder.join("0.page"), PAGE as usize)?;
        page.prefault();
        Ok(Self {
            folder,
            page,
            next: None,
            number: 0,
            offset: PAGE_HEADER_SIZE,
            sync,
        })
    }

    fn prepare(&mut self) -> Result<(), Error> {
        if self.next.is_none() {
            let path = self.folder.join(format!("{}.page", self.number + 1));
            let page = RawPage::create(&path, PAGE as usize)?;
            page.prefault();
            self.next = Some(page);
        }
        Ok(())
    }

    /// The payload is an array, so the copy has a known length, as the journal's has (its slot
    /// was allocated for 64 bytes): a slice of opaque length would make it a call of libc's
    /// `memmove`, which cost the floor about 5% in a profile.
    #[inline(always)]
    fn append(&mut self, payload: &[u8; APPEND_SIZE]) -> Result<(), Error> {
        let need = frame_len(APPEND_SIZE as u32) as usize;
        if self.offset + need + 8 > self.page.len {
            self.prepare()?;
            self.page = self.next.take().expect("prepared");
            self.number += 1;
            self.offset = PAGE_HEADER_SIZE;
        }
        let at = self.offset;
        // SAFETY: the frame lies inside the mapping (checked above); only this process maps it.
        unsafe {
            let base = self.page.base.as_ptr();
            core::ptr::copy_nonoverlapping(payload.as_ptr(), base.add(at + 32), payload.len());
            (*base.add(at).cast::<AtomicU32>()).store(need as u32, Ordering::Release);
            if self.sync {
                let start = at & !4095;
                rustix::mm::msync(
                    base.add(start).cast(),
                    (at + need + 8).min(self.page.len) - start,
                    MsyncFlags::SYNC,
                )?;
            }
        }
        self.offset = at + need;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Append rate
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Append {
    Floor,
    Manual,
    Eager,
    Checksums,
    FloorSync,
    PowerLoss,
}

impl Append {
    fn label(self) -> &'static str {
        match self {
            Self::Floor => "floor: memcpy + Release store",
            Self::Manual => "journal, maintain between blocks",
            Self::Eager => "journal, default Eager (50%)",
            Self::Checksums => "journal + checksums, maintain",
            Self::FloorSync => "floor + msync per frame",
            Self::PowerLoss => "journal PowerLoss, maintain",
        }
    }
}

/// Appends up to `frames` frames (or for `budget`), returns (frames, timed time, stats note).
fn append_trial(
    kind: Append,
    dir: &Path,
    frames: u64,
    budget: Option<Duration>,
) -> Result<(u64, Duration, String), Error> {
    let name = unique_name("jappend");
    let block = if budget.is_some() { 16 } else { BLOCK };
    let mut message = [0u8; APPEND_SIZE];
    fill(&mut message, 1);
    let started = Instant::now();
    let mut timed = Duration::ZERO;
    let mut done = 0u64;
    let mut note = String::new();
    let over = |done: u64| done >= frames || budget.is_some_and(|b| started.elapsed() >= b);
    match kind {
        Append::Floor | Append::FloorSync => {
            let mut floor = FloorWriter::new(dir.join(&name), kind == Append::FloorSync)?;
            while !over(done) {
                let t = Instant::now();
                for i in done..done + block {
                    message[..8].copy_from_slice(&i.to_le_bytes());
                    floor.append(black_box(&message))?;
                }
                timed += t.elapsed();
                done += block;
                floor.prepare()?;
            }
        }
        _ => {
            let mut options = JournalOptions::new().dir(dir).page_size(PAGE);
            options = match kind {
                Append::Eager => options,
                Append::Checksums => options.prepare_next(PrepareNext::Manual).checksums(true),
                Append::PowerLoss => options
                    .prepare_next(PrepareNext::Manual)
                    .durability(Durability::PowerLoss),
                _ => options.prepare_next(PrepareNext::Manual),
            };
            let maintain = kind != Append::Eager;
            let mut writer = JournalWriter::open(&name, &options)?;
            while !over(done) {
                let t = Instant::now();
                for i in done..done + block {
                    message[..8].copy_from_slice(&i.to_le_bytes());
                    let mut slot = writer.alloc(APPEND_SIZE as u32, 1, i)?;
                    slot.payload_mut().copy_from_slice(black_box(&message));
                    slot.publish();
                }
                timed += t.elapsed();
                done += block;
                if maintain {
                    writer.maintain(done)?;
                }
            }
            let s = writer.stats();
            note = format!(
                "switches {}, unprepared {}, made in alloc {}",
                s.switches, s.unprepared_switches, s.prepared_in_alloc
            );
        }
    }
    remove_journal(dir, &name);
    Ok((done, timed, note))
}

fn append_report(config: &Config) -> Result<(), Error> {
    println!("\n## 1. Append rate, {APPEND_SIZE}-byte frames\n");
    println!(
        "Pages of {} MiB, frames at a stride of {} bytes; {} frames per trial (the msync \
         contenders: what fits in {} ms, in blocks of 16); the journal and the floor make their \
         next page/file between timed blocks of {BLOCK} frames and pre-fault it there (one zero \
         per 4 KiB page), except Eager, whose page is made in an alloc and faults as it fills. Rate = frames ÷ timed time; ratio = rate ÷ the floor's \
         (msync contenders: ÷ the msync floor) in the same round.\n",
        PAGE >> 20,
        frame_len(APPEND_SIZE as u32),
        config.append_frames,
        config.power_budget.as_millis()
    );
    let folders = [PathBuf::from("/dev/shm"), config.disk.clone()];
    let kinds = [
        Append::Floor,
        Append::Manual,
        Append::Eager,
        Append::Checksums,
        Append::FloorSync,
        Append::PowerLoss,
    ];
    for folder in &folders {
        println!("### {} ({})\n", folder.display(), fs_type(folder));
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
        let mut notes = vec![String::new(); kinds.len()];
        for round in 0..config.rounds {
            for kind in rotate(&kinds, round) {
                let i = kinds.iter().position(|&k| k == kind).expect("listed");
                let sync = matches!(kind, Append::FloorSync | Append::PowerLoss);
                let budget = sync.then_some(config.power_budget);
                let frames = if sync { u64::MAX } else { config.append_frames };
                let (n, t, note) = append_trial(kind, folder, frames, budget)?;
                rates[i].push(n as f64 / t.as_secs_f64());
                notes[i] = note;
            }
        }
        println!("| contender | rate (median of rounds) | ns/frame | ÷ floor: median (min–max) | last trial |");
        println!("|---|---|---|---|---|");
        let mut ratios = vec![Vec::new(); kinds.len()];
        for (i, kind) in kinds.iter().enumerate() {
            let base = if matches!(kind, Append::FloorSync | Append::PowerLoss) {
                4
            } else {
                0
            };
            ratios[i] = rates[i]
                .iter()
                .zip(&rates[base])
                .map(|(r, f)| r / f)
                .collect();
            let m = median(&rates[i]);
            println!(
                "| {} | {} | {:.1} | {} | {} |",
                kind.label(),
                if m > 1e5 {
                    mega(m)
                } else {
                    format!("{m:.0} /s")
                },
                1e9 / m,
                ratio(&ratios[i]),
                notes[i]
            );
        }
        println!();
        println!(
            "Target: journal (maintain) ≥ 0.8× the floor: {}; default Eager: {}",
            verdict(median(&ratios[1]), 0.8, true),
            verdict(median(&ratios[2]), 0.8, true)
        );
        println!(
            "PowerLoss ÷ the plain floor (the cost of an msync per frame): {}\n",
            ratio_fine(
                &rates[5]
                    .iter()
                    .zip(&rates[0])
                    .map(|(r, f)| r / f)
                    .collect::<Vec<_>>()
            )
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Publish-to-read latency
// ---------------------------------------------------------------------------------------------

struct Trial {
    hist: Histogram<u64>,
    p50: f64,
}

fn spawn_peer(spec: String) -> Result<Peer, Error> {
    Peer::spawn(|command| {
        command.env(PEER_ENV, spec);
    })
}

fn open_reader_when_there(name: &str, dir: &Path, peer: &mut Peer) -> Result<JournalReader, Error> {
    let started = Instant::now();
    loop {
        match JournalReader::open(name, &ReaderOptions::new().dir(dir), ReadFrom::Oldest) {
            Ok(reader) => return Ok(reader),
            Err(error) if started.elapsed() > CONNECT_TIMEOUT => return Err(error.into()),
            Err(_) => {
                peer.check_running()?;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

fn journal_ping_pong(size: usize, config: &Config, ns_per_tick: f64) -> Result<Trial, Error> {
    let dir = PathBuf::from("/dev/shm");
    let (j1, j2) = (unique_name("jping"), unique_name("jpong"));
    let mut hist = new_histogram();
    let result = (|| -> Result<(), Error> {
        let mut writer = JournalWriter::open(&j1, &JournalOptions::new().dir(&dir))?;
        let mut peer = spawn_peer(format!(
            "echo,{},{j1},{j2},{}",
            dir.display(),
            cpu_arg(config.cpus.1)
        ))?;
        let mut reader = open_reader_when_there(&j2, &dir, &mut peer)?;
        let mut message = vec![0u8; size];
        let started = Instant::now();
        let mut seq = 0u64;
        loop {
            seq += 1;
            let timed = seq > config.rt_warmup;
            if timed
                && (seq - config.rt_warmup > config.rt_max || started.elapsed() > config.rt_budget)
            {
                break;
            }
            fill(&mut message, seq);
            let t0 = ticks();
            let mut slot = writer.alloc(size as u32, 0, seq)?;
            slot.payload_mut().copy_from_slice(&message);
            slot.publish();
            let mut polls = 0u64;
            loop {
                match reader.front() {
                    Ok(frame) => {
                        if !filled_with(frame.payload(), seq) {
                            return Err(format!("round trip {seq}: a wrong echo").into());
                        }
                        break;
                    }
                    Err(ReadError::Empty) => {
                        polls += 1;
                        if polls.is_multiple_of(LIVENESS_EVERY) {
                            peer.check_running()?;
                        }
                        core::hint::spin_loop();
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            reader.pop()?;
            let t1 = ticks();
            if timed {
                hist.saturating_record((t1.wrapping_sub(t0) as f64 * ns_per_tick).round() as u64);
            }
        }
        writer.append(STOP, seq, &[])?;
        peer.finish()
    })();
    remove_journal(&dir, &j1);
    remove_journal(&dir, &j2);
    result?;
    let p50 = fine_p50(&hist);
    Ok(Trial { hist, p50 })
}

fn floor_ping_pong(size: usize, config: &Config, ns_per_tick: f64) -> Result<Trial, Error> {
    let cpu = cpu_arg(config.cpus.1);
    let mut floor = Floor::start(size, |path| {
        spawn_peer(format!("floor,{path},{size},{cpu}"))
    })?;
    let mut hist = new_histogram();
    let mut message = vec![0u8; size];
    let started = Instant::now();
    let mut seq = 0u64;
    loop {
        seq += 1;
        let timed = seq > config.rt_warmup;
        if timed && (seq - config.rt_warmup > config.rt_max || started.elapsed() > config.rt_budget)
        {
            break;
        }
        let t0 = ticks();
        floor.round_trip(seq, &mut message, core::hint::spin_loop)?;
        let t1 = ticks();
        if timed {
            hist.saturating_record((t1.wrapping_sub(t0) as f64 * ns_per_tick).round() as u64);
        }
    }
    floor.finish()?;
    let p50 = fine_p50(&hist);
    Ok(Trial { hist, p50 })
}

fn echo_peer(dir: &str, j1: &str, j2: &str) -> Result<(), Error> {
    let parent = rustix::process::getppid();
    let mut writer = JournalWriter::open(j2, &JournalOptions::new().dir(dir))?;
    let mut reader = JournalReader::open(j1, &ReaderOptions::new().dir(dir), ReadFrom::Oldest)?;
    let mut polls = 0u64;
    loop {
        let frame = match reader.front() {
            Ok(frame) => frame,
            Err(ReadError::Empty) => {
                polls += 1;
                if polls.is_multiple_of(LIVENESS_EVERY) && rustix::process::getppid() != parent {
                    return Err("the measuring process is gone".into());
                }
                core::hint::spin_loop();
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        if frame.tag() == STOP {
            return Ok(());
        }
        let payload = frame.payload();
        let mut slot = writer.alloc(payload.len() as u32, 0, frame.time())?;
        slot.payload_mut().copy_from_slice(payload);
        slot.publish();
        reader.pop()?;
    }
}

fn latency_report(config: &Config, ns_per_tick: f64) -> Result<(), Error> {
    println!("\n## 2. Publish-to-read latency (one way = round trip ÷ 2)\n");
    println!(
        "A appends to J1 (/dev/shm, default options); B busy-polls J1 and appends the echo to \
         J2; A busy-polls J2 and checks every byte. Floor: the same-bytes raw floor of the \
         channel report (payload memcpy + Release store each way, echo checked). Each round runs \
         both, order alternated; up to {} round trips or {} ms per trial after {} warm-up.\n",
        config.rt_max,
        config.rt_budget.as_millis(),
        config.rt_warmup
    );
    println!(
        "| size | contender | one-way p50 | p90 | p99 | round trips > 2 µs | per-round p50 \
         min–max | ÷ floor p50: median (min–max) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut verdicts = Vec::new();
    for size in LATENCY_SIZES {
        let (mut ours, mut floors) = (Vec::new(), Vec::new());
        for round in 0..config.rounds {
            if round % 2 == 0 {
                ours.push(journal_ping_pong(size, config, ns_per_tick)?);
                floors.push(floor_ping_pong(size, config, ns_per_tick)?);
            } else {
                floors.push(floor_ping_pong(size, config, ns_per_tick)?);
                ours.push(journal_ping_pong(size, config, ns_per_tick)?);
            }
        }
        let ratios: Vec<f64> = ours
            .iter()
            .zip(&floors)
            .map(|(o, f)| o.p50 / f.p50.max(1.0))
            .collect();
        for (label, trials, vs) in [
            ("journal", &ours, Some(&ratios)),
            ("same-bytes floor", &floors, None),
        ] {
            let mut all = new_histogram();
            for t in trials.iter() {
                all.add(&t.hist).expect("same bounds");
            }
            let p50s: Vec<f64> = trials.iter().map(|t| t.p50 / 2.0).collect();
            let lo = p50s.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = p50s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let slow = all.count_between(2_000, u64::MAX) as f64 / all.len().max(1) as f64;
            println!(
                "| {size} B | {label} | {:.0} ns | {:.0} ns | {:.0} ns | {:.2}% | {lo:.0}–{hi:.0} ns | {} |",
                fine_p50(&all) / 2.0,
                all.value_at_quantile(0.90) as f64 / 2.0,
                all.value_at_quantile(0.99) as f64 / 2.0,
                slow * 100.0,
                vs.map_or_else(|| "1".to_string(), |r| ratio(r)),
            );
        }
        println!(
            "| {size} B | (if each first touch of a 4 KiB page of J1 or J2 made one slow: 1 in {:.1}) | | | | {:.2}% | | |",
            4096.0 / (2.0 * frame_len(size as u32) as f64),
            200.0 * frame_len(size as u32) as f64 / 4096.0
        );
        verdicts.push(format!(
            "{size} B: {}",
            verdict(median(&ratios), 1.3, false)
        ));
    }
    println!(
        "\nTarget: journal p50 ≤ 1.3× the same-bytes floor: {}",
        verdicts.join("; ")
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Publish cost with N subscribers
// ---------------------------------------------------------------------------------------------

fn subscribers_trial(n: usize, config: &Config) -> Result<(f64, u64), Error> {
    let dir = PathBuf::from("/dev/shm");
    let name = unique_name("jsubs");
    let result = (|| -> Result<(f64, u64), Error> {
        let options = JournalOptions::new()
            .dir(&dir)
            .page_size(PAGE)
            .prepare_next(PrepareNext::Manual);
        let mut writer = JournalWriter::open(&name, &options)?;
        let mut peers = Vec::new();
        for i in 0..n {
            peers.push(spawn_peer(format!(
                "sub,{},{name},{},{i},{}",
                dir.display(),
                cpu_arg(config.cpus.1),
                config.sub_frames
            ))?);
        }
        // Every reader announces itself with a file once it has opened the journal.
        let started = Instant::now();
        for i in 0..n {
            let ack = dir.join(&name).join(format!("ack{i}"));
            while !ack.exists() {
                for peer in &mut peers {
                    peer.check_running()?;
                }
                if started.elapsed() > CONNECT_TIMEOUT {
                    return Err("a subscriber did not start".into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // Let them fall asleep on the futex.
        std::thread::sleep(Duration::from_millis(20));
        let mut message = [0u8; APPEND_SIZE];
        fill(&mut message, 1);
        let mut timed = Duration::ZERO;
        let mut done = 0;
        while done < config.sub_frames {
            let t = Instant::now();
            for i in done..done + BLOCK {
                message[..8].copy_from_slice(&i.to_le_bytes());
                let mut slot = writer.alloc(APPEND_SIZE as u32, 1, i)?;
                slot.payload_mut().copy_from_slice(black_box(&message));
                slot.publish();
            }
            timed += t.elapsed();
            done += BLOCK;
            writer.maintain(done)?;
        }
        let wakes = writer.stats().wakes;
        writer.append(STOP, done, &[])?;
        for peer in &mut peers {
            peer.finish()?;
        }
        Ok((done as f64 / timed.as_secs_f64(), wakes))
    })();
    remove_journal(&dir, &name);
    result
}

fn subscriber_peer(dir: &str, name: &str, index: &str, frames: u64) -> Result<(), Error> {
    let mut reader = JournalReader::open(name, &ReaderOptions::new().dir(dir), ReadFrom::Oldest)?;
    std::fs::write(Path::new(dir).join(name).join(format!("ack{index}")), b"")?;
    let parent = rustix::process::getppid();
    let mut expected = 0u64;
    loop {
        if !reader.wait(
            WaitStrategy::Block { spin_first: 0 },
            Some(Duration::from_secs(1)),
        )? {
            if rustix::process::getppid() != parent {
                return Err("the measuring process is gone".into());
            }
            continue;
        }
        loop {
            let frame = match reader.front() {
                Ok(frame) => frame,
                Err(ReadError::Empty) => break,
                Err(error) => return Err(error.into()),
            };
            if frame.tag() == STOP {
                // Every frame before the stop was read, in order, and checked.
                if frame.seq() != expected || expected < frames {
                    return Err(
                        format!("read {expected} frames, the stop is {}", frame.seq()).into(),
                    );
                }
                return Ok(());
            }
            if frame.seq() != expected || !frame.payload()[..8].eq(&expected.to_le_bytes()) {
                return Err(format!("frame {} where {expected} was due", frame.seq()).into());
            }
            expected += 1;
            reader.pop()?;
        }
    }
}

fn subscribers_report(config: &Config) -> Result<(), Error> {
    println!("\n## 3. Publish cost with N subscribers\n");
    println!(
        "The writer (CPU {}) appends {} frames of {APPEND_SIZE} B to /dev/shm, timed as in 1 \
         (maintain between blocks), while N reader processes, all pinned to CPU {}, read every \
         frame (checked) sleeping on the journal's futex when caught up (WaitStrategy::Block): \
         on two vCPUs, 16 busy-polling readers would measure CPU contention. Order of N rotated \
         each round; ratio = rate ÷ the 1-subscriber rate of the same round.\n",
        cpu_arg(config.cpus.0),
        config.sub_frames,
        cpu_arg(config.cpus.1)
    );
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); SUBSCRIBERS.len()];
    let mut wakes: Vec<Vec<f64>> = vec![Vec::new(); SUBSCRIBERS.len()];
    for round in 0..config.rounds {
        for n in rotate(&SUBSCRIBERS, round) {
            let i = SUBSCRIBERS.iter().position(|&s| s == n).expect("listed");
            let (rate, w) = subscribers_trial(n, config)?;
            rates[i].push(rate);
            wakes[i].push(w as f64);
        }
    }
    println!("| subscribers | writer rate (median) | ns/frame | wake calls per trial (median) | ÷ 1 subscriber: median (min–max) |");
    println!("|---|---|---|---|---|");
    let mut ratios = vec![Vec::new(); SUBSCRIBERS.len()];
    for (i, n) in SUBSCRIBERS.iter().enumerate() {
        ratios[i] = rates[i].iter().zip(&rates[1]).map(|(r, o)| r / o).collect();
        let m = median(&rates[i]);
        println!(
            "| {n} | {} | {:.1} | {:.0} | {} |",
            mega(m),
            1e9 / m,
            median(&wakes[i]),
            ratio(&ratios[i])
        );
    }
    println!(
        "\nTarget: 16 subscribers ≥ 0.9× of one: {}",
        verdict(median(&ratios[3]), 0.9, true)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Catch-up read
// ---------------------------------------------------------------------------------------------

fn replay_report(config: &Config) -> Result<(), Error> {
    println!("\n## 4. Catch-up read (replay of whole pages)\n");
    println!(
        "{} pages of {} MiB of {APPEND_SIZE}-byte frames written beforehand; each trial opens a \
         fresh reader at the oldest frame and reads every frame (front, copy of the payload, \
         pop). Floor: fresh read-only mappings of the same page files, memcpy of the same page \
         bytes (header excluded) in 64 KiB chunks into a cache-resident buffer. The disk \
         folder's pages are in the page cache (just written; caches are not dropped): \
         page-cache replay. Ratio = the floor's time ÷ ours, same round.\n",
        config.replay_pages,
        PAGE >> 20
    );
    println!("| folder | journal frames/s | journal GB/s (page bytes) | floor GB/s | journal ÷ floor: median (min–max) |");
    println!("|---|---|---|---|---|");
    for folder in [PathBuf::from("/dev/shm"), config.disk.clone()] {
        let name = unique_name("jreplay");
        let options = JournalOptions::new()
            .dir(&folder)
            .page_size(PAGE)
            .prepare_next(PrepareNext::Manual);
        let mut writer = JournalWriter::open(&name, &options)?;
        let mut message = [0u8; APPEND_SIZE];
        let mut frames = 0u64;
        while writer.current_page() < config.replay_pages {
            message[..8].copy_from_slice(&frames.to_le_bytes());
            writer.append(1, frames, &message)?;
            frames += 1;
            if frames.is_multiple_of(BLOCK) {
                writer.maintain(frames)?;
            }
        }
        let last_page = writer.current_page();
        drop(writer);
        let pages: Vec<PathBuf> = (0..=last_page)
            .map(|n| folder.join(&name).join(format!("{n:020}.page")))
            .collect();
        let bytes = frames * frame_len(APPEND_SIZE as u32);
        let (mut ours, mut floors, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let mut chunk = vec![0u8; 64 << 10];
        for round in 0..config.rounds {
            let run_ours = || -> Result<Duration, Error> {
                let t = Instant::now();
                let mut reader = JournalReader::open(
                    &name,
                    &ReaderOptions::new().dir(&folder),
                    ReadFrom::Oldest,
                )?;
                let mut copy = [0u8; APPEND_SIZE];
                let mut n = 0u64;
                loop {
                    match reader.front() {
                        Ok(frame) => copy.copy_from_slice(frame.payload()),
                        Err(ReadError::Empty) => break,
                        Err(error) => return Err(error.into()),
                    }
                    black_box(&copy);
                    reader.pop()?;
                    n += 1;
                }
                let elapsed = t.elapsed();
                if n != frames {
                    return Err(format!("replayed {n} frames of {frames}").into());
                }
                Ok(elapsed)
            };
            let mut run_floor = || -> Result<Duration, Error> {
                let t = Instant::now();
                let mut left = bytes as usize;
                for path in &pages {
                    let page = RawPage::open_read(path)?;
                    let data = (page.len - PAGE_HEADER_SIZE).min(left);
                    let mut at = PAGE_HEADER_SIZE;
                    while at < PAGE_HEADER_SIZE + data {
                        let n = chunk.len().min(PAGE_HEADER_SIZE + data - at);
                        // SAFETY: `at..at + n` lies inside the read-only mapping.
                        unsafe {
                            core::ptr::copy_nonoverlapping(
                                page.base.as_ptr().add(at),
                                chunk.as_mut_ptr(),
                                n,
                            )
                        };
                        black_box(&chunk);
                        at += n;
                    }
                    left -= data;
                }
                Ok(t.elapsed())
            };
            let (o, f) = if round % 2 == 0 {
                let o = run_ours()?;
                (o, run_floor()?)
            } else {
                let f = run_floor()?;
                (run_ours()?, f)
            };
            ours.push(o.as_secs_f64());
            floors.push(f.as_secs_f64());
            ratios.push(f.as_secs_f64() / o.as_secs_f64());
        }
        remove_journal(&folder, &name);
        let (o, f) = (median(&ours), median(&floors));
        println!(
            "| {} ({}) | {} | {:.2} | {:.2} | {} |",
            folder.display(),
            fs_type(&folder),
            mega(frames as f64 / o),
            bytes as f64 / o / 1e9,
            bytes as f64 / f / 1e9,
            ratio(&ratios)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Peers and main
// ---------------------------------------------------------------------------------------------

fn run_peer_if_asked() {
    let Ok(spec) = std::env::var(PEER_ENV) else {
        return;
    };
    let fields: Vec<&str> = spec.split(',').collect();
    let result = (|| -> Result<(), Error> {
        match fields[..] {
            ["floor", path, size, cpu] => {
                pin_to_arg(cpu)?;
                let parent = rustix::process::getppid();
                floor_echo(path, size.parse()?, core::hint::spin_loop, move || {
                    rustix::process::getppid() != parent
                })
            }
            ["echo", dir, j1, j2, cpu] => {
                pin_to_arg(cpu)?;
                echo_peer(dir, j1, j2)
            }
            ["sub", dir, name, cpu, index, frames] => {
                pin_to_arg(cpu)?;
                subscriber_peer(dir, name, index, frames.parse()?)
            }
            _ => Err(format!("malformed peer description {spec:?}").into()),
        }
    })();
    let code = match result {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("journal bench peer ({spec}): {error}");
            1
        }
    };
    std::process::exit(code);
}

fn main() -> Result<(), Error> {
    run_peer_if_asked();
    let config = Config::from_env()?;
    if let Some(cpu) = config.cpus.0 {
        pin_to(cpu)?;
    }
    let ns_per_tick = calibrate(Duration::from_millis(50));
    let started = Instant::now();
    println!("# shm-channel journal report\n");
    println!(
        "CPU: {}; load: {}; measuring process on CPU {}, peers on CPU {}; {} rounds; disk folder \
         {} ({})",
        cpu_model(),
        load_average(),
        cpu_arg(config.cpus.0),
        cpu_arg(config.cpus.1),
        config.rounds,
        config.disk.display(),
        fs_type(&config.disk)
    );
    if config.runs("append") {
        append_report(&config)?;
    }
    if config.runs("latency") {
        latency_report(&config, ns_per_tick)?;
    }
    if config.runs("subs") {
        subscribers_report(&config)?;
    }
    if config.runs("replay") {
        replay_report(&config)?;
    }
    println!(
        "\nRun took {:.0} s; load at the end: {}",
        started.elapsed().as_secs_f64(),
        load_average()
    );
    Ok(())
}
