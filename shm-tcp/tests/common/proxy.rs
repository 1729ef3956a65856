//! A fault-injecting TCP proxy for the integration tests (std only, one thread per direction).
//!
//! [`Proxy::start`] listens on `127.0.0.1:0` and forwards every accepted client connection to a
//! target address, both ways. A [`FaultPlan`] says what to break: cut a connection after a
//! random number of forwarded bytes (forwarding exactly that prefix first, so a cut can land in
//! the middle of a frame, a hello or a resend), forward one byte per `write`, sleep a random
//! time before each chunk, refuse new connections. The plan can be replaced while the proxy
//! runs ([`Proxy::set_plan`]), every live connection can be cut at once
//! ([`Proxy::cut_all_now`]), and counters report what happened ([`Proxy::stats`],
//! [`Proxy::connections`]). Randomness comes from [`SplitMix64`] seeded by the caller: the k-th
//! forwarded connection of two proxies started with the same seed and plan gets the same cut
//! budgets.
//!
//! Robustness: no socket error panics; a closed or reset peer ends that connection only. All
//! sockets use read and write timeouts of [`POLL`], so every thread notices a cut or the
//! proxy's shutdown within about that long; dropping the [`Proxy`] stops and joins all of them.
//!
//! Threads are fine here: this is test scaffolding, not the library under test.

// Each test file uses a different subset.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Read and write timeout of every proxied socket: how soon a blocked thread notices a cut or
/// the proxy's shutdown.
pub const POLL: Duration = Duration::from_millis(50);

/// How long the proxy waits for its connection to the target before giving up on a client.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Default of [`FaultPlan::cut_linger`].
pub const DEFAULT_CUT_LINGER: Duration = Duration::from_millis(500);

/// Largest chunk one `read` takes from a socket (each chunk is then delayed and written).
const CHUNK: usize = 16 * 1024;

/// SplitMix64: a tiny, fast, seedable PRNG (Steele, Lea and Flood), good enough for tests.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose sequence depends only on `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (0 if `n == 0`); multiply-shift, bias below 2^-64 * n.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A value in `lo..=hi` (the bounds are swapped if `lo > hi`).
    pub fn range_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.below(span),
            None => self.next_u64(),
        }
    }

    /// A duration in `0..=max`, with nanosecond resolution.
    pub fn duration_up_to(&mut self, max: Duration) -> Duration {
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.range_inclusive(0, nanos))
    }

    /// Fills `buf` with random bytes.
    pub fn fill_bytes(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill_bytes(&mut v);
        v
    }
}

/// Mixes a proxy seed with a connection index into that connection's own seed.
fn connection_seed(seed: u64, index: u64) -> u64 {
    SplitMix64::new(seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64()
}

/// One direction of a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Bytes the client sent, forwarded to the target.
    ClientToTarget,
    /// Bytes the target sent, forwarded to the client.
    TargetToClient,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ClientToTarget => 0,
            Direction::TargetToClient => 1,
        }
    }
}

/// What [`FaultPlan::cut_after`]'s byte count counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CutScope {
    /// Each direction draws its own budget from the range; the connection is cut as soon as
    /// either direction has forwarded its budget.
    #[default]
    PerDirection,
    /// One budget for the bytes forwarded in both directions together.
    Total,
}

/// The cut budget a connection drew when it was set up (see [`ConnStats::budget`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutBudget {
    /// No cut planned (only [`Proxy::cut_all_now`] or an error ends the connection early).
    Never,
    /// Cut once either direction has forwarded its number of bytes.
    PerDirection {
        /// Budget of [`Direction::ClientToTarget`].
        client_to_target: u64,
        /// Budget of [`Direction::TargetToClient`].
        target_to_client: u64,
    },
    /// Cut once both directions together have forwarded this many bytes.
    Total(u64),
}

