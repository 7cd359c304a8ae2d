//! `lvmsync-rs status DEST`: what a copy holds, here or on another host,
//! read without changing anything; with `--origin`, what the next backup
//! of that origin to DEST would do. With the hidden `--remote-side`, the
//! far side of a remote status.

use std::io::{self, Write};
use std::path::Path;

use lvmsync::backup::{self, Preview};
use lvmsync::snapshots::{SnapshotSize, DEFAULT_SNAPSHOT_SIZE};
use lvmsync::status::{self, DestStatus};
use lvmsync::units::{human, printable};
use lvmsync::Error;

use super::{usage_error, RemoteShell};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The copy: [user@]host:PATH or a local PATH
    pub dest: String,
    /// The volume backed up to DEST (VG/LV, on this host): also say what
    /// the next `backup ORIGIN DEST` would do
    #[arg(long, value_name = "VG/LV")]
    pub origin: Option<String>,
    #[command(flatten)]
    pub remote: RemoteShell,
    /// Print one JSON object instead of text (on failure too)
    #[arg(long)]
    pub json: bool,
    /// The far side of a remote status: look at DEST, say one hello line
    #[arg(long, hide = true, requires = "protocol")]
    pub remote_side: bool,
    /// With --remote-side: the protocol the local side speaks
    #[arg(long, hide = true, value_name = "VERSION", requires = "remote_side")]
    pub protocol: Option<u32>,
}

pub fn run(args: Args) -> Result<(), Error> {
    if args.remote_side {
        let Some(protocol) = args.protocol else {
            usage_error("status", "--remote-side needs --protocol")
        };
        return status::serve(&status::Side {
            path: Path::new(&args.dest),
            protocol,
        });
    }
    let link = args.remote.link();
    let status = status::query(&args.dest, &link)?;
    let next = match &args.origin {
        Some(origin) => Some(backup::preview(&backup::Request {
            origin: origin.clone(),
            dest: args.dest.clone(),
            snapshot_size: SnapshotSize::parse(DEFAULT_SNAPSHOT_SIZE)
                .expect("the default snapshot size parses"),
            compression: lvmsync::stream::Compression::Lz4.into(),
            link,
            reseed: false,
            name: None,
            store: Default::default(),
        })?),
        None => None,
    };
    if args.json {
        let mut doc = serde_json::to_value(&status).expect("plain fields serialize");
        doc["command"] = "status".into();
        doc["result"] = "ok".into();
        if let Some(next) = &next {
            let mut n = serde_json::to_value(next).expect("plain fields serialize");
            if let Some(o) = n.as_object_mut() {
                o.remove("dest_status");
            }
            doc["next_backup"] = n;
        }
        println!("{doc}");
        return Ok(());
    }
    print_text(&status, next.as_ref()).map_err(Error::Output)
}

fn print_text(s: &DestStatus, next: Option<&Preview>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    let dest = printable(&s.dest);
    match (&s.kind, s.size) {
        (Some(kind), Some(size)) => writeln!(
            out,
            "dest:     {dest} ({kind}, {size} bytes, {})",
            human(size)
        )?,
        (Some(kind), None) => writeln!(out, "dest:     {dest} ({kind})")?,
        (None, _) => writeln!(out, "dest:     {dest}: does not exist")?,
    }
    if let Some(file) = &s.state_file {
        let has = if s.has_state { "" } else { " (none yet)" };
        writeln!(out, "state:    {}{has}", printable(file))?;
    } else if s.kind.as_deref() == Some("device") {
        writeln!(
            out,
            "state:    none: the device has no name that survives a reboot, so it keeps no state"
        )?;
    }
    if let Some(e) = &s.state_error {
        writeln!(out, "error:    {}", printable(e))?;
    }
    let since = s
        .state_updated
        .as_deref()
        .map(|t| format!(", since {t}"))
        .unwrap_or_default();
    match (&s.holds, &s.applying) {
        (Some(p), _) => writeln!(out, "holds:    {}{since}", printable(&p.to_string()))?,
        (None, Some(a)) => {
            let from = match &a.base {
                Some(b) => format!("from {} ", printable(&b.snapshot)),
                None => "(a full copy) ".into(),
            };
            writeln!(
                out,
                "partway:  a transfer {from}to {}, confirmed up to byte {} ({}){since}; the same sync or backup resumes it",
                printable(&a.target.to_string()),
                a.confirmed,
                human(a.confirmed)
            )?;
        }
        (None, None) if s.exists => writeln!(
            out,
            "holds:    not known (no state): a backup to it would copy the whole volume"
        )?,
        (None, None) => {}
    }
    if let Some(w) = &s.writer {
        writeln!(out, "writer:   {} is writing it now", printable(w))?;
    }
    if !s.users.is_empty() {
        writeln!(
            out,
            "in use:   {}: nothing is written to it while it is",
            printable(&s.users.join(", "))
        )?;
    }
    if let Some(n) = next {
        writeln!(out, "next backup of {}: {}", n.origin, n.describe())?;
        for note in &n.notes {
            writeln!(out, "  {}", printable(note))?;
        }
    }
    out.flush()
}
