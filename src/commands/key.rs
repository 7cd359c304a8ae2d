//! `lvmsync-rs key new FILE`: a new random key in a key file, for
//! `send --encrypt --key-file FILE` (see [`lvmsync::crypt`]).

use std::path::PathBuf;

use lvmsync::crypt::{self, Key};
use lvmsync::Error;

#[derive(clap::Subcommand, Debug)]
pub enum Args {
    /// Make a new random 256-bit key in FILE (created, never overwritten;
    /// mode 0600)
    New {
        /// The key file to create
        file: PathBuf,
    },
}

pub fn run(args: Args) -> Result<(), Error> {
    match args {
        Args::New { file } => {
            let key = Key::random()?;
            crypt::write_key_file(&file, &key)?;
            eprintln!(
                "lvmsync-rs key new: {} holds a new key, id {}; keep a copy of it apart from the data it encrypts: without it, that data cannot be read",
                file.display(),
                crypt::hex(&key.id())
            );
            Ok(())
        }
    }
}
