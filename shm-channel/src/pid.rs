//! Process ids as the segment records them: who created it, who holds each end.

use core::num::NonZeroU32;

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
/// not signal (`EPERM`) counts as alive. A zombie (exited, not yet reaped by its parent) also
/// counts as alive: a parent that kills a child must wait for it before the pid reads as dead.
///
/// Both processes must share a pid namespace: a pid from another namespace says nothing here.
pub fn is_process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    let Some(pid) = Pid::from_raw(raw) else {
        return false;
    };
    !matches!(test_kill_process(pid), Err(Errno::SRCH))
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
}
