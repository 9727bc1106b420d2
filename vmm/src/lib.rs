//! The VMM library: builds a KVM virtual machine from a configuration and runs it.
//!
//! Read top-down: [`cli`] and [`config`] say what the user asked for, [`builder`] puts the
//! VM together, [`vstate`] holds the KVM objects, [`arch`] the per-architecture boot state,
//! [`loader`] puts kernels into guest memory, [`control`] carries out the HTTP API's
//! requests on the running VM. Devices live in the `devices` crate, passthrough in the
//! `passthrough` crate, the API server in the `api` crate.
#![deny(missing_docs)]

pub mod arch;
pub mod builder;
pub mod cli;
pub mod config;
pub mod control;
pub mod device_hotplug;
pub mod hotplug;
pub mod interrupts;
#[cfg(target_arch = "x86_64")]
pub mod loader;
pub mod logger;
pub mod machine;
pub mod memory_plan;
pub mod pci;
pub mod seccomp;
pub mod signals;
pub mod vfio;
pub mod vsmmu;
pub mod vstate;
