//! Process ids as the segment records them: who created it, who holds each end.
//!
//! A pid alone does not name a process for long: once a process is reaped its pid can be given to
//! another one, and in a container the restarted main process usually gets the same small pid
//! (often 1) as the one that died. A process is therefore identified by its pid together with its
//! start time (field 22 of `/proc/<pid>/stat`, clock ticks since boot), which differs between
//! two processes that had the same pid one after the other.

use core::num::NonZeroU32;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use rustix::io::Errno;
use rustix::process::{getpid, test_kill_process, Pid};

/// This process's id, as recorded in headers and ring claims.
pub(crate) fn current_pid() -> NonZeroU32 {
    // A pid is positive, so the conversion never yields zero.
    NonZeroU32::new(getpid().as_raw_nonzero().get().unsigned_abs()).unwrap_or(NonZeroU32::MIN)
}

/// Whether a process with id `pid` exists now (`kill(pid, 0)`).
///
/// Answers `false` for 0 and for values no pid can take (a corrupt header must never make us
/// probe process groups: `kill(-n, 0)` addresses a group). A process that exists but that we may
/// not signal (`EPERM`) counts as alive. A zombie (exited, not yet reaped by its parent) counts
/// as dead: `kill(pid, 0)` still succeeds for it, so its state is read from `/proc/<pid>/stat`
/// (where `/proc` is missing the answer falls back to `kill` alone). A zombie's pid cannot be
/// reused before it is reaped, so this never mistakes a new process for the dead one.
///
/// Both processes must share a pid namespace: a pid from another namespace says nothing here.
pub fn is_process_alive(pid: u32) -> bool {
    is_process_alive_since(pid, 0)
}

/// Whether the process that recorded itself as (`pid`, `start`) still runs: `pid` exists and is
/// not a zombie ([`is_process_alive`]), and it is the same process, not a later one that was given
/// the same pid. `start` is the start time the process recorded ([`process_start_time`]); 0 means
/// unknown, and then (as when `/proc` cannot tell the current start time) the answer rests on the
/// pid alone, as [`is_process_alive`] does.
pub fn is_process_alive_since(pid: u32, start: u64) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    let Some(probe) = Pid::from_raw(raw) else {
        return false;
    };
    if matches!(test_kill_process(probe), Err(Errno::SRCH)) {
        return false;
    }
    // One read of `/proc` answers both questions. Without it (no `/proc`, or the process went
    // just now) the answer rests on `kill` alone. Read after the pid check: if the pid was reused
    // in between, the new process's start time differs, so the answer is "gone", which is true
    // of the recorded process.
    let Some(stat) = read_stat(raw) else {
        return true;
    };
    !stat_is_zombie(&stat) && (start == 0 || parse_start_time(&stat).is_none_or(|now| now == start))
}

/// The start time of process `pid` in clock ticks since boot (field 22, `starttime`, of
/// `/proc/<pid>/stat`): with the pid, it names one process, since a later process given the same
/// pid starts later. `None` when `/proc` is not mounted, the process is gone, or the value is
/// unreadable; never `Some(0)` (0 is how the segment says "unknown").
pub fn process_start_time(pid: u32) -> Option<u64> {
    let raw = i32::try_from(pid).ok().filter(|&raw| raw > 0)?;
    parse_start_time(&read_stat(raw)?)
}

/// `/proc/<pid>/stat`, if `/proc` is mounted and the process exists.
fn read_stat(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// The fields of a `/proc/<pid>/stat` line from field 3 (the state) on. The command name (field
/// 2, in parentheses) may itself contain spaces and parentheses, so they are counted after the
/// last `)`.
fn fields_from_state(stat: &str) -> Option<core::str::SplitWhitespace<'_>> {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace())
}

/// Field 22, the start time; `None` for 0, which the segment uses for "unknown".
fn parse_start_time(stat: &str) -> Option<u64> {
    fields_from_state(stat)?
        .nth(22 - 3)?
        .parse()
        .ok()
        .filter(|&start| start != 0)
}

/// Whether the state (field 3) says the process has exited but is not reaped: `Z`, or `X` while
/// it is being reaped. A zombie's pid cannot be reused before it is reaped.
fn stat_is_zombie(stat: &str) -> bool {
    fields_from_state(stat)
        .and_then(|mut fields| fields.next())
        .is_some_and(|state| state == "Z" || state == "X")
}