/// What the proxy does to connections. `FaultPlan::default()` forwards faithfully.
///
/// `cut_after`, `cut_scope`, `cut_linger` are read once per connection, when it is set up;
/// `one_byte_writes` and `delay` are read before each forwarded chunk; `refuse` at each accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultPlan {
    /// `Some((lo, hi))`: each connection draws a byte budget in `lo..=hi` (per direction or in
    /// total, see `cut_scope`), forwards exactly that many bytes and then cuts the connection:
    /// both sockets are shut down for writing at once (each peer reads the exact prefix, then
    /// end of file), and are closed after `cut_linger`. A budget of 0 cuts on setup.
    pub cut_after: Option<(u64, u64)>,
    /// Whether `cut_after` counts each direction separately or both together.
    pub cut_scope: CutScope,
    /// After a cut, how long the proxy keeps the two sockets open, reading and discarding
    /// whatever still arrives, before shutting them down completely and closing them (sooner if
    /// the peer closes first). This lets the forwarded prefix reach a slow reader instead of
    /// being thrown away by the reset a close with unread data causes. `Duration::ZERO` shuts
    /// both sockets down completely at the cut (harsher: a peer may get a reset and lose the
    /// tail of the prefix still in flight).
    pub cut_linger: Duration,
    /// Forward each byte with its own `write` (both sockets have `TCP_NODELAY`, so each byte
    /// really leaves as its own segment).
    pub one_byte_writes: bool,
    /// `Some(max)`: sleep a random time in `0..=max` before forwarding each chunk read.
    pub delay: Option<Duration>,
    /// Accept new connections and close them at once, without connecting to the target.
    pub refuse: bool,
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self {
            cut_after: None,
            cut_scope: CutScope::PerDirection,
            cut_linger: DEFAULT_CUT_LINGER,
            one_byte_writes: false,
            delay: None,
            refuse: false,
        }
    }
}

impl FaultPlan {
    /// Faithful forwarding (the same as `FaultPlan::default()`).
    pub fn passthrough() -> Self {
        Self::default()
    }

    /// Cut each connection after a random number of bytes in `lo..=hi` per direction.
    pub fn cut_after(lo: u64, hi: u64) -> Self {
        Self {
            cut_after: Some((lo, hi)),
            ..Self::default()
        }
    }
}

/// A snapshot of the proxy's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted (including refused ones and those whose target connect failed).
    pub accepted: u64,
    /// Connections closed at once because the plan said `refuse`.
    pub refused: u64,
    /// Connections closed because the proxy could not connect to the target.
    pub connect_failed: u64,
    /// Cuts made (by budget or by [`Proxy::cut_all_now`]); at most one per connection.
    pub cuts: u64,
    /// Bytes written to targets, all connections together.
    pub bytes_client_to_target: u64,
    /// Bytes written to clients, all connections together.
    pub bytes_target_to_client: u64,
    /// Forwarded connections not yet fully closed.
    pub active: u64,
}

/// A snapshot of one forwarded connection's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnStats {
    /// Index of the connection among those forwarded by this proxy, from 0 in accept order.
    pub id: u64,
    /// The cut budget it drew.
    pub budget: CutBudget,
    /// Bytes written to the target so far.
    pub client_to_target: u64,
    /// Bytes written to the client so far.
    pub target_to_client: u64,
    /// Whether it has been cut.
    pub cut: bool,
    /// Whether both its sockets are closed and its threads finished.
    pub closed: bool,
}

