//! The integration tests, as one crate: the binary run against generated
//! tables, captured kernel images, deltas, OpenSSH and S3 servers started
//! here, and (the `vm_` modules) a real kernel booted under qemu. One crate
//! builds and links once; each module is named after what it tests, so
//! `cargo test MODULE` runs one part (`cargo test vm_list`, `cargo test
//! --release -- --skip vm_` for all but the real-kernel tests).

mod common;

mod archive;
mod backup_cli;
mod codecs;
mod crypt_cli;
mod delta_cli;
mod demo;
mod fixtures;
mod help_cli;
mod list_cli;
mod mutation;
mod safety;
mod scripting;
mod ssh_sync;
mod state_cli;
mod status;
mod store;
mod thin_cli;
mod verify_cli;
mod vm_archive;
mod vm_backup;
mod vm_delta;
mod vm_list;
mod vm_thin;
