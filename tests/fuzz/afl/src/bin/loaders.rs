//! AFL entry point of the `loaders` fuzz target (see vmm_fuzz::loaders).
fn main() {
    afl::fuzz!(|data: &[u8]| vmm_fuzz::loaders::run(data));
}
