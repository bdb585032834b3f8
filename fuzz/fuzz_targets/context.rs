//! Fuzzes `shadowgpu::context::fuzzing::image_bytes` (see its documentation for the input
//! format): a guest rewriting and resubmitting its context image, restore inhibit and lite
//! restores included, each shadow context run on the software GPU.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = shadowgpu::context::fuzzing::image_bytes(data) {
        panic!("invariant violated: {violation}");
    }
});
