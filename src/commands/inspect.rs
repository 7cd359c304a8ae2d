//! `lvmsync-rs inspect`: what a delta holds (header, records, totals) and
//! whether it is whole with every checksum holding, without writing anything.
//!
//! Output is streamed as the records are read, so a delta of any size is
//! inspected in bounded memory. A damaged delta is shown up to the damage,
//! then the command fails with the one-line error.

use std::io::{self, BufReader, BufWriter, Read, Write};

use serde::Serialize;

use lvmsync::crypt::Envelope;
use lvmsync::files::{DeltaInput, DELTA_READ_BUF};
use lvmsync::stream::{Compression, Header, Reader, RecordKind, SourceKind, StreamError, Totals};
use lvmsync::units::{human, printable};
use lvmsync::Error;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The delta (`-` for stdin)
    pub delta: String,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
    /// Print nothing unless the delta is damaged or incomplete: check it
    /// whole, and say only what is wrong
    #[arg(short, long, conflicts_with = "json")]
    pub quiet: bool,
    #[command(flatten)]
    pub keys: super::KeyArgs,
}

/// How an encrypted delta is sealed, in one line.
fn describe_encryption(e: &Envelope) -> String {
    let with = if e.kind == lvmsync::crypt::KIND_PASSPHRASE {
        format!(
            "a passphrase (Argon2id, {} KiB, {} passes, {} lanes)",
            e.m_kib, e.t, e.p
        )
    } else {
        "a key file".to_string()
    };
    format!(
        "AES-256-GCM in chunks of 64 KiB, key id {}, with {with}; every chunk authenticated",
        lvmsync::crypt::hex(&e.key_id)
    )
}

/// Counts kept while reading.
#[derive(Default, Serialize)]
struct Counts {
    records: u64,
    data_records: u64,
    zero_records: u64,
    data_bytes: u64,
    zero_bytes: u64,
    payload_bytes: u64,
}

impl Counts {
    fn from(t: &Totals, data_records: u64) -> Counts {
        Counts {
            records: t.records,
            data_records,
            zero_records: t.records - data_records,
            data_bytes: t.data_bytes,
            zero_bytes: t.zero_bytes,
            payload_bytes: t.payload_bytes,
        }
    }
}

pub fn run(args: Args) -> Result<(), Error> {
    let delta = DeltaInput::from_arg(&args.delta);
    let name = delta.name();
    let secrets = args.keys.secrets();
    let mut encryption = None;
    let opened = delta.open().map_err(Error::from).and_then(|input| {
        let input = match lvmsync::crypt::open_input(input, &name, &secrets)? {
            lvmsync::crypt::Opened::Plain(r) => r,
            lvmsync::crypt::Opened::Encrypted(r, envelope) => {
                encryption = Some(envelope);
                r
            }
        };
        let input = BufReader::with_capacity(DELTA_READ_BUF, input);
        Reader::open(input).map_err(|source| Error::Stream {
            path: name.clone(),
            source,
        })
    });
    // Past the header, the document itself says what is wrong.
    let mut reader = match opened {
        Ok(r) => r,
        Err(e) => {
            if args.json {
                super::print_failure("inspect", &e);
            }
            return Err(e);
        }
    };
    let stdout: Box<dyn Write> = if args.quiet {
        Box::new(io::sink())
    } else {
        Box::new(io::stdout().lock())
    };
    let mut out = BufWriter::with_capacity(1 << 16, stdout);
    let result = if args.json {
        json(&name, encryption.as_ref(), &mut reader, &mut out)
    } else {
        text(&name, encryption.as_ref(), &mut reader, &mut out)
    };
    let damage = result
        .and_then(|d| out.flush().map(|()| d))
        .map_err(Error::Output)?;
    match damage {
        None => Ok(()),
        Some(source) => Err(Error::Stream { path: name, source }),
    }
}

