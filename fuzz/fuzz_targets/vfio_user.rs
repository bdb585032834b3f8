//! Fuzzes `shadowgpu::mdev::vfio_user::fuzzing::messages_bytes` (see its documentation for the
//! input format): raw vfio-user client bytes, with descriptors, against the server in process.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = shadowgpu::mdev::vfio_user::fuzzing::messages_bytes(data) {
        panic!("invariant violated: {violation}");
    }
});
