//! Fuzzes the command scanner over a ring plus a pool of batch memory (GGTT and PPGTT).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = shadowgpu::cmd::fuzzing::scan_bytes(data) {
        panic!("invariant violated: {violation}");
    }
});
