//! Fuzzes `shadowgpu::mm::fuzzing::ppgtt_bytes` (see its documentation for the input format).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = shadowgpu::mm::fuzzing::ppgtt_bytes(data) {
        panic!("invariant violated: {violation}");
    }
});
