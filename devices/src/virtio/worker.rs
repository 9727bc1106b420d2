//! The thread of an activated virtio device.
//!
//! A [`Worker`] owns one thread that waits (epoll) on the device's queue
//! eventfds and on a kill eventfd of its own. When a queue eventfd fires it
//! clears it and calls [`QueueHandler::handle_queue`]; when the kill
//! eventfd fires the thread returns. [`Worker::stop`] (also run on drop)
//! signals the kill eventfd and joins, so after a reset no thread of the
//! old activation touches guest memory or the queues any more.
//!
//! A handler that panics ends its thread (the panic is caught at join and
//! logged); the queues of that activation stop. That is a device-model bug,
//! never the result of guest input.
//!
//! What this module does not do: it has no timers and no rate limiting.

use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Epoll token of the kill eventfd (queue eventfds use their position).
const KILL_TOKEN: u64 = u64::MAX;

/// Errors starting a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// An eventfd or epoll instance could not be created or registered.
    #[error(
        "cannot set up the event loop of {device}: {source}; check the process's open file \
         limit (ulimit -n)"
    )]
    Events {
        /// Device name.
        device: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The thread could not be spawned.
    #[error("cannot start the {device} thread: {source}; check the process and memory limits")]
    Spawn {
        /// Device name.
        device: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Run first on every worker thread, before it touches a queue; an error stops that device.
static START_HOOK: OnceLock<fn() -> Result<(), String>> = OnceLock::new();

/// Sets the function every worker thread runs first (the VMM installs the thread's seccomp
/// filter there). Only the first call takes effect.
pub fn set_start_hook(hook: fn() -> Result<(), String>) {
    let _ = START_HOOK.set(hook);
}

/// What a device does when one of its queues is notified.
pub trait QueueHandler: Send + 'static {
    /// Queue number `position` (its place in the list given to
    /// [`Worker::spawn`]) was notified.
    fn handle_queue(&mut self, position: usize);
}

/// A running device thread.
#[derive(Debug)]
pub struct Worker {
    device: &'static str,
    kill: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts a thread named `device` that calls `handler` whenever one of
    /// `queue_events` is signalled.
    pub fn spawn<H: QueueHandler>(
        device: &'static str,
        queue_events: Vec<EventFd>,
        mut handler: H,
    ) -> Result<Self, WorkerError> {
        let events = |source| WorkerError::Events { device, source };
        let kill = EventFd::new(libc::EFD_NONBLOCK).map_err(events)?;
        let epoll = Epoll::new().map_err(events)?;
        let tokens = queue_events
            .iter()
            .enumerate()
            .map(|(i, e)| (e.as_raw_fd(), i as u64))
            .chain(std::iter::once((kill.as_raw_fd(), KILL_TOKEN)));
        for (fd, token) in tokens {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(events)?;
        }
        let thread_kill = kill.try_clone().map_err(events)?;
        let thread = std::thread::Builder::new()
            .name(device.to_string())
            .spawn(move || {
                if let Some(Err(e)) = START_HOOK.get().map(|hook| hook()) {
                    log::error!("{device}: {e}; the device stops");
                    return;
                }
                run(device, &epoll, &thread_kill, &queue_events, &mut handler);
            })
            .map_err(|source| WorkerError::Spawn { device, source })?;
        Ok(Self {
            device,
            kill,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it. Idempotent.
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if let Err(e) = self.kill.write(1) {
            // Cannot happen short of a counter overflow; joining would hang.
            log::error!(
                "{}: cannot signal the worker thread to stop ({e}); leaving it running",
                self.device
            );
            return;
        }
        if thread.join().is_err() {
            log::error!(
                "{}: the worker thread had panicked (device model bug); its queues were stopped",
                self.device
            );
        }
    }

    /// Whether the thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The thread's loop: wait, clear the fired eventfds, dispatch.
fn run<H: QueueHandler>(
    device: &'static str,
    epoll: &Epoll,
    kill: &EventFd,
    queue_events: &[EventFd],
    handler: &mut H,
) {
    let mut ready = vec![EpollEvent::default(); queue_events.len() + 1];
    loop {
        let n = match epoll.wait(-1, &mut ready) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("{device}: waiting for queue events failed ({e}); the device stops");
                return;
            }
        };
        for event in &ready[..n] {
            let token = event.data();
            if token == KILL_TOKEN {
                let _ = kill.read();
                return;
            }
            let Some(queue_event) = usize::try_from(token)
                .ok()
                .and_then(|i| queue_events.get(i).map(|e| (i, e)))
            else {
                continue;
            };
            // Clear the count; a notification that arrives after this read
            // fires the eventfd again.
            let _ = queue_event.1.read();
            handler.handle_queue(queue_event.0);
        }
    }
}

/// Activates a device served by one worker thread on its queue 0 (virtio-blk, virtio-rng):
/// refuses a second activation, takes queue 0 from `queues`, and spawns the worker with the
/// handler `make` builds around the active queue.
pub fn activate_single_queue<H: QueueHandler>(
    worker: &mut Option<Worker>,
    device: &'static str,
    device_type: u32,
    mem: vm_memory::GuestMemoryMmap,
    mut queues: Vec<crate::virtio::device::DeviceQueue>,
    interrupt: std::sync::Arc<dyn crate::virtio::device::VirtioInterrupt>,
    make: impl FnOnce(crate::virtio::queue::ActiveQueue) -> H,
) -> Result<(), crate::virtio::device::ActivateError> {
    use crate::virtio::device::ActivateError;
    if worker.is_some() {
        return Err(ActivateError::AlreadyActive { device });
    }
    let Some(position) = queues.iter().position(|q| q.index == 0) else {
        return Err(ActivateError::MissingQueue { device, index: 0 });
    };
    let q = queues.swap_remove(position);
    let queue = crate::virtio::queue::ActiveQueue::new(
        crate::virtio::type_name(device_type),
        q.index,
        q.queue,
        mem,
        interrupt,
    );
    *worker = Some(Worker::spawn(device, vec![q.event], make(queue))?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    struct Forward(mpsc::Sender<usize>);

    impl QueueHandler for Forward {
        fn handle_queue(&mut self, position: usize) {
            let _ = self.0.send(position);
        }
    }

    #[test]
    fn dispatches_and_stops() {
        let events: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let kick0 = events[0].try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        let mut worker = Worker::spawn("test-worker", events, Forward(tx)).unwrap();
        assert!(worker.is_running());
        kick0.write(1).unwrap();
        kick0.write(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(0));
        worker.stop();
        assert!(!worker.is_running());
        worker.stop();
        // The thread is gone, so the handler (and its sender) was dropped.
        while rx.try_recv().is_ok() {}
        assert!(matches!(
            rx.recv_timeout(Duration::from_millis(10)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        ));
    }

    #[test]
    fn drop_joins() {
        let (tx, rx) = mpsc::channel();
        let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let kick = event.try_clone().unwrap();
        {
            let _worker = Worker::spawn("test-worker", vec![event], Forward(tx)).unwrap();
            kick.write(1).unwrap();
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(0));
        }
        assert!(matches!(
            rx.recv_timeout(Duration::from_millis(10)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        ));
    }
}
