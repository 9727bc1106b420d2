//! AFL entry point of the `virtqueue` fuzz target (see vmm_fuzz::virtqueue).
fn main() {
    afl::fuzz!(|data: &[u8]| vmm_fuzz::virtqueue::run(data));
}