/// A running proxy. Dropping it stops accepting, closes every connection and joins every
/// thread (within about [`POLL`], or [`CONNECT_TIMEOUT`] if a connect to the target is
/// pending).
pub struct Proxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy on `127.0.0.1:0` forwarding to `target` under `plan`, with randomness
    /// seeded by `seed`. Panics only if it cannot bind a listening socket or spawn its accept
    /// thread (see [`Proxy::try_start`]).
    pub fn start(target: SocketAddr, plan: FaultPlan, seed: u64) -> Proxy {
        Self::try_start(target, plan, seed).expect("start the test proxy")
    }

    /// [`Proxy::start`], returning setup errors instead of panicking.
    pub fn try_start(target: SocketAddr, plan: FaultPlan, seed: u64) -> io::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            seed,
            plan: Mutex::new(plan),
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            connect_failed: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
            active: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            records: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("proxy-accept".into())
                .spawn(move || accept_loop(&shared, listener))?
        };
        Ok(Proxy {
            shared,
            addr,
            accept: Some(accept),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        ProxyStats {
            accepted: s.accepted.load(Ordering::SeqCst),
            refused: s.refused.load(Ordering::SeqCst),
            connect_failed: s.connect_failed.load(Ordering::SeqCst),
            cuts: s.cuts.load(Ordering::SeqCst),
            bytes_client_to_target: s.bytes[0].load(Ordering::SeqCst),
            bytes_target_to_client: s.bytes[1].load(Ordering::SeqCst),
            active: s.active.load(Ordering::SeqCst),
        }
    }

    /// Snapshots of every forwarded connection's record so far, in id order.
    pub fn connections(&self) -> Vec<ConnStats> {
        let mut v: Vec<ConnStats> = lock(&self.shared.records)
            .iter()
            .map(|r| r.snapshot())
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// The record of forwarded connection `id` (0 = the first forwarded), if it exists yet.
    pub fn connection(&self, id: u64) -> Option<ConnStats> {
        lock(&self.shared.records)
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.snapshot())
    }

    /// The current plan.
    pub fn plan(&self) -> FaultPlan {
        lock(&self.shared.plan).clone()
    }

    /// Replaces the plan (see [`FaultPlan`] for when each field takes effect).
    pub fn set_plan(&self, plan: FaultPlan) {
        *lock(&self.shared.plan) = plan;
    }

    /// Changes the plan in place, e.g. `proxy.update_plan(|p| p.refuse = true)`.
    pub fn update_plan(&self, f: impl FnOnce(&mut FaultPlan)) {
        f(&mut lock(&self.shared.plan));
    }

    /// Cuts every live connection now (as a budget cut does, with each connection's
    /// `cut_linger`) and returns how many were cut (connections already cut do not count).
    /// The proxy keeps accepting new connections.
    pub fn cut_all_now(&self) -> usize {
        let live: Vec<Arc<Conn>> = lock(&self.shared.live).values().cloned().collect();
        live.iter().filter(|c| c.cut(&self.shared)).count()
    }

    /// Polls [`Proxy::stats`] every millisecond until `pred` holds (true) or `timeout` passes
    /// (false).
    pub fn wait_until(&self, timeout: Duration, mut pred: impl FnMut(&ProxyStats) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.stats()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept thread, blocked in `accept`, with a connection of our own; it sees
        // `stop` and leaves, dropping the listener. If even that fails, detach it rather than
        // hang: it is blocked, not spinning, and exits on its next accept.
        let woke = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
        if let Some(accept) = self.accept.take() {
            if woke {
                let _ = accept.join();
            }
        }
        // Wake every connection thread blocked in a read; all of them also poll `stop`.
        for conn in lock(&self.shared.live).values() {
            conn.close_both();
        }
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// State shared by the proxy handle and its threads.
struct Shared {
    target: SocketAddr,
    seed: u64,
    plan: Mutex<FaultPlan>,
    stop: AtomicBool,
    next_id: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    connect_failed: AtomicU64,
    cuts: AtomicU64,
    /// Bytes forwarded, indexed by `Direction::index`.
    bytes: [AtomicU64; 2],
    active: AtomicU64,
    /// Connections whose sockets are open, by id.
    live: Mutex<HashMap<u64, Arc<Conn>>>,
    /// Every forwarded connection's record, kept after it closes.
    records: Mutex<Vec<Arc<ConnRecord>>>,
    /// Connection threads to join on drop (finished ones are pruned at each accept).
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// `(one_byte_writes, delay)` of the current plan.
    fn chunk_controls(&self) -> (bool, Option<Duration>) {
        let plan = lock(&self.plan);
        (plan.one_byte_writes, plan.delay)
    }
}

/// Counters of one forwarded connection, kept after it closes.
struct ConnRecord {
    id: u64,
    budget: CutBudget,
    forwarded: [AtomicU64; 2],
    cut: AtomicBool,
    closed: AtomicBool,
}

impl ConnRecord {
    fn snapshot(&self) -> ConnStats {
        ConnStats {
            id: self.id,
            budget: self.budget,
            client_to_target: self.forwarded[0].load(Ordering::SeqCst),
            target_to_client: self.forwarded[1].load(Ordering::SeqCst),
            cut: self.cut.load(Ordering::SeqCst),
            closed: self.closed.load(Ordering::SeqCst),
        }
    }
}

/// Bytes a direction (or both, under [`CutScope::Total`]) may still forward.
struct Budget {
    /// `None`: unlimited.
    remaining: Option<u64>,
    /// Reserved bytes being written right now (the cut waits for them).
    writers: u32,
}

/// One forwarded connection: the two sockets and its fault state.
struct Conn {
    client: TcpStream,
    server: TcpStream,
    /// Set by the cut (exactly once).
    cut: AtomicBool,
    /// Set when an error (not a cut) tears the connection down.
    dead: AtomicBool,
    linger: Duration,
    /// Budgets by `Direction::index`; under [`CutScope::Total`] only index 0 is used.
    budgets: [Mutex<Budget>; 2],
    total: bool,
    record: Arc<ConnRecord>,
}

impl Conn {
    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// `(source, destination)` of a direction.
    fn ends(&self, dir: Direction) -> (&TcpStream, &TcpStream) {
        match dir {
            Direction::ClientToTarget => (&self.client, &self.server),
            Direction::TargetToClient => (&self.server, &self.client),
        }
    }

    fn budget(&self, dir: Direction) -> &Mutex<Budget> {
        &self.budgets[if self.total { 0 } else { dir.index() }]
    }

    /// Reserves up to `n` bytes of the budget; returns how many may be written (the caller must
    /// then call `release` if that is not 0).
    fn reserve(&self, dir: Direction, n: usize) -> usize {
        let mut b = lock(self.budget(dir));
        let take = match b.remaining {
            None => n,
            Some(rem) => {
                let take = usize::try_from(rem).map_or(n, |rem| rem.min(n));
                b.remaining = Some(rem - take as u64);
                take
            }
        };
        if take > 0 {
            b.writers += 1;
        }
        take
    }

    /// Ends a reservation; true if the budget is now spent and no reserved bytes are still
    /// being written, i.e. it is time to cut.
    fn release(&self, dir: Direction) -> bool {
        let mut b = lock(self.budget(dir));
        b.writers = b.writers.saturating_sub(1);
        b.remaining == Some(0) && b.writers == 0
    }

    /// The cut: both sockets shut down for writing (each peer reads what was forwarded, then end
    /// of file), or completely if the linger is zero. False if it was already cut.
    fn cut(&self, shared: &Shared) -> bool {
        if self.cut.swap(true, Ordering::SeqCst) {
            return false;
        }
        shared.cuts.fetch_add(1, Ordering::SeqCst);
        self.record.cut.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Write);
        let _ = self.server.shutdown(Shutdown::Write);
        if self.linger.is_zero() {
            self.close_both();
        }
        true
    }

    /// After an error (not a cut): close everything.
    fn teardown(&self) {
        self.dead.store(true, Ordering::SeqCst);
        self.close_both();
    }

    fn close_both(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not cascade).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Errors after which a socket operation should just be retried (timeouts of `POLL`).
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = listener.accept();
        if shared.stopping() {
            return;
        }
        let client = match accepted {
            Ok((client, _)) => client,
            Err(_) => {
                // E.g. out of file descriptors: back off rather than spin.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if lock(&shared.plan).refuse {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let spawned = {
            let shared = Arc::clone(shared);
            thread::Builder::new()
                .name(format!("proxy-conn-{id}"))
                .spawn(move || run_connection(&shared, client, id))
        };
        let mut threads = lock(&shared.threads);
        threads.retain(|t| !t.is_finished());
        if let Ok(t) = spawned {
            threads.push(t);
        }
        // A failed spawn dropped `client` with the closure: the client sees the close.
    }
}

fn run_connection(shared: &Arc<Shared>, client: TcpStream, id: u64) {
    let server = match TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) {
        Ok(server) => server,
        Err(_) => {
            shared.connect_failed.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    };
    for s in [&client, &server] {
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(POLL));
        let _ = s.set_write_timeout(Some(POLL));
    }
    let plan = lock(&shared.plan).clone();
    let mut rng = SplitMix64::new(connection_seed(shared.seed, id));
    let budget = match plan.cut_after {
        None => CutBudget::Never,
        Some((lo, hi)) => match plan.cut_scope {
            CutScope::PerDirection => CutBudget::PerDirection {
                client_to_target: rng.range_inclusive(lo, hi),
                target_to_client: rng.range_inclusive(lo, hi),
            },
            CutScope::Total => CutBudget::Total(rng.range_inclusive(lo, hi)),
        },
    };
    let (remaining, total) = match budget {
        CutBudget::Never => ([None, None], false),
        CutBudget::PerDirection {
            client_to_target,
            target_to_client,
        } => ([Some(client_to_target), Some(target_to_client)], false),
        CutBudget::Total(n) => ([Some(n), None], true),
    };
    let record = Arc::new(ConnRecord {
        id,
        budget,
        forwarded: [AtomicU64::new(0), AtomicU64::new(0)],
        cut: AtomicBool::new(false),
        closed: AtomicBool::new(false),
    });
    lock(&shared.records).push(Arc::clone(&record));
    let conn = Arc::new(Conn {
        client,
        server,
        cut: AtomicBool::new(false),
        dead: AtomicBool::new(false),
        linger: plan.cut_linger,
        budgets: remaining.map(|remaining| {
            Mutex::new(Budget {
                remaining,
                writers: 0,
            })
        }),
        total,
        record,
    });
    shared.active.fetch_add(1, Ordering::SeqCst);
    {
        let mut live = lock(&shared.live);
        if shared.stopping() {
            // Drop may already have walked `live`: do not wait for `POLL` to notice.
            conn.close_both();
        }
        live.insert(id, Arc::clone(&conn));
    }
    if remaining.contains(&Some(0)) {
        conn.cut(shared);
    }

    let c2s_rng = SplitMix64::new(rng.next_u64());
    let s2c_rng = SplitMix64::new(rng.next_u64());
    let other = {
        let shared = Arc::clone(shared);
        let conn = Arc::clone(&conn);
        thread::Builder::new()
            .name(format!("proxy-conn-{id}-s2c"))
            .spawn(move || forward(&shared, &conn, Direction::TargetToClient, s2c_rng))
    };
    match other {
        Ok(other) => {
            forward(shared, &conn, Direction::ClientToTarget, c2s_rng);
            let _ = other.join();
        }
        Err(_) => conn.teardown(),
    }

    conn.close_both();
    lock(&shared.live).remove(&id);
    conn.record.closed.store(true, Ordering::SeqCst);
    shared.active.fetch_sub(1, Ordering::SeqCst);
    // The sockets close when the last `Arc<Conn>` (this one, or a `cut_all_now` snapshot)
    // drops.
}

