//! The API server: a Unix socket guarded by a lock file, served by one thread with one
//! `poll` loop over the listener, the connections and a stop eventfd.
//!
//! One thread, no thread per connection and no async runtime, so the thread's syscalls are
//! few (poll, accept4, read, write, close, and the handler's channel) and a seccomp filter
//! can name them. Requests are answered one at a time in arrival order; a handler that
//! blocks (a hotplug waiting for the guest) holds the other connections until it answers.
//!
//! The socket path is owned through `PATH.lock` (flock): a VMM that holds it serves the
//! path; a socket file left by a VMM that died is stale and replaced. The lock file is never
//! removed, so two VMMs cannot end up holding locks on different inodes of it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::connection::{serve_buffer, write_result, RequestHandler};
use crate::response::ApiError;

/// Most connections served at once; one more gets 503 and is closed.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection whose unsent answers pass this stops being read until the client reads.
const MAX_PENDING_OUTPUT: usize = 256 * 1024;
/// A connection that sends and receives nothing for this long is closed, so idle clients
/// cannot hold every connection slot.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors setting up the API socket.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// The lock file could not be opened.
    #[error("--api-socket {path}: cannot open the lock file {lock}: {source}")]
    Lock {
        /// The socket path.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Another live process holds the lock.
    #[error(
        "--api-socket {0}: another VMM is serving this socket{1}; stop it or choose another path"
    )]
    InUse(PathBuf, String),
    /// Something that is not a socket is in the way.
    #[error(
        "--api-socket {0}: the path exists and is not a socket; remove it or choose another path"
    )]
    NotASocket(PathBuf),
    /// The stale socket could not be removed, or the new one bound.
    #[error("--api-socket {0}: {1}")]
    Bind(PathBuf, std::io::Error),
    /// The thread or its eventfd could not be created.
    #[error("cannot start the API thread: {0}")]
    Thread(std::io::Error),
    /// The thread's start hook (its seccomp filter) failed; the thread did not serve.
    #[error("cannot start the API thread: {0}")]
    Start(String),
}

/// A bound API socket, not yet served.
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    idle_timeout: Duration,
    _lock: File,
}

/// The path of the lock file that guards `socket`.
pub fn lock_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