/// The JSON document, written as the records are read.
fn json<R: Read>(
    name: &str,
    encryption: Option<&Envelope>,
    reader: &mut Reader<R>,
    out: &mut impl Write,
) -> io::Result<Option<StreamError>> {
    #[derive(Serialize)]
    struct Row {
        at: u64,
        offset: u64,
        length: u64,
        kind: &'static str,
        compressed: bool,
        stored: u64,
        grouped: bool,
    }
    write!(out, "{{\"command\":\"inspect\",\"delta\":")?;
    serde_json::to_writer(&mut *out, name)?;
    write!(
        out,
        ",\"format_version\":{},\"encryption\":",
        reader.version()
    )?;
    serde_json::to_writer(&mut *out, &encryption.map(describe_encryption))?;
    write!(out, ",\"header\":")?;
    serde_json::to_writer(&mut *out, &header_json(reader.header()))?;
    write!(out, ",\"records\":[")?;
    let mut data_records = 0u64;
    let damage = loop {
        match reader.next_record() {
            Ok(Some(rec)) => {
                let (kind, compressed) = match rec.kind {
                    RecordKind::Data { compressed } => ("data", compressed),
                    RecordKind::Zero => ("zero", false),
                };
                if kind == "data" {
                    data_records += 1;
                }
                if rec.index > 0 {
                    out.write_all(b",")?;
                }
                serde_json::to_writer(
                    &mut *out,
                    &Row {
                        at: rec.at,
                        offset: rec.offset,
                        length: rec.length,
                        kind,
                        compressed,
                        stored: rec.stored,
                        grouped: rec.grouped,
                    },
                )?;
            }
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    let t = *reader.totals();
    write!(out, "],\"totals\":")?;
    serde_json::to_writer(&mut *out, &Counts::from(&t, data_records))?;
    let ratio = (t.payload_bytes > 0).then(|| t.data_bytes as f64 / t.payload_bytes as f64);
    write!(
        out,
        ",\"stream_bytes\":{},\"compression_ratio\":",
        reader.end().map_or(reader.position(), |e| e.stream_len)
    )?;
    serde_json::to_writer(&mut *out, &ratio)?;
    write!(
        out,
        ",\"result\":\"{}\",\"whole\":{},\"error\":",
        if damage.is_none() { "ok" } else { "failed" },
        damage.is_none()
    )?;
    serde_json::to_writer(&mut *out, &damage.as_ref().map(|e| e.to_string()))?;
    let kind = damage.as_ref().map(|_| lvmsync::error::Kind::Damaged);
    write!(out, ",\"error_kind\":")?;
    serde_json::to_writer(&mut *out, &kind.map(|k| k.name()))?;
    write!(out, ",\"exit_code\":")?;
    serde_json::to_writer(&mut *out, &kind.map(|k| k.exit_code()))?;
    writeln!(out, "}}")?;
    Ok(damage)
}

/// The header as `inspect --json` shows it: `compression` is the codec's
/// name (`none`, `lz4` or `zstd`), and `compression_level` the zstd level
/// (null for the others).
fn header_json(h: &Header) -> serde_json::Value {
    let mut doc = serde_json::to_value(h).expect("plain fields serialize");
    doc["compression"] = h.compression.codec().into();
    doc["compression_level"] = match h.compression {
        Compression::Zstd { level } => level.into(),
        _ => serde_json::Value::Null,
    };
    doc
}

fn text<R: Read>(
    name: &str,
    encryption: Option<&Envelope>,
    reader: &mut Reader<R>,
    out: &mut impl Write,
) -> io::Result<Option<StreamError>> {
    write_header(name, reader.version(), reader.header(), out)?;
    if let Some(e) = encryption {
        writeln!(out, "encryption:   {}", describe_encryption(e))?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:>16} {:>20} {:>10}  {:<8} {:>10}",
        "at", "offset", "length", "kind", "stored"
    )?;
    let compressed = format!("data {}", reader.header().compression.codec());
    let mut data_records = 0u64;
    let damage = loop {
        match reader.next_record() {
            Ok(Some(rec)) => {
                let kind = match rec.kind {
                    RecordKind::Data { compressed: true } => compressed.as_str(),
                    RecordKind::Data { compressed: false } => "data",
                    RecordKind::Zero => "zero",
                };
                if rec.kind != RecordKind::Zero {
                    data_records += 1;
                }
                let stored = if rec.grouped {
                    "in group".to_string()
                } else {
                    rec.stored.to_string()
                };
                writeln!(
                    out,
                    "{:>16} {:>20} {:>10}  {:<8} {:>10}",
                    rec.at, rec.offset, rec.length, kind, stored
                )?;
            }
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    let t = *reader.totals();
    writeln!(out)?;
    writeln!(
        out,
        "records:      {}: {} DATA, {} ZERO{}",
        t.records,
        data_records,
        t.records - data_records,
        if damage.is_some() {
            " (before the damage)"
        } else {
            ""
        }
    )?;
    let share = if t.data_bytes > 0 {
        format!(
            ", {:.1}% of the data",
            t.payload_bytes as f64 * 100.0 / t.data_bytes as f64
        )
    } else {
        String::new()
    };
    writeln!(
        out,
        "data:         {} bytes ({}) in DATA records, stored in {} bytes ({}{share})",
        t.data_bytes,
        human(t.data_bytes),
        t.payload_bytes,
        human(t.payload_bytes)
    )?;
    writeln!(
        out,
        "zeroes:       {} bytes ({}) in ZERO records, with no payload",
        t.zero_bytes,
        human(t.zero_bytes)
    )?;
    match (reader.end(), &damage) {
        (Some(end), _) => {
            writeln!(
                out,
                "stream:       {} bytes ({})",
                end.stream_len,
                human(end.stream_len)
            )?;
            writeln!(
                out,
                "check:        whole: every checksum holds, and the END record matches the stream"
            )?;
        }
        (None, Some(e)) => {
            writeln!(out, "stream:       {} bytes read", reader.position())?;
            writeln!(out, "check:        FAILED: {e}")?;
        }
        (None, None) => {}
    }
    Ok(damage)
}

/// The header, with anything a terminal would act on escaped: its text
/// comes from whoever made the delta.
fn write_header(name: &str, version: u32, h: &Header, out: &mut impl Write) -> io::Result<()> {
    let h = &h.printable();
    let name = printable(name);
    let s = &h.source;
    writeln!(out, "delta:        {name}")?;
    writeln!(
        out,
        "format:       version {version}, written by {}",
        h.tool
    )?;
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".to_string());
    match s.kind {
        SourceKind::Classic => {
            let snap = match &s.vg {
                Some(vg) => format!("{vg}/{}", opt(&s.snapshot)),
                None => opt(&s.snapshot),
            };
            let mut line = format!("classic snapshot {snap}");
            if let Some(t) = &s.snapshot_time {
                line.push_str(&format!(", taken {t}"));
            }
            if let Some(u) = &s.snapshot_uuid {
                line.push_str(&format!(", uuid {u}"));
            }
            writeln!(out, "source:       {line}")?;
            let mut line = opt(&s.origin);
            if let Some(vg) = &s.vg {
                line = format!("{vg}/{line}");
            }
            if let Some(u) = &s.origin_uuid {
                line.push_str(&format!(", uuid {u}"));
            }
            writeln!(out, "origin:       {line}")?;
        }
        SourceKind::Image => {
            writeln!(out, "source:       image {}", opt(&s.snapshot))?;
            writeln!(out, "origin:       {}", opt(&s.origin))?;
        }
        kind => {
            writeln!(out, "source:       {}", kind.describe())?;
            if let Some(snap) = &s.snapshot {
                match &s.vg {
                    Some(vg) => writeln!(out, "snapshot:     {vg}/{snap}")?,
                    None => writeln!(out, "snapshot:     {snap}")?,
                }
            }
            writeln!(out, "origin:       {}", opt(&s.origin))?;
        }
    }
    if let Some(t) = &s.thin {
        writeln!(
            out,
            "thin pool:    {}, block size {}, snapshot id {}, compared with id {}",
            t.pool,
            human(t.block_size),
            t.snapshot_id,
            t.compared_id
        )?;
    }
    match &h.base {
        Some(b) => writeln!(out, "base:         {b}")?,
        None => writeln!(out, "base:         any (the delta does not name one)")?,
    }
    match &h.target {
        Some(t) => writeln!(out, "produces:     {t}")?,
        None => writeln!(
            out,
            "produces:     no point in time (data read from a live volume)"
        )?,
    }
    if h.resume_from > 0 {
        writeln!(out, "resumes at:   byte {}", h.resume_from)?;
    }
    writeln!(
        out,
        "origin size:  {} ({})",
        h.origin_size,
        human(h.origin_size)
    )?;
    writeln!(
        out,
        "chunk size:   {} ({})",
        h.chunk_size,
        human(h.chunk_size)
    )?;
    match h.compression {
        Compression::Zstd { level } => writeln!(out, "compression:  zstd, level {level}")?,
        other => writeln!(out, "compression:  {}", other.codec())?,
    }
    for (k, v) in &h.properties {
        writeln!(out, "property:     {k} = {v}")?;
    }
    Ok(())
}
