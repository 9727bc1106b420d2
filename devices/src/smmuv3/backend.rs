//! [`Smmuv3Backend`]: what the emulated SMMU needs from the host, as a small trait so the
//! emulation is testable without a kernel. The passthrough crate implements it over
//! iommufd (nested HWPTs on a vIOMMU), which runs on the kernel and on its model.

/// A host-side failure, with the kernel's errno.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    /// The errno (EIO: the host refused the STE or command itself).
    pub errno: i32,
    /// What happened, for the log.
    pub message: String,
}

/// A batch of invalidations stopped at command `done`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("command {done} of the batch failed: {message}")]
pub struct InvalidateError {
    /// Commands handled before the failing one.
    pub done: usize,
    /// The errno.
    pub errno: i32,
    /// What happened, for the log.
    pub message: String,
}

/// One event from the host for the guest's event queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendEvent {
    /// An SMMU event record with the guest's StreamID in it.
    Record([u64; 4]),
    /// The host queue overflowed: events were lost here.
    Lost,
}

/// The host side of one emulated SMMU.
pub trait Smmuv3Backend: Send {
    /// The guest StreamIDs of the devices behind this SMMU.
    fn stream_ids(&self) -> Vec<u32>;

    /// Make stream `sid` translate as `ste` says: the STE's first two words, already
    /// masked to what the kernel accepts (see [`super::ste::Ste::nested_words`]); V = 0
    /// or Config abort aborts, bypass goes straight to stage 2. A StreamID without a
    /// device is ignored.
    fn install_ste(&mut self, sid: u32, ste: [u64; 2]) -> Result<(), BackendError>;

    /// Forward guest invalidation commands (CFGI_CD(_ALL), TLBI_NH_*, TLBI_NSNH_ALL),
    /// in order, as one batch.
    fn invalidate(&mut self, cmds: &[[u64; 2]]) -> Result<(), InvalidateError>;

    /// The guest enabled its event queue: start collecting events (idempotent).
    fn enable_events(&mut self) -> Result<(), BackendError>;

    /// Up to `max` pending events, without blocking.
    fn read_events(&mut self, max: usize) -> Vec<BackendEvent>;

    /// An fd readable while events are pending (once [`Self::enable_events`] made the
    /// source), for an event loop; `None`: poll [`Self::read_events`] instead.
    fn event_fd(&self) -> Option<std::os::fd::OwnedFd> {
        None
    }
}

/// A backend that records what it is asked, for unit tests of the emulation: StreamIDs
/// given at construction, an optional failure per call kind.
#[derive(Debug, Default)]
pub struct RecordingBackend {
    /// The StreamIDs it serves.
    pub sids: Vec<u32>,
    /// Every install, in order.
    pub installs: Vec<(u32, [u64; 2])>,
    /// Every forwarded batch, in order.
    pub batches: Vec<Vec<[u64; 2]>>,
    /// Events to hand out.
    pub events: std::collections::VecDeque<BackendEvent>,
    /// Whether `enable_events` was called.
    pub events_enabled: bool,
    /// Commands whose opcode is here fail with EIO (as the kernel's vIOMMU refuses).
    pub refuse_opcodes: Vec<u8>,
}

impl Smmuv3Backend for RecordingBackend {
    fn stream_ids(&self) -> Vec<u32> {
        self.sids.clone()
    }

    fn install_ste(&mut self, sid: u32, ste: [u64; 2]) -> Result<(), BackendError> {
        self.installs.push((sid, ste));
        Ok(())
    }

    fn invalidate(&mut self, cmds: &[[u64; 2]]) -> Result<(), InvalidateError> {
        let bad = cmds
            .iter()
            .position(|c| self.refuse_opcodes.contains(&((c[0] & 0xff) as u8)));
        let done = bad.unwrap_or(cmds.len());
        self.batches.push(cmds[..done].to_vec());
        match bad {
            Some(done) => Err(InvalidateError {
                done,
                errno: libc::EIO,
                message: "refused".into(),
            }),
            None => Ok(()),
        }
    }

    fn enable_events(&mut self) -> Result<(), BackendError> {
        self.events_enabled = true;
        Ok(())
    }

    fn read_events(&mut self, max: usize) -> Vec<BackendEvent> {
        let n = max.min(self.events.len());
        self.events.drain(..n).collect()
    }
}
