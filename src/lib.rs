//! lvmsync-rs: ship the chunks that changed on an LVM origin since a snapshot
//! was taken, read from the kernel's own change table, to a backup copy.
//!
//! The library holds the logic; the `lvmsync-rs` binary parses arguments and
//! calls [`commands`].

pub mod apply;
pub mod blockdev;
pub mod commands;
pub mod cow;
pub mod cowgen;
pub mod error;
pub mod extents;
pub mod lvm;
pub mod send;
pub mod snapshots;
pub mod state;
pub mod store;
pub mod stream;
pub mod thin;
pub mod thingen;
pub mod transport;
pub mod units;
pub mod verify;

pub use error::Error;

/// The tool and its version, as a delta's header records it.
pub const TOOL: &str = concat!("lvmsync-rs ", env!("CARGO_PKG_VERSION"));
