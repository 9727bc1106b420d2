//! A 16550A UART (COM1) whose output goes to stdout, a file or nowhere.
//!
//! The register model is `vm_superio::Serial`; this module adapts it to a
//! [`BusDevice`] over 8 ports (usually 0x3f8..=0x3ff) and raises its
//! interrupt by writing to an eventfd, which the VMM registers as a KVM
//! irqfd (GSI 4 for COM1).
//!
//! Every transmitted byte is written and flushed at once (vm-superio flushes
//! after each byte), so whoever reads the VMM's stdout sees guest output
//! promptly.
//!
//! What this module does not do: it does not read stdin. The VMM feeds
//! input bytes with [`Serial::enqueue_input`] when it has any.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

use vm_superio::serial::{Error as UartError, NoEvents};
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Base port of COM1 on the port-I/O bus.
pub const SERIAL_PORT_BASE: u64 = 0x3f8;
/// Number of UART registers, i.e. the length of the port range.
pub const SERIAL_PORT_LEN: u64 = 8;
/// The legacy IRQ (and KVM GSI) of COM1.
pub const SERIAL_IRQ: u32 = 4;

/// Errors from the serial device.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The output file could not be created.
    #[error(
        "cannot create serial output file {path}: {source}; check that its directory exists \
         and is writable, or send serial output to stdout or turn it off"
    )]
    OpenFile {
        /// The file that was asked for.
        path: PathBuf,
        /// Why opening failed.
        #[source]
        source: io::Error,
    },
    /// The interrupt eventfd could not be signalled.
    #[error(
        "cannot signal the serial interrupt eventfd: {0}; the guest will miss a serial \
         interrupt, check that the eventfd is still open"
    )]
    Interrupt(#[source] io::Error),
}

/// Where the guest's serial output goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SerialOutput {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// A file, created or truncated when the device is built.
    File(PathBuf),
    /// Discarded.
    Off,
}

impl SerialOutput {
    /// Opens the writer for this output.
    fn open(&self) -> Result<Box<dyn Write + Send>, SerialError> {
        Ok(match self {
            SerialOutput::Stdout => Box::new(io::stdout()),
            SerialOutput::File(path) => {
                Box::new(File::create(path).map_err(|source| SerialError::OpenFile {
                    path: path.clone(),
                    source,
                })?)
            }
            SerialOutput::Off => Box::new(io::sink()),
        })
    }
}

/// A [`Trigger`] that signals an eventfd (registered by the VMM as an irqfd).
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }

    /// Returns the wrapped eventfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> Result<(), io::Error> {
        self.0.write(1)
    }
}

/// The UART register model this device wraps.
type Uart = vm_superio::Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>;

const IER_REG: u8 = 1;
const LCR_REG: u8 = 3;
const IER_THR_EMPTY: u8 = 0x02;
const LCR_DLAB: u8 = 0x80;

/// A 16550A UART on the port-I/O or MMIO bus.
pub struct Serial {
    uart: Uart,
    /// LCR bit 7 (divisor latch access) as the guest last wrote it: with it set, offset 1
    /// is the divisor's high byte, not IER.
    dlab: bool,
    /// Set after the first output error, so a closed stdout logs one warning
    /// rather than one per guest byte.
    output_failed: bool,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial")
            .field("interrupt", self.uart.interrupt_evt())
            .field("output_failed", &self.output_failed)
            .finish_non_exhaustive()
    }
}

impl Serial {
    /// Creates a UART writing to `output` and signalling `interrupt` when it
    /// raises its IRQ. Fails if `output` is a file that cannot be created.
    pub fn new(output: &SerialOutput, interrupt: EventFd) -> Result<Self, SerialError> {
        Ok(Self::with_writer(interrupt, output.open()?))
    }

