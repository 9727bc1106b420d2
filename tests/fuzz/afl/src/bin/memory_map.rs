//! AFL entry point of the `memory_map` fuzz target (see vmm_fuzz::memory_map).
fn main() {
    afl::fuzz!(|data: &[u8]| vmm_fuzz::memory_map::run(data));
}
