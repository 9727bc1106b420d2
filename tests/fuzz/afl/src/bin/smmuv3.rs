//! AFL entry point of the `smmuv3` fuzz target (see vmm_fuzz::smmuv3).
fn main() {
    afl::fuzz!(|data: &[u8]| vmm_fuzz::smmuv3::run(data));
}
