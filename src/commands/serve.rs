//! `lvmsync-rs serve --restrict-to PATH...`: the far end for a backup
//! host's `authorized_keys`, restricted to the far ends of sync, backup
//! and verify on paths under the prefixes (see [`lvmsync::serve`]).

use std::path::{Path, PathBuf};

use clap::Parser;

use lvmsync::serve::{self, Restriction, ServeError};
use lvmsync::Error;

use crate::{Cli, Command};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A directory (or one device or file) the client may write under;
    /// give it once for each
    #[arg(long = "restrict-to", value_name = "PATH", required = true)]
    pub restrict_to: Vec<PathBuf>,
}

/// Runs what the client asked for, when allowed; `Ok(false)` when a
/// comparison found the copies different (as `verify` does).
pub fn run(args: Args) -> Result<bool, Error> {
    let restriction = Restriction::new(&args.restrict_to)?;
    let original = std::env::var("SSH_ORIGINAL_COMMAND").ok();
    let words = serve::requested(original.as_deref())?;
    let refused = || ServeError::NotAllowed {
        asked: original.clone().unwrap_or_default(),
    };
    let cli = Cli::try_parse_from(std::iter::once("lvmsync-rs".to_string()).chain(words))
        .map_err(|_| refused())?;
    match cli.command {
        Command::Apply(mut a) if a.remote && a.expect_format.is_some() && a.snapback.is_none() => {
            a.dest = restriction.check(&a.dest, a.create)?;
            super::apply::run(a).map(|()| true)
        }
        Command::Verify(mut v) if v.remote_side && !v.repair && v.dest.is_none() => {
            let path = restriction.check(&PathBuf::from(&v.src), false)?;
            v.src = path.display().to_string();
            super::verify::run(v)
        }
        Command::Status(mut s) if s.remote_side => {
            // Only looked at: a path that does not exist yet may be asked about.
            s.dest = restriction
                .check(Path::new(&s.dest), true)?
                .display()
                .to_string();
            super::status::run(s).map(|()| true)
        }
        _ => Err(refused().into()),
    }
}
