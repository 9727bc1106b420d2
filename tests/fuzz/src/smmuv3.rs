//! The guest-visible SMMUv3 as a guest drives it: MMIO accesses to its registers (the queues'
//! bases and producer indexes, CR0, GBPA, IRQ and GERROR registers, anything at any offset)
//! and arbitrary bytes written into guest RAM where the stream table, context descriptors
//! and command queue live, with host events arriving from the backend in between.
//!
//! Input: operations, each an opcode byte then its operands (`Input` reads zeros past the
//! end): 0 write a register (offset, 4 or 8 bytes), 1 read one, 2 write up to 255 bytes of
//! guest RAM, 3 a host event record (or an overflow) then the event service, 4 make the
//! backend refuse an invalidation opcode. At most 256 operations.
//!
//! Checked: no panic or arithmetic overflow; the backend is only ever asked to install STEs
//! for the StreamIDs it serves; registers read back as 32- or 64-bit values without panicking
//! on any offset or size.

use std::io;
use std::sync::{Arc, Mutex};

use devices::smmuv3::regs::MMIO_SIZE;
use devices::smmuv3::{
    BackendError, BackendEvent, HostSmmuInfo, InvalidateError, IrqLine, RecordingBackend, Smmuv3,
    Smmuv3Backend, Smmuv3Irqs,
};
use devices::BusDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::Input;

/// Guest RAM: 4 MiB from 0.
const RAM: u64 = 0x40_0000;
const MAX_OPS: usize = 256;
/// The StreamIDs behind the SMMU (the rig's disk and NIC).
const SIDS: [u32; 2] = [0x08, 0x10];

struct NoIrq;
impl IrqLine for NoIrq {
    fn trigger(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The recording backend, shared so the target can feed it events and look at its installs.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<RecordingBackend>>);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, RecordingBackend> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Smmuv3Backend for Shared {
    fn stream_ids(&self) -> Vec<u32> {
        self.lock().stream_ids()
    }
    fn install_ste(&mut self, sid: u32, ste: [u64; 2]) -> Result<(), BackendError> {
        self.lock().install_ste(sid, ste)
    }
    fn invalidate(&mut self, cmds: &[[u64; 2]]) -> Result<(), InvalidateError> {
        self.lock().invalidate(cmds)
    }
    fn enable_events(&mut self) -> Result<(), BackendError> {
        self.lock().enable_events()
    }
    fn read_events(&mut self, max: usize) -> Vec<BackendEvent> {
        self.lock().read_events(max)
    }
}

fn host() -> HostSmmuInfo {
    // QEMU's SMMU in the aarch64 rig.
    HostSmmuInfo {
        idr: [0x0d0c_303f, 0x0278_0410, 0, 0x400, 0, 0x55],
        iidr: 0x43b,
        aidr: 1,
    }
}

/// The fuzz target.
pub fn run(data: &[u8]) {
    drive(data);
}

/// Runs `data`; returns the STE installs the backend saw (for the seed checks).
fn drive(data: &[u8]) -> usize {
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]) else {
        return 0;
    };
    let backend = Shared::default();
    backend.lock().sids = SIDS.to_vec();
    let mut smmu = Smmuv3::new(
        mem.clone(),
        &host(),
        Box::new(backend.clone()),
        Smmuv3Irqs {
            eventq: Box::new(NoIrq),
            gerror: Box::new(NoIrq),
        },
    );
    let mut input = Input::new(data);
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % 5 {
            0 => {
                let offset = u64::from(input.u32()) % MMIO_SIZE;
                let value = input.u64();
                let size = if input.u8() & 1 == 0 { 4 } else { 8 };
                smmu.write(offset, &value.to_le_bytes()[..size]);
            }
            1 => {
                let offset = u64::from(input.u32()) % MMIO_SIZE;
                let size = [1usize, 2, 4, 8][usize::from(input.u8() % 4)];
                let mut buf = [0u8; 8];
                smmu.read(offset, &mut buf[..size]);
            }
            2 => {
                let addr = u64::from(input.u32()) % RAM;
                let len = usize::from(input.u8());
                let bytes = input.bytes(len);
                // Clipped at the end of RAM, as a guest cannot write past it.
                let room = usize::try_from(RAM - addr).unwrap_or(0).min(bytes.len());
                let _ = mem.write_slice(&bytes[..room], GuestAddress(addr));
            }
            3 => {
                let event = if input.u8() == 0xff {
                    BackendEvent::Lost
                } else {
                    BackendEvent::Record([input.u64(), input.u64(), input.u64(), input.u64()])
                };
                backend.lock().events.push_back(event);
                smmu.service_events();
            }
            _ => {
                let opcode = input.u8();
                backend.lock().refuse_opcodes.push(opcode);
            }
        }
    }
    let installs = &backend.lock().installs;
    for (sid, _) in installs {
        assert!(
            SIDS.contains(sid),
            "STE installed for StreamID {sid:#x}, not behind this SMMU"
        );
    }
    installs.len()
}

/// STE installs made by `data` (seed checks).
#[cfg(test)]
pub(crate) fn test_installs(data: &[u8]) -> usize {
    drive(data)
}
