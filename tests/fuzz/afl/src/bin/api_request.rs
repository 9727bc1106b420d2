//! AFL entry point of the `api_request` fuzz target (see vmm_fuzz::api_request).
fn main() {
    afl::fuzz!(|data: &[u8]| vmm_fuzz::api_request::run(data));
}
