//! AFL entry point of the `pci_config` fuzz target (see vmm_fuzz::pci_config).
fn main() {
    afl::fuzz!(|data: &[u8]| vmm_fuzz::pci_config::run(data));
}
