//! Fuzzes `shadowgpu::vgpu::fuzzing::device_bytes` (see its documentation for the input format):
//! configuration, MMIO, GTT, aperture and I/O access sequences on one vGPU beside an idle one.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = shadowgpu::vgpu::fuzzing::device_bytes(data) {
        panic!("invariant violated: {violation}");
    }
});