impl ApiServer {
    /// Takes the lock for `path`, replaces a stale socket there and binds a new one.
    pub fn bind(path: &Path) -> Result<ApiServer, ApiServerError> {
        let lock = lock_path(path);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock)
            .map_err(|source| ApiServerError::Lock {
                path: path.to_path_buf(),
                lock: lock.clone(),
                source,
            })?;
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.chars().all(|c| c.is_ascii_digit()) && !holder.is_empty() {
                format!(" (pid {holder})")
            } else {
                String::new()
            };
            return Err(ApiServerError::InUse(path.to_path_buf(), who));
        }
        // Best effort: the pid only makes the InUse message more helpful.
        let _ = file.set_len(0);
        let _ = write!(file, "{}", std::process::id());
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                log::info!("--api-socket {}: replacing a stale socket", path.display());
                std::fs::remove_file(path)
                    .map_err(|e| ApiServerError::Bind(path.to_path_buf(), e))?;
            }
            Ok(_) => return Err(ApiServerError::NotASocket(path.to_path_buf())),
            Err(_) => {}
        }
        let listener =
            UnixListener::bind(path).map_err(|e| ApiServerError::Bind(path.to_path_buf(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ApiServerError::Bind(path.to_path_buf(), e))?;
        Ok(ApiServer {
            listener,
            path: path.to_path_buf(),
            idle_timeout: IDLE_TIMEOUT,
            _lock: file,
        })
    }

    /// Closes connections idle for `timeout` instead of [`IDLE_TIMEOUT`].
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves on a new thread named `vmm_api` until [`ApiThread::stop`].
    pub fn spawn<H: RequestHandler + Send + 'static>(
        self,
        handler: H,
    ) -> Result<ApiThread, ApiServerError> {
        self.spawn_with(handler, || Ok(()))
    }

    /// Like [`ApiServer::spawn`], with `on_start` run first on the new thread (the VMM
    /// installs the thread's seccomp filter there, before any request is read). If it
    /// fails, the thread ends without serving and its error is returned here.
    pub fn spawn_with<H, S>(self, handler: H, on_start: S) -> Result<ApiThread, ApiServerError>
    where
        H: RequestHandler + Send + 'static,
        S: FnOnce() -> Result<(), String> + Send + 'static,
    {
        let stop = EventFd::new(EFD_NONBLOCK).map_err(ApiServerError::Thread)?;
        let stop_thread = stop.try_clone().map_err(ApiServerError::Thread)?;
        let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("vmm_api".into())
            .spawn(move || {
                let started = on_start();
                let ok = started.is_ok();
                let _ = started_tx.send(started);
                if ok {
                    let mut handler = handler;
                    self.run(&mut handler, &stop_thread)
                }
            })
            .map_err(ApiServerError::Thread)?;
        match started_rx.recv() {
            Ok(Ok(())) => Ok(ApiThread { stop, thread }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(ApiServerError::Start(e))
            }
            Err(_) => {
                let _ = thread.join();
                Err(ApiServerError::Start(
                    "the API thread ended before it started serving".into(),
                ))
            }
        }
    }

    /// Serves until `stop` becomes readable.
    pub fn run(&self, handler: &mut dyn RequestHandler, stop: &EventFd) {
        let mut conns: Vec<Connection> = Vec::new();
        let mut fds: Vec<libc::pollfd> = Vec::new();
        loop {
            fds.clear();
            for fd in [stop.as_raw_fd(), self.listener.as_raw_fd()] {
                fds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            for c in &conns {
                let mut events = 0;
                if !c.closing && c.output.len() < MAX_PENDING_OUTPUT {
                    events |= libc::POLLIN;
                }
                if !c.output.is_empty() {
                    events |= libc::POLLOUT;
                }
                fds.push(libc::pollfd {
                    fd: c.stream.as_raw_fd(),
                    events,
                    revents: 0,
                });
            }
            // Wake when the oldest idle connection is due to be closed.
            let timeout_ms = conns
                .iter()
                .map(|c| {
                    (c.last_active + self.idle_timeout).saturating_duration_since(Instant::now())
                })
                .min()
                .map_or(-1, |d| {
                    d.as_millis().saturating_add(1).min(i32::MAX as u128) as i32
                });
            // SAFETY: `fds` is a valid array of fds.len() pollfd structs for the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("API: poll failed, the API stops: {e}");
                return;
            }
            if fds[0].revents != 0 {
                return;
            }
            for (c, p) in conns.iter_mut().zip(&fds[2..]) {
                if p.revents != 0 {
                    c.service(p.revents, handler);
                }
            }
            let now = Instant::now();
            conns.retain(|c| !c.dead && now.duration_since(c.last_active) < self.idle_timeout);
            if fds[1].revents != 0 {
                self.accept_all(&mut conns);
            }
        }
    }

    fn accept_all(&self, conns: &mut Vec<Connection>) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if conns.len() >= MAX_CONNECTIONS {
                        let mut out = Vec::new();
                        let e = ApiError::new(
                            503,
                            format!("too many API connections (at most {MAX_CONNECTIONS}): close one and retry"),
                        );
                        write_result(&mut out, &Err(e), true);
                        let _ = (&stream).write(&out);
                        continue;
                    }
                    conns.push(Connection {
                        stream,
                        input: Vec::new(),
                        output: Vec::new(),
                        closing: false,
                        dead: false,
                        last_active: Instant::now(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and the like: leave the rest in the backlog for the next turn.
                    log::warn!("API: accept failed: {e}");
                    return;
                }
            }
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // We hold the lock, so the socket at the path is ours.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One client.
struct Connection {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// No more requests are read; close once `output` is sent.
    closing: bool,
    dead: bool,
    /// When bytes last moved either way.
    last_active: Instant,
}

impl Connection {
    fn service(&mut self, revents: libc::c_short, handler: &mut dyn RequestHandler) {
        if revents & libc::POLLIN != 0 || revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            self.read(handler);
        }
        self.flush();
    }

    fn read(&mut self, handler: &mut dyn RequestHandler) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    // The client is done sending; answer what it sent, then close.
                    self.closing = true;
                    if !self.input.is_empty() {
                        serve_buffer(&mut self.input, &mut self.output, handler);
                    }
                    if self.output.is_empty() {
                        self.dead = true;
                    }
                    return;
                }
                Ok(n) => {
                    self.last_active = Instant::now();
                    self.input.extend_from_slice(&buf[..n]);
                    if serve_buffer(&mut self.input, &mut self.output, handler) {
                        self.closing = true;
                        return;
                    }
                    if self.output.len() >= MAX_PENDING_OUTPUT {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
    }

    fn flush(&mut self) {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(0) => {
                    self.dead = true;
                    return;
                }
                Ok(n) => {
                    self.last_active = Instant::now();
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
        if self.closing {
            self.dead = true;
        }
    }
}

/// The running API thread.
pub struct ApiThread {
    stop: EventFd,
    thread: JoinHandle<()>,
}

impl ApiThread {
    /// Stops serving (after the answer in hand is queued) and joins the thread; the socket
    /// file is removed.
    pub fn stop(self) {
        let _ = self.stop.write(1);
        if self.thread.join().is_err() {
            log::error!("the API thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ApiClient;
    use crate::request::ApiRequest;
    use crate::response::{ApiReply, ApiResult};

    struct Pong;
    impl RequestHandler for Pong {
        fn handle(&mut self, _: ApiRequest) -> ApiResult {
            Ok(ApiReply::NoContent)
        }
    }

    fn socket(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("api-server-{}-{name}.sock", std::process::id()))
    }

    #[test]
    fn idle_connections_are_closed_and_busy_ones_kept() {
        let path = socket("idle");
        let server = ApiServer::bind(&path)
            .unwrap()
            .with_idle_timeout(Duration::from_millis(200));
        let thread = server.spawn(Pong).unwrap();
        let mut idle = ApiClient::connect(&path).unwrap();
        let mut busy = ApiClient::connect(&path).unwrap();
        for _ in 0..8 {
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(busy.call("GET", "/vmm.ping", None).unwrap().status, 204);
        }
        // 400 ms without a byte: the server has closed the idle one.
        assert!(idle.call("GET", "/vmm.ping", None).is_err());
        thread.stop();
        assert!(!path.exists());
    }

    #[test]
    fn the_lock_keeps_a_second_server_off_a_live_socket() {
        let path = socket("lock");
        let first = ApiServer::bind(&path).unwrap();
        let e = ApiServer::bind(&path).err().unwrap();
        assert!(matches!(e, ApiServerError::InUse(..)), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(first);
        // Released: the next one binds (the socket file was removed, the lock file stays).
        assert!(lock_path(&path).exists());
        let again = ApiServer::bind(&path).unwrap();
        assert!(path.exists());
        drop(again);
        let _ = std::fs::remove_file(lock_path(&path));
    }
}
