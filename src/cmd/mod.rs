//! Gen8/Gen9 command decoding and the command scanner.
//!
//! [`scan_ring`] walks a guest ring and every batch buffer it reaches, copies each into a shadow
//! buffer, scans only the copy, audits every address and register, patches batch starts and
//! interrupt requests in the copy, and returns the [`ScannedWorkload`] that will run, or a
//! [`ScanError`] saying where and why the stream was rejected.

pub mod emit;
mod error;
mod fastwalk;
pub mod fuzzing;
mod handlers;
pub mod image;
mod memory;
pub mod mix;
pub mod regs;
mod scan;
pub mod table;
mod workload;

pub use error::{BufferKind, Location, Reason, ScanError};
pub use memory::{
    copy_from_gm, page_chunks, AddrSpace, CopyFault, GmRange, GmTranslate, GmWindows, LinearTranslation,
    SplitTranslation, PAGE_SIZE,
};
pub(crate) use scan::fault_reason;
pub use scan::{
    scan_context_image, scan_dwords, scan_fetch, scan_fetching, scan_ring, RingSpec, ScanLimits, ScanObserver,
    ScanParams, Verdict,
};
pub use table::{AddrField, AddrSel, CmdDesc, CommandTable, Decoded, Handler, Length};
pub use workload::{
    BufferId, DroppedAccess, Events, FetchPoint, Reloc, RootLoad, ScanStats, ScannedWorkload, ShadowBuffer,
    MAX_DROPPED_KINDS,
};
#[cfg(test)]
mod scan_tests;
