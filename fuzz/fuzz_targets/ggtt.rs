//! Fuzzes `shadowgpu::mm::fuzzing::ggtt_bytes` (see its documentation for the input format).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = shadowgpu::mm::fuzzing::ggtt_bytes(data) {
        panic!("invariant violated: {violation}");
    }
});
