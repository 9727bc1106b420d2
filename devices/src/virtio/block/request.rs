//! One virtio-blk request: parse the header, check it, run it against the
//! disk and write the status byte.
//!
//! Layout (any split into descriptors works): the device-readable bytes
//! start with the 16-byte header (`type`, reserved, `sector`), followed by
//! the data of a write; the device-writable bytes are the data of a read
//! (or the ID of GET_ID) followed by the status byte, which is the last
//! writable byte.
//!
//! | request  | does                                   | status on failure |
//! |----------|----------------------------------------|-------------------|
//! | IN (0)   | reads sectors into the guest           | IOERR             |
//! | OUT (1)  | writes sectors (IOERR if read-only)    | IOERR             |
//! | FLUSH (4)| `fdatasync` of the image               | IOERR             |
//! | GET_ID (8)| the 20-byte ID (as much as fits)      | IOERR             |
//! | others   | nothing                                | UNSUPP            |
//!
//! A request whose data length is not a multiple of 512 or whose sectors
//! run past the capacity fails with IOERR. The used length is the number
//! of bytes written to the guest: data (on success) plus the status byte.
//! A chain with no writable byte cannot be answered: it is returned with
//! length 0 and logged.
//!
//! What this module does not do: DISCARD, WRITE_ZEROES and the other
//! optional requests (they answer UNSUPP).

use vm_memory::{GuestMemory, GuestMemoryError};

use super::disk::{DiskFile, ID_BYTES, SECTOR_SIZE};
use crate::virtio::chain::{GuestBuffer, RequestBuffers};
use crate::virtio::queue::LogBudget;

/// Request type: read sectors.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write sectors.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: flush the write cache.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: get the device ID.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: the request failed.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: the request type is not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// Bytes of the request header.
pub const HEADER_LEN: u64 = 16;

/// Why a request failed. Guest mistakes and host I/O errors alike; the
/// guest sees the status byte, the host log sees the message.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Fewer than 16 readable bytes.
    #[error("request {head} has {len} readable bytes, fewer than the 16-byte header")]
    ShortHeader {
        /// Head index.
        head: u16,
        /// Readable bytes.
        len: u64,
    },
    /// A type this device does not implement.
    #[error("request {head} has type {kind}, which this device does not support")]
    Unsupported {
        /// Head index.
        head: u16,
        /// The type.
        kind: u32,
    },
    /// Data that is not whole sectors.
    #[error("request {head} moves {len} bytes, not a multiple of 512")]
    PartialSector {
        /// Head index.
        head: u16,
        /// Data bytes.
        len: u64,
    },
    /// Sectors past the end of the disk.
    #[error(
        "request {head} touches {len} bytes at sector {sector}, past the end of the \
         {sectors}-sector disk"
    )]
    OutOfRange {
        /// Head index.
        head: u16,
        /// First sector.
        sector: u64,
        /// Data bytes.
        len: u64,
        /// Disk capacity.
        sectors: u64,
    },
    /// A write to a read-only disk.
    #[error("request {head} writes to a read-only disk")]
    ReadOnly {
        /// Head index.
        head: u16,
    },
    /// Moving data between the image and guest memory failed.
    #[error("request {head}: {what} failed: {source}")]
    Io {
        /// Head index.
        head: u16,
        /// "read", "write", "flush" or "GET_ID".
        what: &'static str,
        /// Why.
        #[source]
        source: GuestMemoryError,
    },
}

impl RequestError {
    /// The status byte the guest gets.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported { .. } => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// What a parsed request does.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    In,
    Out,
    Flush,
    GetId,
}

/// A parsed request.
#[derive(Debug)]
struct Request {
    head: u16,
    kind: Kind,
    sector: u64,
    /// The data: device-writable for IN and GET_ID, readable for OUT.
    data: GuestBuffer,
}