/// Forwards one direction until end of file, an error, a cut or the proxy's shutdown; after a
/// cut, drains the source for the linger.
fn forward(shared: &Shared, conn: &Conn, dir: Direction, mut rng: SplitMix64) {
    let (src, dst) = conn.ends(dir);
    let mut buf = vec![0u8; CHUNK];
    loop {
        if shared.stopping() || conn.is_cut() || conn.is_dead() {
            break;
        }
        let n = match (&mut &*src).read(&mut buf) {
            Ok(0) => {
                // End of file: pass the half-close on; the other direction carries on.
                if !conn.is_cut() && !conn.is_dead() {
                    let _ = dst.shutdown(Shutdown::Write);
                }
                break;
            }
            Ok(n) => n,
            Err(e) if transient(&e) => continue,
            Err(_) => {
                if !conn.is_cut() {
                    conn.teardown();
                }
                break;
            }
        };
        let (one_byte_writes, delay) = shared.chunk_controls();
        if let Some(max) = delay {
            if !sleep_watching(shared, conn, rng.duration_up_to(max)) {
                break;
            }
        }
        let take = conn.reserve(dir, n);
        if take == 0 {
            // Under `CutScope::Total`, the other direction holds the last reserved bytes and
            // cuts once it has written them: these bytes are never forwarded.
            continue;
        }
        let written = write_chunk(shared, conn, dst, &buf[..take], one_byte_writes, dir);
        let spent = conn.release(dir);
        if !written {
            if !conn.is_cut() {
                conn.teardown();
            }
            break;
        }
        if spent {
            conn.cut(shared);
            break;
        }
    }
    if conn.is_cut() && !shared.stopping() {
        drain(shared, src, conn.linger, &mut buf);
    }
}

