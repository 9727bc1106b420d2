//! The VMM library: builds and runs a VM.
pub mod arch;
pub mod loader;