impl Request {
    /// Reads the header; `readable` and `writable` are the request's
    /// buffers, the status byte already taken off `writable`.
    fn parse<M: GuestMemory>(
        mem: &M,
        head: u16,
        mut readable: GuestBuffer,
        writable: GuestBuffer,
    ) -> Result<Self, RequestError> {
        if readable.len() < HEADER_LEN {
            return Err(RequestError::ShortHeader {
                head,
                len: readable.len(),
            });
        }
        let payload = readable.split_off(HEADER_LEN);
        let mut header = [0u8; HEADER_LEN as usize];
        readable
            .read_bytes(mem, &mut header)
            .map_err(|source| RequestError::Io {
                head,
                what: "reading the header",
                source,
            })?;
        let mut kind_bytes = [0u8; 4];
        kind_bytes.copy_from_slice(&header[0..4]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);
        let (kind, data) = match u32::from_le_bytes(kind_bytes) {
            VIRTIO_BLK_T_IN => (Kind::In, writable),
            VIRTIO_BLK_T_OUT => (Kind::Out, payload),
            VIRTIO_BLK_T_FLUSH => (Kind::Flush, GuestBuffer::default()),
            VIRTIO_BLK_T_GET_ID => (Kind::GetId, writable),
            kind => return Err(RequestError::Unsupported { head, kind }),
        };
        Ok(Self {
            head,
            kind,
            sector,
            data,
        })
    }

    /// The byte offset of the data on the disk, checked against its size.
    fn disk_offset(&self, disk: &DiskFile) -> Result<u64, RequestError> {
        let head = self.head;
        let len = self.data.len();
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(RequestError::PartialSector { head, len });
        }
        let out_of_range = || RequestError::OutOfRange {
            head,
            sector: self.sector,
            len,
            sectors: disk.sectors(),
        };
        let offset = self
            .sector
            .checked_mul(SECTOR_SIZE)
            .ok_or_else(out_of_range)?;
        match offset.checked_add(len) {
            Some(end) if end <= disk.size() => Ok(offset),
            _ => Err(out_of_range()),
        }
    }

    /// Runs the request; returns the data bytes written to the guest.
    fn execute<M: GuestMemory>(&self, mem: &M, disk: &DiskFile) -> Result<u64, RequestError> {
        let head = self.head;
        let io = |what| move |source| RequestError::Io { head, what, source };
        match self.kind {
            Kind::In => {
                let offset = self.disk_offset(disk)?;
                disk.read(mem, offset, &self.data).map_err(io("read"))?;
                Ok(self.data.len())
            }
            Kind::Out => {
                if disk.readonly() {
                    return Err(RequestError::ReadOnly { head });
                }
                let offset = self.disk_offset(disk)?;
                disk.write(mem, offset, &self.data).map_err(io("write"))?;
                Ok(0)
            }
            Kind::Flush => {
                if !disk.readonly() {
                    disk.flush()
                        .map_err(|e| io("flush")(GuestMemoryError::IOError(e)))?;
                }
                Ok(0)
            }
            Kind::GetId => {
                let n = self.data.len().min(ID_BYTES as u64);
                let mut id = self.data.clone();
                id.split_off(n);
                id.write_bytes(mem, &disk.id()[..n as usize])
                    .map_err(io("GET_ID"))?;
                Ok(n)
            }
        }
    }
}