/// Writes `data` to `dst` whole, or one byte per `write`; false if the destination failed or
/// the proxy is stopping. Counts every byte written.
fn write_chunk(
    shared: &Shared,
    conn: &Conn,
    dst: &TcpStream,
    data: &[u8],
    one_byte_writes: bool,
    dir: Direction,
) -> bool {
    if one_byte_writes {
        data.chunks(1)
            .all(|byte| write_all(shared, conn, dst, byte, dir))
    } else {
        write_all(shared, conn, dst, data, dir)
    }
}

fn write_all(
    shared: &Shared,
    conn: &Conn,
    dst: &TcpStream,
    mut data: &[u8],
    dir: Direction,
) -> bool {
    while !data.is_empty() {
        if shared.stopping() || conn.is_dead() {
            return false;
        }
        match (&mut &*dst).write(data) {
            Ok(0) => return false,
            Ok(n) => {
                shared.bytes[dir.index()].fetch_add(n as u64, Ordering::SeqCst);
                conn.record.forwarded[dir.index()].fetch_add(n as u64, Ordering::SeqCst);
                data = &data[n..];
            }
            Err(e) if transient(&e) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Sleeps `d` in slices of at most `POLL`; false if the proxy stopped or the connection was cut
/// or torn down meanwhile.
fn sleep_watching(shared: &Shared, conn: &Conn, d: Duration) -> bool {
    let deadline = Instant::now() + d;
    loop {
        if shared.stopping() || conn.is_cut() || conn.is_dead() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        thread::sleep((deadline - now).min(POLL));
    }
}

/// Reads and discards from a cut connection's socket until the peer closes, an error, the
/// linger passes or the proxy stops.
fn drain(shared: &Shared, src: &TcpStream, linger: Duration, buf: &mut [u8]) {
    let deadline = Instant::now() + linger;
    while !shared.stopping() && Instant::now() < deadline {
        match (&mut &*src).read(buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if transient(&e) => {}
            Err(_) => return,
        }
    }
}
