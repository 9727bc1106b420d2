//! The host side of a virtio-blk device: a raw image file.
//!
//! [`DiskFile::open`] refuses, with an error that names the path and the
//! fix, a file that is missing, not readable (or not writable without
//! `readonly=on`), a directory, or whose size is not a multiple of 512
//! bytes. Once open, reads and writes go straight between the file and
//! guest memory (no bounce buffer) through `vm-memory`; a flush is an
//! `fdatasync(2)`, after which every completed write is on the host file's
//! storage.
//!
//! One thread at a time uses the file (the device's worker): reads and
//! writes seek the shared file offset first.
//!
//! What this module does not do: image formats (qcow2 ...), locking the
//! image against a second user, O_DIRECT and asynchronous I/O.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use vm_memory::{GuestMemory, GuestMemoryError};

use super::config::DiskConfig;
use crate::virtio::chain::GuestBuffer;

/// Bytes per sector, the unit of virtio-blk offsets and capacity.
pub const SECTOR_SIZE: u64 = 512;
/// Bytes of a virtio-blk device ID (GET_ID).
pub const ID_BYTES: usize = 20;

/// Errors opening a disk image.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The file does not exist.
    #[error("disk image {path} does not exist: check the path= of --disk", path = .path.display())]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// No permission to open the file as needed.
    #[error(
        "no permission to open disk image {path} for {access}: {hint}",
        path = .path.display(),
        access = if *.readonly { "reading" } else { "reading and writing" },
        hint = if *.readonly {
            "make it readable by the VMM's user"
        } else {
            "make it readable and writable by the VMM's user, or add readonly=on"
        }
    )]
    PermissionDenied {
        /// The path given.
        path: PathBuf,
        /// Whether it was opened read-only.
        readonly: bool,
    },
    /// The path is a directory.
    #[error("disk image {path} is a directory: give the path of a raw image file", path = .path.display())]
    Directory {
        /// The path given.
        path: PathBuf,
    },
    /// Opening or reading the file failed otherwise.
    #[error("cannot {what} disk image {path}: {source}", path = .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The size is not a whole number of sectors.
    #[error(
        "disk image {path} is {size} bytes, not a multiple of 512: the guest sees disks in \
         512-byte sectors; pad it with `truncate -s {padded} {path}`",
        path = .path.display()
    )]
    Size {
        /// The path given.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The size rounded up to a sector.
        padded: u64,
    },
}

/// An open raw image.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    path: PathBuf,
    readonly: bool,
    size: u64,
    id: [u8; ID_BYTES],
}

