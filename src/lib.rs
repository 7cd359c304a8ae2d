//! lvmsync-rs: ship the chunks that changed on an LVM origin since a snapshot
//! was taken, read from the kernel's own change table, to a backup copy.
//!
//! The library holds the logic, one module per concept; the `lvmsync-rs`
//! binary parses arguments, calls one entry point of it per command, and
//! prints.
//!
//! From what the user names to the backup copy:
//!
//! - finding devices and LVs: [`lvm`], [`snapshots`], [`tool`];
//! - the change table: [`cow`] (classic snapshots), [`thin`] (thin pools),
//!   [`changes`] (either, as extents), [`extents`];
//! - the delta stream: [`stream`] (the format), [`send`] (making one),
//!   [`apply`] (replaying one), [`state`] (what a copy holds);
//! - the far end: [`transport`] (the remote shell), [`ship`] (both halves
//!   of shipping a delta), [`sync`], [`backup`], [`verify`], [`serve`]
//!   (the far end restricted to some paths);
//! - around them: [`blockdev`], [`files`], [`progress`], [`units`],
//!   [`time`], [`error`];
//! - encryption at rest of deltas and archive objects: [`crypt`].

pub mod adapt;
pub mod apply;
pub mod archive;
pub mod backup;
pub mod blockdev;
pub mod changes;
pub mod config;
pub mod cow;
#[cfg(any(test, feature = "devtools"))]
pub mod cowgen;
pub mod crypt;
pub mod error;
pub mod extents;
pub mod files;
pub mod lvm;
pub mod progress;
pub mod send;
pub mod serve;
pub mod ship;
pub mod snapshots;
pub mod state;
pub mod status;
pub mod store;
pub mod stream;
pub mod sync;
pub mod thin;
#[cfg(any(test, feature = "devtools"))]
pub mod thingen;
pub mod throttle;
pub mod time;
pub mod tool;
pub mod transport;
pub mod units;
pub mod verify;

pub use error::Error;

/// The tool and its version, as a delta's header records it.
pub const TOOL: &str = concat!("lvmsync-rs ", env!("CARGO_PKG_VERSION"));
