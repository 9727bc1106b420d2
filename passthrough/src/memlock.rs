//! Whether this process may pin guest RAM for device DMA.
//!
//! iommufd pins every page mapped into an IOAS from process memory (`IOMMU_IOAS_MAP`) and,
//! unless the process has `CAP_IPC_LOCK`, charges it to the *user's* `locked_vm` against
//! the process's soft `RLIMIT_MEMLOCK` (drivers/iommu/iommufd/pages.c: `iopt_alloc_pages`
//! picks `IOPT_PAGES_ACCOUNT_NONE` when `capable(CAP_IPC_LOCK)`, else
//! `incr_user_locked_vm` fails with `ENOMEM` past the limit). Root usually has
//! `CAP_IPC_LOCK`; an unprivileged VMM needs a limit of at least the guest's RAM.
//!
//! [`MemlockLimit::check`] turns that `ENOMEM` into an error before anything is mapped,
//! with the numbers and the fix. It is necessary, not sufficient: the user's other pinned
//! memory (other VMMs, io_uring, RDMA) counts against the same limit, and only the kernel
//! knows it; a later `ENOMEM` from the map still says what to do.
//!
//! Not here: the mapping itself ([`crate::GuestRamDma`]).

use std::io;

/// `CAP_IPC_LOCK`.
const CAP_IPC_LOCK: u32 = 14;

/// Errors about locked memory.
#[derive(Debug, thiserror::Error)]
pub enum MemlockError {
    /// The limit is below what must be pinned.
    #[error(
        "{who}: device DMA pins all {} of guest RAM, but RLIMIT_MEMLOCK is {} and the \
         process lacks CAP_IPC_LOCK; raise the limit to at least {needed} bytes (`ulimit -l \
         {}` in the shell that starts the VMM, `prlimit --memlock={needed}:{needed} --pid \
         <pid>`, or LimitMEMLOCK= in a systemd unit) or grant CAP_IPC_LOCK",
        human(*needed),
        human(*limit),
        needed.div_ceil(1024)
    )]
    TooLow {
        /// Who needs it (e.g. "--device 0000:00:03.0").
        who: String,
        /// Bytes to pin.
        needed: u64,
        /// The soft limit in bytes.
        limit: u64,
    },
    /// The limit could not be read.
    #[error("{who}: cannot read RLIMIT_MEMLOCK: {source}")]
    Read {
        /// Who needs it.
        who: String,
        /// Why.
        source: io::Error,
    },
}

/// What limits pinning for this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemlockLimit {
    /// The soft `RLIMIT_MEMLOCK` in bytes; `None` if unlimited.
    pub limit: Option<u64>,
    /// Whether the process has `CAP_IPC_LOCK` (then nothing is charged).
    pub cap_ipc_lock: bool,
}

impl MemlockLimit {
    /// No limit (what root with `CAP_IPC_LOCK` has); for tests and callers that checked.
    pub const UNLIMITED: MemlockLimit = MemlockLimit {
        limit: None,
        cap_ipc_lock: true,
    };

    /// This process's limit and capability.
    pub fn current() -> io::Result<MemlockLimit> {
        let limit = crate::sys::memlock_limit()?;
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        Ok(MemlockLimit {
            limit,
            cap_ipc_lock: has_cap(&status, CAP_IPC_LOCK),
        })
    }

    /// Whether `needed` bytes may be pinned (ignoring what the user has pinned elsewhere).
    pub fn check(&self, who: &str, needed: u64) -> Result<(), MemlockError> {
        match self.limit {
            Some(limit) if !self.cap_ipc_lock && needed > limit => Err(MemlockError::TooLow {
                who: who.to_string(),
                needed,
                limit,
            }),
            _ => Ok(()),
        }
    }
}

/// Whether the `CapEff:` line of a `/proc/<pid>/status` text has capability `cap`.
fn has_cap(status: &str, cap: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|bits| bits & (1u64 << cap) != 0)
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut unit = 0;
    while v >= 1024 && v % 1024 == 0 && unit < UNITS.len() - 1 {
        v /= 1024;
        unit += 1;
    }
    format!("{v} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_low_names_the_numbers_and_the_fix() {
        let l = MemlockLimit {
            limit: Some(64 << 10),
            cap_ipc_lock: false,
        };
        let err = l.check("--device 0000:00:03.0", 1 << 30).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("--device 0000:00:03.0"), "{text}");
        assert!(text.contains("1 GiB of guest RAM"), "{text}");
        assert!(text.contains("RLIMIT_MEMLOCK is 64 KiB"), "{text}");
        assert!(text.contains("ulimit -l 1048576"), "{text}");
        assert!(text.contains("CAP_IPC_LOCK"), "{text}");
        l.check("x", 64 << 10).unwrap();
        MemlockLimit {
            cap_ipc_lock: true,
            ..l
        }
        .check("x", 1 << 40)
        .unwrap();
        MemlockLimit::UNLIMITED.check("x", u64::MAX).unwrap();
        MemlockLimit {
            limit: None,
            cap_ipc_lock: false,
        }
        .check("x", u64::MAX)
        .unwrap();
    }

    #[test]
    fn reads_capabilities_from_proc_status() {
        let s = "Name:\tvmm\nCapEff:\t000001ffffffffff\n";
        assert!(has_cap(s, CAP_IPC_LOCK));
        assert!(!has_cap("CapEff:\t0000000000000000\n", CAP_IPC_LOCK));
        assert!(!has_cap("garbage", CAP_IPC_LOCK));
        assert!(MemlockLimit::current().is_ok());
        assert_eq!(human(3), "3 bytes");
        assert_eq!(human(1536), "1536 bytes");
    }
}