impl DiskFile {
    /// Opens and checks the image `config` names.
    pub fn open(config: &DiskConfig) -> Result<Self, BlockError> {
        let path = config.path.clone();
        let readonly = config.readonly;
        let io = |what, path: &Path, source| BlockError::Io {
            what,
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(&path)
            .map_err(|source| match source.kind() {
                ErrorKind::NotFound => BlockError::NotFound { path: path.clone() },
                ErrorKind::PermissionDenied => BlockError::PermissionDenied {
                    path: path.clone(),
                    readonly,
                },
                ErrorKind::IsADirectory => BlockError::Directory { path: path.clone() },
                _ => io("open", &path, source),
            })?;
        let meta = file.metadata().map_err(|e| io("inspect", &path, e))?;
        if meta.is_dir() {
            return Err(BlockError::Directory { path });
        }
        // Seeking to the end also sizes block devices, whose metadata
        // length is 0.
        let size = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|e| io("size", &path, e))?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::Size {
                path,
                size,
                padded: size.next_multiple_of(SECTOR_SIZE),
            });
        }
        if size > 0 {
            let mut sector = [0u8; SECTOR_SIZE as usize];
            file.read_exact_at(&mut sector, 0)
                .map_err(|e| io("read", &path, e))?;
        }
        let mut id = [0u8; ID_BYTES];
        let serial = format!("{:x}-{:x}", meta.dev(), meta.ino());
        let n = serial.len().min(ID_BYTES);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Ok(Self {
            file,
            path,
            readonly,
            size,
            id,
        })
    }

    /// The image path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the guest may only read.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Size in bytes (a multiple of [`SECTOR_SIZE`]).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Capacity in sectors.
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// The device ID: derived from the file's device and inode numbers,
    /// NUL-padded.
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// Fills `buf` with the image bytes at `offset`.
    pub fn read<M: GuestMemory>(
        &self,
        mem: &M,
        offset: u64,
        buf: &GuestBuffer,
    ) -> Result<(), GuestMemoryError> {
        let mut file = &self.file;
        file.seek(SeekFrom::Start(offset))
            .map_err(GuestMemoryError::IOError)?;
        buf.fill_from(mem, &mut file)
    }

    /// Writes `buf` to the image at `offset`.
    pub fn write<M: GuestMemory>(
        &self,
        mem: &M,
        offset: u64,
        buf: &GuestBuffer,
    ) -> Result<(), GuestMemoryError> {
        let mut file = &self.file;
        file.seek(SeekFrom::Start(offset))
            .map_err(GuestMemoryError::IOError)?;
        buf.drain_to(mem, &mut file)
    }

    /// Makes every completed write durable in the host file.
    pub fn flush(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::tempfile::TempFile;

    use super::*;

    fn config(path: &Path, readonly: bool) -> DiskConfig {
        DiskConfig {
            path: path.to_path_buf(),
            readonly,
        }
    }

    #[test]
    fn opens_and_sizes() {
        let f = TempFile::new().unwrap();
        f.as_file().set_len(4096).unwrap();
        let disk = DiskFile::open(&config(f.as_path(), false)).unwrap();
        assert_eq!(disk.size(), 4096);
        assert_eq!(disk.sectors(), 8);
        assert!(!disk.readonly());
        assert_eq!(disk.path(), f.as_path());
        let id = disk.id();
        assert!(id.iter().any(|&b| b != 0));
        let ro = DiskFile::open(&config(f.as_path(), true)).unwrap();
        assert!(ro.readonly());
        assert_eq!(ro.id(), id, "same file, same ID");
        // An empty image is a valid (if useless) disk.
        let empty = TempFile::new().unwrap();
        assert_eq!(
            DiskFile::open(&config(empty.as_path(), false))
                .unwrap()
                .sectors(),
            0
        );
    }

    #[test]
    fn refuses_missing_directories_and_odd_sizes() {
        let missing = Path::new("/nonexistent/disk.img");
        let err = DiskFile::open(&config(missing, false)).unwrap_err();
        assert!(matches!(err, BlockError::NotFound { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/disk.img") && msg.contains("path="),
            "{msg}"
        );

        let err = DiskFile::open(&config(Path::new("/tmp"), true)).unwrap_err();
        assert!(matches!(err, BlockError::Directory { .. }), "{err}");
        let err = DiskFile::open(&config(Path::new("/tmp"), false)).unwrap_err();
        assert!(matches!(err, BlockError::Directory { .. }), "{err}");

        let f = TempFile::new().unwrap();
        f.as_file().set_len(1000).unwrap();
        let err = DiskFile::open(&config(f.as_path(), false)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("1000 bytes, not a multiple of 512"), "{msg}");
        assert!(msg.contains("truncate -s 1024"), "{msg}");
    }

    #[test]
    fn permission_messages_name_the_fix() {
        let rw = BlockError::PermissionDenied {
            path: "/d.img".into(),
            readonly: false,
        };
        assert!(rw.to_string().contains("or add readonly=on"), "{rw}");
        let ro = BlockError::PermissionDenied {
            path: "/d.img".into(),
            readonly: true,
        };
        assert!(ro.to_string().contains("for reading:"), "{ro}");
    }

    #[test]
    fn unreadable_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let f = TempFile::new().unwrap();
        f.as_file().set_len(512).unwrap();
        std::fs::set_permissions(f.as_path(), std::fs::Permissions::from_mode(0o000)).unwrap();
        match DiskFile::open(&config(f.as_path(), true)) {
            Err(BlockError::PermissionDenied { readonly: true, .. }) => {}
            // Root (CAP_DAC_OVERRIDE) ignores file modes: nothing to check.
            Ok(_) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
}