/// Runs the request in `buffers` against `disk` and writes its status.
/// Returns the used length. Failures are logged within `errors`' budget.
pub fn process<M: GuestMemory>(
    mem: &M,
    disk: &DiskFile,
    buffers: RequestBuffers,
    errors: &mut LogBudget,
) -> u32 {
    let RequestBuffers {
        head,
        readable,
        mut writable,
    } = buffers;
    let path = disk.path().display();
    if writable.is_empty() {
        if let Some(n) = errors.spend() {
            log::warn!(
                "virtio-blk {path}: request {head} has no writable byte for the status; it is \
                 returned unanswered ({n} failed requests so far)"
            );
        }
        return 0;
    }
    let status_byte = writable.split_off(writable.len() - 1);
    let result =
        Request::parse(mem, head, readable, writable).and_then(|req| req.execute(mem, disk));
    let (status, written) = match result {
        Ok(written) => (VIRTIO_BLK_S_OK, written),
        Err(e) => {
            if let Some(n) = errors.spend() {
                log::warn!("virtio-blk {path}: {e} ({n} failed requests so far)");
            }
            (e.status(), 0)
        }
    };
    if let Err(e) = status_byte.write_bytes(mem, &[status]) {
        // The byte was checked to be in RAM: only a shrunk RAM gets here.
        log::warn!("virtio-blk {path}: cannot write the status of request {head}: {e}");
        return 0;
    }
    // A chain holds less than 4 GiB (virtio-queue stops at that), so the
    // length fits; saturate rather than trust that.
    u32::try_from(written + 1).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    use crate::virtio::block::config::DiskConfig;
    use crate::virtio::test_utils::{guest_memory, TestQueue};
    use virtio_queue::QueueOwnedT;

    const HDR: u64 = 0x1000;
    const DATA: u64 = 0x2000;
    const STATUS: u64 = 0x3000;

    /// A 16-sector image whose sector `i` is filled with byte `i`.
    fn image(readonly: bool) -> (TempFile, DiskFile) {
        let f = TempFile::new().unwrap();
        for i in 0..16u8 {
            f.as_file()
                .write_all_at(&[i; 512], u64::from(i) * 512)
                .unwrap();
        }
        let disk = DiskFile::open(&DiskConfig {
            path: f.as_path().to_path_buf(),
            readonly,
        })
        .unwrap();
        (f, disk)
    }

    /// Submits one request and returns (used length, status byte).
    fn run(
        mem: &GuestMemoryMmap,
        disk: &DiskFile,
        kind: u32,
        sector: u64,
        chain: &[(u64, u32, bool)],
    ) -> (u32, u8) {
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&kind.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&header, GuestAddress(HDR)).unwrap();
        mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
        let mut tq = TestQueue::new(mem, 16);
        tq.add_chain(mem, chain);
        let mut q = tq.queue();
        let c = q.iter(mem).unwrap().next().unwrap();
        let buffers = RequestBuffers::parse(c).unwrap();
        let len = process(mem, disk, buffers, &mut LogBudget::default());
        (len, mem.read_obj(GuestAddress(STATUS)).unwrap())
    }

    fn rw_chain(data_len: u32, write_data: bool) -> Vec<(u64, u32, bool)> {
        vec![
            (HDR, 16, false),
            (DATA, data_len, write_data),
            (STATUS, 1, true),
        ]
    }

    #[test]
    fn read_write_round_trip() {
        let mem = guest_memory();
        let (f, disk) = image(false);
        assert_eq!(
            run(&mem, &disk, VIRTIO_BLK_T_IN, 2, &rw_chain(1024, true)),
            (1025, VIRTIO_BLK_S_OK)
        );
        let mut data = [0u8; 1024];
        mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
        assert!(data[..512].iter().all(|&b| b == 2));
        assert!(data[512..].iter().all(|&b| b == 3));

        mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(
            run(&mem, &disk, VIRTIO_BLK_T_OUT, 15, &rw_chain(512, false)),
            (1, VIRTIO_BLK_S_OK)
        );
        assert_eq!(
            run(
                &mem,
                &disk,
                VIRTIO_BLK_T_FLUSH,
                0,
                &[(HDR, 16, false), (STATUS, 1, true)]
            ),
            (1, VIRTIO_BLK_S_OK)
        );
        let mut on_disk = [0u8; 512];
        f.as_file().read_exact_at(&mut on_disk, 15 * 512).unwrap();
        assert_eq!(on_disk, [0x5a; 512]);
    }

    #[test]
    fn any_descriptor_layout() {
        let mem = guest_memory();
        let (_f, disk) = image(false);
        // Header split in two, data split unevenly, status in the same
        // descriptor as the end of the data.
        let chain = [
            (HDR, 10, false),
            (HDR + 10, 6, false),
            (DATA, 100, true),
            (DATA + 0x800, 412, true),
            (STATUS - 512, 513, true),
        ];
        mem.write_slice(&[0u8; 0x800], GuestAddress(STATUS - 512))
            .unwrap();
        let (len, _) = run(&mem, &disk, VIRTIO_BLK_T_IN, 4, &chain);
        assert_eq!(len, 1025);
        let status: u8 = mem.read_obj(GuestAddress(STATUS)).unwrap();
        assert_eq!(status, VIRTIO_BLK_S_OK);
        let mut tail = [0u8; 512];
        mem.read_slice(&mut tail, GuestAddress(STATUS - 512))
            .unwrap();
        assert_eq!(tail, [5; 512], "sector 5 lands in the third data buffer");
    }

    #[test]
    fn get_id_and_unsupported() {
        let mem = guest_memory();
        let (_f, disk) = image(false);
        let (len, status) = run(&mem, &disk, VIRTIO_BLK_T_GET_ID, 0, &rw_chain(20, true));
        assert_eq!((len, status), (21, VIRTIO_BLK_S_OK));
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, disk.id());
        // A short ID buffer gets what fits.
        let (len, status) = run(&mem, &disk, VIRTIO_BLK_T_GET_ID, 0, &rw_chain(4, true));
        assert_eq!((len, status), (5, VIRTIO_BLK_S_OK));
        // Discard (11) and an invented type are unsupported.
        for kind in [11, 0xdead] {
            let (len, status) = run(&mem, &disk, kind, 0, &rw_chain(512, false));
            assert_eq!((len, status), (1, VIRTIO_BLK_S_UNSUPP));
        }
    }

    #[test]
    fn readonly_refuses_writes_only() {
        let mem = guest_memory();
        let (f, disk) = image(true);
        mem.write_slice(&[0x77; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(
            run(&mem, &disk, VIRTIO_BLK_T_OUT, 0, &rw_chain(512, false)),
            (1, VIRTIO_BLK_S_IOERR)
        );
        let mut on_disk = [0u8; 512];
        f.as_file().read_exact_at(&mut on_disk, 0).unwrap();
        assert_eq!(on_disk, [0; 512]);
        assert_eq!(
            run(&mem, &disk, VIRTIO_BLK_T_IN, 1, &rw_chain(512, true)),
            (513, VIRTIO_BLK_S_OK)
        );
        assert_eq!(
            run(
                &mem,
                &disk,
                VIRTIO_BLK_T_FLUSH,
                0,
                &[(HDR, 16, false), (STATUS, 1, true)]
            ),
            (1, VIRTIO_BLK_S_OK)
        );
    }

    #[test]
    fn out_of_range_and_partial_sectors() {
        let mem = guest_memory();
        let (_f, disk) = image(false);
        for (kind, sector, len, write) in [
            (VIRTIO_BLK_T_IN, 16, 512, true),
            (VIRTIO_BLK_T_IN, 15, 1024, true),
            (VIRTIO_BLK_T_OUT, 16, 512, false),
            (VIRTIO_BLK_T_IN, u64::MAX, 512, true),
            (VIRTIO_BLK_T_IN, u64::MAX / 512, 512, true),
            (VIRTIO_BLK_T_IN, 0, 100, true),
            (VIRTIO_BLK_T_OUT, 0, 513, false),
        ] {
            assert_eq!(
                run(&mem, &disk, kind, sector, &rw_chain(len, write)),
                (1, VIRTIO_BLK_S_IOERR),
                "type {kind} sector {sector} len {len}"
            );
        }
        // Reading exactly up to the end is fine; zero bytes at the end too.
        assert_eq!(
            run(&mem, &disk, VIRTIO_BLK_T_IN, 15, &rw_chain(512, true)),
            (513, VIRTIO_BLK_S_OK)
        );
        assert_eq!(
            run(
                &mem,
                &disk,
                VIRTIO_BLK_T_IN,
                16,
                &[(HDR, 16, false), (STATUS, 1, true)]
            ),
            (1, VIRTIO_BLK_S_OK)
        );
    }

    #[test]
    fn malformed_requests() {
        let mem = guest_memory();
        let (_f, disk) = image(false);
        // Short header.
        assert_eq!(
            run(
                &mem,
                &disk,
                VIRTIO_BLK_T_IN,
                0,
                &[(HDR, 8, false), (STATUS, 1, true)]
            ),
            (1, VIRTIO_BLK_S_IOERR)
        );
        // No writable byte: cannot answer.
        assert_eq!(
            run(&mem, &disk, VIRTIO_BLK_T_IN, 0, &[(HDR, 16, false)]),
            (0, 0xee)
        );
        // A file that shrank under the device: the read fails with IOERR.
        let (f, disk) = image(false);
        f.as_file().set_len(512).unwrap();
        assert_eq!(
            run(&mem, &disk, VIRTIO_BLK_T_IN, 4, &rw_chain(512, true)),
            (1, VIRTIO_BLK_S_IOERR)
        );
    }
}
