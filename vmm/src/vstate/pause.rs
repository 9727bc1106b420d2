//! Pausing the vCPUs: a gate every vCPU thread passes at the top of its run loop. To pause,
//! the event loop closes the gate and kicks every vCPU out of KVM_RUN; each one parks at the
//! gate, and pause returns once all have. Resume opens the gate. The kick is repeated while
//! waiting, as a kick that lands just before KVM_RUN is lost.
//!
//! This module does not save or restore vCPU state: a paused vCPU keeps its state in KVM.
//!
//! Lock: `state` guards every field of [`GateState`]; `closed` mirrors `state.paused` so a
//! running vCPU checks the gate without the lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::vstate::vcpu::kick;

/// Errors pausing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PauseError {
    /// Not every vCPU reached the gate in time; the VM was resumed.
    #[error("only {parked} of {vcpus} vCPUs stopped within {timeout_ms} ms; the VM runs on")]
    Timeout {
        /// vCPUs that stopped.
        parked: usize,
        /// All vCPUs.
        vcpus: usize,
        /// How long we waited.
        timeout_ms: u128,
    },
}

#[derive(Debug, Default)]
struct GateState {
    paused: bool,
    /// The VM is stopping: the gate stays open for good.
    released: bool,
    /// vCPUs waiting at the gate.
    parked: usize,
}

/// The gate the vCPU threads wait at while the VM is paused.
#[derive(Debug, Default)]
pub struct PauseGate {
    closed: AtomicBool,
    state: Mutex<GateState>,
    changed: Condvar,
}

impl PauseGate {
    /// An open gate.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// vCPU side: returns at once while the VM runs; blocks while it is paused.
    pub fn pass(&self) {
        if !self.closed.load(Ordering::Acquire) {
            return;
        }
        let mut s = self.lock();
        if !s.paused || s.released {
            return;
        }
        s.parked += 1;
        self.changed.notify_all();
        while s.paused && !s.released {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.parked -= 1;
        self.changed.notify_all();
    }

    /// Whether the VM is paused.
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Closes the gate and kicks `vcpus` (pthreads of running vCPU threads) until all of them
    /// wait at it. On timeout the gate is opened again and the VM runs on.
    pub fn pause(&self, vcpus: &[libc::pthread_t], timeout: Duration) -> Result<(), PauseError> {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        s.paused = true;
        self.closed.store(true, Ordering::Release);
        loop {
            if s.parked >= vcpus.len() || s.released {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                let parked = s.parked;
                drop(s);
                self.resume();
                return Err(PauseError::Timeout {
                    parked,
                    vcpus: vcpus.len(),
                    timeout_ms: timeout.as_millis(),
                });
            }
            for &t in vcpus {
                kick(t);
            }
            let wait = (deadline - now).min(Duration::from_millis(5));
            s = self
                .changed
                .wait_timeout(s, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Opens the gate; the parked vCPUs run again.
    pub fn resume(&self) {
        let mut s = self.lock();
        s.paused = false;
        self.closed.store(false, Ordering::Release);
        self.changed.notify_all();
    }

    /// Opens the gate for good: the VM is stopping and every vCPU must reach its exit check.
    pub fn release(&self) {
        let mut s = self.lock();
        s.released = true;
        s.paused = false;
        self.closed.store(false, Ordering::Release);
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    /// Two "vCPU" threads count turns through the gate; pausing must stop both counters,
    /// resuming must let them move again.
    #[test]
    fn pause_stops_every_thread_and_resume_lets_them_go() {
        crate::vstate::vcpu::install_kick_handler().unwrap();
        let gate = Arc::new(PauseGate::new());
        let stop = Arc::new(AtomicBool::new(false));
        let counters: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
        let threads: Vec<_> = counters
            .iter()
            .map(|c| {
                let (gate, stop, c) = (gate.clone(), stop.clone(), c.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        gate.pass();
                        c.fetch_add(1, Ordering::AcqRel);
                        std::thread::sleep(Duration::from_micros(100));
                    }
                })
            })
            .collect();
        use std::os::unix::thread::JoinHandleExt;
        let pthreads: Vec<_> = threads.iter().map(|t| t.as_pthread_t()).collect();
        std::thread::sleep(Duration::from_millis(20));
        gate.pause(&pthreads, Duration::from_secs(5)).unwrap();
        assert!(gate.is_paused());
        let before: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Acquire)).collect();
        std::thread::sleep(Duration::from_millis(50));
        let after: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Acquire)).collect();
        assert_eq!(before, after, "a thread ran while paused");
        gate.resume();
        std::thread::sleep(Duration::from_millis(50));
        for (c, b) in counters.iter().zip(&before) {
            assert!(c.load(Ordering::Acquire) > *b, "a thread did not resume");
        }
        // A pause that cannot complete (a third, absent vCPU) times out and resumes.
        let mut three = pthreads.clone();
        three.push(pthreads[0]);
        let e = gate.pause(&three, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, PauseError::Timeout { vcpus: 3, .. }), "{e}");
        assert!(!gate.is_paused());
        // Release ends a pause for good, so stopping threads cannot hang at the gate.
        gate.pause(&pthreads, Duration::from_secs(5)).unwrap();
        stop.store(true, Ordering::Release);
        gate.release();
        for t in threads {
            t.join().unwrap();
        }
    }
}