    /// Creates a UART writing to any writer (for tests and custom sinks).
    pub fn with_writer(interrupt: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Uart::new(EventFdTrigger::new(interrupt), out),
            dlab: false,
            output_failed: false,
        }
    }

    /// Returns the interrupt eventfd, for the VMM to register as an irqfd.
    pub fn interrupt_evt(&self) -> &EventFd {
        self.uart.interrupt_evt().eventfd()
    }

    /// Returns how many input bytes the receive FIFO can still take.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues bytes for the guest to read (e.g. from stdin) and raises the
    /// receive interrupt if the guest enabled it.
    ///
    /// Returns how many bytes were accepted: fewer than `input.len()`, or 0,
    /// when the FIFO fills up; the caller should offer the rest later.
    pub fn enqueue_input(&mut self, input: &[u8]) -> Result<usize, SerialError> {
        match self.uart.enqueue_raw_bytes(input) {
            Ok(n) => Ok(n),
            Err(UartError::FullFifo) => Ok(0),
            Err(UartError::Trigger(e)) => Err(SerialError::Interrupt(e)),
            // enqueue_raw_bytes never writes output, but stay total.
            Err(UartError::IOError(e)) => Err(SerialError::Interrupt(e)),
        }
    }

    /// Logs a failed register write; never fails the guest access.
    fn report(&mut self, err: UartError<io::Error>) {
        match err {
            UartError::IOError(e) if !self.output_failed => {
                self.output_failed = true;
                log::warn!("cannot write guest serial output, dropping it: {e}");
            }
            UartError::IOError(e) => log::debug!("serial output dropped: {e}"),
            UartError::Trigger(e) => log::warn!("{}", SerialError::Interrupt(e)),
            UartError::FullFifo => {}
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(reg), [byte]) if u64::from(reg) < SERIAL_PORT_LEN => *byte = self.uart.read(reg),
            (_, data) => {
                log::debug!(
                    "serial: ignoring {}-byte read at offset {offset}",
                    data.len()
                );
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (u8::try_from(offset), data) {
            (Ok(reg), [byte]) if u64::from(reg) < SERIAL_PORT_LEN => {
                if let Err(e) = self.uart.write(reg, *byte) {
                    self.report(e);
                }
                // A real 16550 drives a level interrupt line: enabling the THR-empty
                // interrupt while the transmitter is empty (always, here) asserts it at once.
                // vm-superio only pulses the line when its IIR bit was clear, and KVM's irqfd
                // delivers edges, so after Linux's console masks IER for a printk and
                // restores it, the tty's pending transmit would wait forever for an edge that
                // never comes (seen in the rig: L2 user output stopped mid-line). Pulse again.
                if reg == LCR_REG {
                    self.dlab = byte & LCR_DLAB != 0;
                }
                if reg == IER_REG && byte & IER_THR_EMPTY != 0 && !self.dlab {
                    if let Err(e) = self.interrupt_evt().write(1) {
                        log::warn!("serial: cannot signal the THR-empty interrupt: {e}");
                    }
                }
            }
            _ => log::debug!(
                "serial: ignoring {}-byte write at offset {offset}",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reenabling_thr_interrupt_pulses_even_if_iir_still_pending() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut s = Serial::with_writer(evt.try_clone().unwrap(), Box::new(std::io::sink()));
        s.write(IER, &[0x02]);
        // vm-superio's pulse and ours may both count.
        assert!(evt.read().unwrap() >= 1);
        // Console masks IER, writes polled, restores IER: the guest never read IIR, so the
        // THRE condition is still "pending" in the model; the line must pulse again.
        s.write(IER, &[0x00]);
        s.write(THR, b"x");
        s.write(IER, &[0x02]);
        assert!(evt.read().unwrap() >= 1);
        // With DLAB set, offset 1 is the divisor: no interrupt.
        s.write(3, &[0x80]);
        s.write(IER, &[0x02]);
        assert!(evt.read().is_err());
        s.write(3, &[0x03]);
    }
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const THR: u64 = 0;
    const RBR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LSR: u64 = 5;
    const IER_RDA: u8 = 0x01;
    const IER_THRE: u8 = 0x02;
    const LSR_DATA_READY: u8 = 0x01;
    const LSR_THR_EMPTY: u8 = 0x20;
    const LSR_IDLE: u8 = 0x40;

    /// An in-memory sink whose contents the test can inspect.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A writer that always fails, like a closed pipe.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn serial() -> (Serial, SharedBuf, EventFd) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = evt.try_clone().unwrap();
        let buf = SharedBuf::default();
        (Serial::with_writer(evt, Box::new(buf.clone())), buf, irq)
    }

    fn read_reg(serial: &mut Serial, offset: u64) -> u8 {
        let mut data = [0u8];
        serial.read(offset, &mut data);
        data[0]
    }

    #[test]
    fn thr_write_reaches_the_writer() {
        let (mut serial, buf, _irq) = serial();
        for b in b"hi\n" {
            serial.write(THR, &[*b]);
        }
        assert_eq!(&*buf.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn lsr_reports_transmitter_empty() {
        let (mut serial, _buf, _irq) = serial();
        let lsr = read_reg(&mut serial, LSR);
        assert_eq!(lsr & (LSR_THR_EMPTY | LSR_IDLE), LSR_THR_EMPTY | LSR_IDLE);
        assert_eq!(lsr & LSR_DATA_READY, 0);
    }

    #[test]
    fn thr_empty_interrupt_signals_eventfd() {
        let (mut serial, _buf, irq) = serial();
        // No interrupt while IER is clear.
        serial.write(THR, b"x");
        assert!(irq.read().is_err());
        // Enabling THRE raises it at once (THR is always empty) ...
        serial.write(IER, &[IER_THRE]);
        assert!(irq.read().unwrap() >= 1);
        // Reading IIR reports and acknowledges it ...
        assert_eq!(read_reg(&mut serial, IIR) & 0x0f, 0x02);
        assert_eq!(read_reg(&mut serial, IIR) & 0x0f, 0x01);
        // ... and it fires again after the next transmitted byte.
        serial.write(THR, b"y");
        assert_eq!(irq.read().unwrap(), 1);
    }

    #[test]
    fn input_is_readable_and_interrupts() {
        let (mut serial, _buf, irq) = serial();
        serial.write(IER, &[IER_RDA]);
        assert_eq!(serial.enqueue_input(b"ok").unwrap(), 2);
        assert_eq!(irq.read().unwrap(), 1);
        assert_ne!(read_reg(&mut serial, LSR) & LSR_DATA_READY, 0);
        assert_eq!(read_reg(&mut serial, RBR), b'o');
        assert_eq!(read_reg(&mut serial, RBR), b'k');
        assert_eq!(read_reg(&mut serial, LSR) & LSR_DATA_READY, 0);
    }

    #[test]
    fn full_fifo_accepts_nothing() {
        let (mut serial, _buf, _irq) = serial();
        let cap = serial.input_capacity();
        let big = vec![b'a'; cap + 10];
        assert_eq!(serial.enqueue_input(&big).unwrap(), cap);
        assert_eq!(serial.input_capacity(), 0);
        assert_eq!(serial.enqueue_input(b"b").unwrap(), 0);
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let (mut serial, buf, _irq) = serial();
        let mut wide = [0u8; 2];
        serial.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
        let mut one = [0u8];
        serial.read(8, &mut one);
        serial.read(u64::MAX, &mut one);
        serial.read(0, &mut []);
        serial.write(0, &[1, 2]);
        serial.write(300, &[1]);
        serial.write(0, &[]);
        assert!(buf.0.lock().unwrap().is_empty());
    }

    #[test]
    fn broken_output_is_not_fatal() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut serial = Serial::with_writer(evt, Box::new(Broken));
        serial.write(THR, b"a");
        serial.write(THR, b"b");
        assert!(serial.output_failed);
    }

    #[test]
    fn file_output_is_created_and_truncated() {
        let path = std::env::temp_dir().join(format!("devices-serial-{}.log", std::process::id()));
        std::fs::write(&path, b"old contents").unwrap();
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut serial = Serial::new(&SerialOutput::File(path.clone()), evt).unwrap();
        serial.write(THR, b"z");
        drop(serial);
        assert_eq!(std::fs::read(&path).unwrap(), b"z");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn unopenable_file_names_the_path() {
        let path = PathBuf::from("/nonexistent-dir/serial.log");
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let err = Serial::new(&SerialOutput::File(path), evt).unwrap_err();
        assert!(matches!(err, SerialError::OpenFile { .. }));
        assert!(err.to_string().contains("/nonexistent-dir/serial.log"));
    }

    #[test]
    fn off_discards_output() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut serial = Serial::new(&SerialOutput::Off, evt).unwrap();
        serial.write(THR, b"gone");
        assert_ne!(read_reg(&mut serial, LSR) & LSR_THR_EMPTY, 0);
    }
}