/// This process's start time ([`process_start_time`] of [`current_pid`]). 0 when `/proc` cannot
/// tell, which the segment records as "unknown".
///
/// Cached, since it never changes for one process, but keyed by the pid it was read for: a child
/// made by `fork` inherits a copy of every static, and a bare cache would make the child record
/// its parent's start time as its own. Any contender would then find the child's record naming a
/// process that does not exist (the child's pid with the parent's start time), judge the live
/// child dead and take its end. The pid is re-read on every call (`getpid`, a cheap system call;
/// this is called when an end is opened, never on the hot path), so a child reads its own start
/// time the first time it asks.
pub(crate) fn current_start_time() -> u64 {
    // Two words (a start time may need more than the 32 bits a pid leaves in one), written by
    // whichever thread read `/proc`. Atomics rather than a lock: a lock held by another thread
    // at the instant of a `fork` would stay locked forever in the child. Threads racing here
    // write the same values for the same pid; a child forked mid-update finds a pid other than
    // its own and reads `/proc` again.
    static CACHED_PID: AtomicU32 = AtomicU32::new(0);
    static CACHED_START: AtomicU64 = AtomicU64::new(0);
    let pid = current_pid().get();
    // The start time is stored before the pid (Release), so a thread that sees its own pid in
    // `CACHED_PID` (Acquire) sees the start time read for that pid.
    if CACHED_PID.load(Ordering::Acquire) == pid {
        return CACHED_START.load(Ordering::Relaxed);
    }
    let start = process_start_time(pid).unwrap_or(0);
    CACHED_PID.store(0, Ordering::Relaxed);
    CACHED_START.store(start, Ordering::Relaxed);
    CACHED_PID.store(pid, Ordering::Release);
    start
}

/// Whether `/proc` says process `pid` is a zombie (see [`stat_is_zombie`]).
#[cfg(test)]
fn is_zombie(pid: i32) -> bool {
    read_stat(pid).is_some_and(|stat| stat_is_zombie(&stat))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pid_is_alive_and_impossible_pids_are_not() {
        assert!(is_process_alive(current_pid().get()));
        assert!(!is_process_alive(0));
        assert!(!is_process_alive(u32::MAX));
        assert!(!is_process_alive(i32::MAX as u32 + 1));
    }

    #[test]
    fn start_times_name_one_process() {
        let own = current_start_time();
        assert_ne!(own, 0, "/proc is mounted where these tests run");
        assert_eq!(process_start_time(current_pid().get()), Some(own));
        assert!(is_process_alive_since(current_pid().get(), own));
        // 0 is "unknown": the pid alone decides.
        assert!(is_process_alive_since(current_pid().get(), 0));
        // Another start time is another process that had our pid before us.
        assert!(!is_process_alive_since(current_pid().get(), own + 1));
        assert_eq!(process_start_time(0), None);
        assert_eq!(process_start_time(u32::MAX), None);
        assert!(!is_process_alive_since(0, 0));
        assert!(!is_process_alive_since(u32::MAX, own));
    }

    #[test]
    fn a_child_is_recognised_by_its_start_time_until_it_is_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        let start = process_start_time(pid).expect("a running child has a start time");
        // A child starts after its parent (start times are monotonic clock ticks).
        assert!(start >= current_start_time());
        assert!(is_process_alive_since(pid, start));
        assert!(is_process_alive_since(pid, 0));
        // The same pid recorded with another start time: a process that held it before.
        assert!(!is_process_alive_since(pid, start + 1));
        child.kill().expect("kill the child");
        child.wait().expect("reap the child");
        // Reaped: gone whatever was recorded (unless the pid was reused meanwhile, which the
        // start time then tells apart).
        assert!(!is_process_alive_since(pid, start));
    }

    #[test]
    fn start_time_is_field_22_after_the_last_parenthesis() {
        let fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        let tail = fields.join(" ");
        assert_eq!(parse_start_time(&format!("7 (a) b) {tail}")), Some(22));
        assert_eq!(parse_start_time(&format!("7 (x (y) z) {tail}\n")), Some(22));
        assert_eq!(parse_start_time("7 (short) S 1 2"), None);
        assert_eq!(parse_start_time("no parenthesis 1 2 3"), None);
        let zero = tail.replace(" 22 ", " 0 ");
        assert_eq!(parse_start_time(&format!("7 (a) {zero}")), None);
    }

    #[test]
    fn an_exited_unreaped_child_is_dead() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "exit 0"])
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        // The child exits at once; until we reap it, it is a zombie that `kill(pid, 0)` finds.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while is_process_alive(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "zombie child {pid} still reads as alive"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(is_zombie(pid as i32), "the child is not reaped yet");
        child.wait().expect("reap the child");
        assert!(!is_process_alive(pid));
    }
}
