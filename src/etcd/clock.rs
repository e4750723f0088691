//! A clock that keeps counting while the host is suspended (`CLOCK_BOOTTIME`), for lease
//! deadlines: etcd's lease expires in wall time, so a host that slept through it must not wake up
//! believing the lease is still alive. Tokio's timers use `CLOCK_MONOTONIC`, which stops.

use std::time::Duration;

/// Time since boot, suspended time included.
pub fn boot_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on every Linux since 2.6.39.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        // Cannot happen on Linux; fall back to a clock that is at least monotonic.
        return monotonic_fallback();
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

fn monotonic_fallback() -> Duration {
    use std::sync::OnceLock;
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_clock_advances_with_real_time() {
        let a = boot_now();
        std::thread::sleep(Duration::from_millis(20));
        let b = boot_now();
        assert!(b >= a + Duration::from_millis(20), "{a:?} -> {b:?}");
    }
}
