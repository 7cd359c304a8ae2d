//! The volumes one `backup --config FILE` backs up, each to its DEST:
//!
//! ```toml
//! # /etc/lvmsync-rs/backup.toml
//! [defaults]
//! rsh = "ssh -i /root/.ssh/backup_key"
//! snapshot_size = "20%ORIGIN"
//!
//! [[volume]]
//! origin = "vg0/root"
//! dest = "backup:/dev/backupvg/root"
//!
//! [[volume]]
//! origin = "vg0/data"
//! dest = "s3://backups/lvm"
//! name = "db1/data"
//! snapshot_size = "10G"
//! ```
//!
//! Every setting of `[defaults]` can be given again in a `[[volume]]`,
//! which then wins. An unknown key, a bad value or the same origin and
//! DEST twice is an error naming the file, the volume and the key; nothing
//! is run then.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::adapt::Compress;
use crate::backup::{self, Request};
use crate::files;
use crate::ship::Link;
use crate::snapshots::{SnapshotSize, DEFAULT_SNAPSHOT_SIZE};
use crate::store::StoreOptions;
use crate::stream::Compression;

/// The most a config file may hold.
const MAX_CONFIG: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Invalid { path: String, why: String },
}

/// The settings a volume takes, from `[defaults]` or its own table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    snapshot_size: Option<String>,
    /// `lz4`, `zstd`, `zstd:LEVEL` or `none`.
    compress: Option<String>,
    create: Option<bool>,
    rsh: Option<String>,
    remote_path: Option<String>,
    /// Seconds.
    timeout: Option<u64>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    /// As `--bwlimit` reads it.
    bwlimit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Volume {
    origin: String,
    dest: String,
    /// With an archive as DEST: the volume's name there.
    name: Option<String>,
    #[serde(flatten)]
    settings: Settings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    defaults: Settings,
    #[serde(default)]
    volume: Vec<Volume>,
}

/// The backups a config file names, in its order.
pub fn load(path: &Path, link: &Link) -> Result<Vec<Request>, ConfigError> {
    let shown = path.display().to_string();
    let invalid = |why: String| ConfigError::Invalid {
        path: shown.clone(),
        why,
    };
    // The file the administrator named, through a symlink if it is one
    // (configuration managers make them); a FIFO or a huge file is refused.
    let real = std::fs::canonicalize(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    let text = match files::read_capped(&real, MAX_CONFIG) {
        Ok(Some(bytes)) => {
            String::from_utf8(bytes).map_err(|_| invalid("not UTF-8 text".into()))?
        }
        Ok(None) => {
            return Err(ConfigError::Read {
                path: shown,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: shown,
                source,
            })
        }
    };
    parse(&text, link).map_err(invalid)
}

/// The backups `text` names; the error says where it is wrong.
pub fn parse(text: &str, link: &Link) -> Result<Vec<Request>, String> {
    let file: File = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|span| {
            1 + text.as_bytes()[..span.start.min(text.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
        });
        let message = e.message().replace('\n', " ");
        match line {
            Some(n) => format!("line {n}: {message}"),
            None => message,
        }
    })?;
    if file.volume.is_empty() {
        return Err("names no [[volume]] to back up".into());
    }
    let mut requests: Vec<Request> = Vec::new();
    for (i, v) in file.volume.into_iter().enumerate() {
        let at = format!("volume {} ({} to {})", i + 1, v.origin, v.dest);
        let bad = |key: &str, why: String| format!("{at}: {key}: {why}");
        let s = merged(&file.defaults, &v.settings);
        let origin = v.origin.trim_start_matches("/dev/");
        if origin.split('/').count() != 2 || origin.split('/').any(str::is_empty) {
            return Err(bad("origin", "name the volume as VG/LV".into()));
        }
        if v.dest.is_empty() {
            return Err(bad("dest", "empty".into()));
        }
        if requests
            .iter()
            .any(|r| r.origin == origin && r.dest == v.dest && r.name == v.name)
        {
            return Err(format!("{at}: named twice"));
        }
        let snapshot_size =
            SnapshotSize::parse(s.snapshot_size.as_deref().unwrap_or(DEFAULT_SNAPSHOT_SIZE))
                .map_err(|e| bad("snapshot_size", e))?;
        let compression = match s.compress.as_deref() {
            None => Compress::Fixed(Compression::Lz4),
            Some(how) => how
                .parse::<Compress>()
                .map_err(|e| bad("compress", format!("{how:?}: {e}")))?,
        };
        let bwlimit = match &s.bwlimit {
            Some(r) => Some(crate::throttle::parse_rate(r).map_err(|e| bad("bwlimit", e))?),
            None => link.bwlimit,
        };
        if s.timeout == Some(0) {
            return Err(bad("timeout", "give 1 second or more".into()));
        }
        if let Some(name) = &v.name {
            crate::archive::check_volume_name(name).map_err(|e| bad("name", e.to_string()))?;
        }
        requests.push(Request {
            origin: origin.to_string(),
            dest: v.dest.clone(),
            snapshot_size,
            compression,
            link: Link {
                create: s.create.unwrap_or(link.create),
                rsh: s.rsh.unwrap_or_else(|| link.rsh.clone()),
                remote_path: s.remote_path.unwrap_or_else(|| link.remote_path.clone()),
                timeout: s.timeout.map_or(link.timeout, Duration::from_secs),
                bwlimit,
                ..link.clone()
            },
            reseed: false,
            name: v.name,
            store: StoreOptions {
                endpoint: s.s3_endpoint,
                region: s.s3_region,
                ..StoreOptions::default()
            },
        });
    }
    Ok(requests)
}

/// A volume's own settings over the defaults.
fn merged(defaults: &Settings, own: &Settings) -> Settings {
    macro_rules! pick {
        ($($f:ident),*) => {
            Settings { $($f: own.$f.clone().or_else(|| defaults.$f.clone()),)* }
        };
    }
    pick!(
        snapshot_size,
        compress,
        create,
        rsh,
        remote_path,
        timeout,
        s3_endpoint,
        s3_region,
        bwlimit
    )
}

/// Whether a config's backups all went well: the outcome of each, and
/// the exit status of the whole (0, or the status of the failures when
/// they are all of one kind, else 1).
pub fn exit_status(outcomes: &[backup::Outcome]) -> u8 {
    let codes: Vec<u8> = outcomes.iter().filter_map(|o| o.exit_code).collect();
    match codes.first() {
        None => 0,
        Some(&c) if codes.iter().all(|&x| x == c) => c,
        Some(_) => crate::error::Kind::Failed.exit_code(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        Link::default()
    }

    #[test]
    fn a_volume_takes_the_defaults_and_overrides_them() {
        let r = parse(
            r#"
            [defaults]
            rsh = "ssh -i /k"
            timeout = 30
            compress = "none"

            [[volume]]
            origin = "vg0/root"
            dest = "backup:/dev/b/root"

            [[volume]]
            origin = "/dev/vg0/data"
            dest = "s3://bucket/lvm"
            name = "db1/data"
            compress = "zstd:7"
            rsh = "ssh -p 2222"
            snapshot_size = "10G"
            create = true
            "#,
            &link(),
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].origin.as_str(), r[0].link.rsh.as_str()),
            ("vg0/root", "ssh -i /k")
        );
        assert_eq!(r[0].link.timeout, Duration::from_secs(30));
        assert_eq!(r[0].compression, Compress::Fixed(Compression::None));
        assert_eq!(
            r[1].compression,
            Compress::Fixed(Compression::Zstd { level: 7 })
        );
        assert_eq!(r[1].origin, "vg0/data");
        assert_eq!(r[1].link.rsh, "ssh -p 2222");
        assert_eq!(r[1].link.timeout, Duration::from_secs(30));
        assert!(r[1].link.create && !r[0].link.create);
        assert_eq!(r[1].snapshot_size, SnapshotSize::Bytes(10 << 30));
        assert_eq!(r[1].name.as_deref(), Some("db1/data"));
    }

    #[test]
    fn the_example_config_reads() {
        let r = parse(include_str!("../examples/backup.toml"), &link()).unwrap();
        assert_eq!(r.len(), 3);
        assert!(r.iter().all(|v| v.link.timeout == Duration::from_secs(120)));
        assert_eq!(
            r[2].store.endpoint.as_deref(),
            Some("https://s3.example.org")
        );
    }

    #[test]
    fn mistakes_are_named_and_nothing_runs() {
        for (text, want) in [
            ("[[volume]]\norigin = \"vg/a\"\ndest = \"/x\"\nsnapshot_sise = \"1G\"\n", "snapshot_sise"),
            ("[[volume]]\norigin = \"vg/a\"\n", "dest"),
            ("[[volume]]\norigin = \"a\"\ndest = \"/x\"\n", "VG/LV"),
            ("[[volume]]\norigin = \"vg/a\"\ndest = \"/x\"\ncompress = \"zip\"\n", "\"zip\": give auto, lz4, zstd"),
            ("[[volume]]\norigin = \"vg/a\"\ndest = \"/x\"\ncompress = \"zstd:22\"\n", "from 1 to 19"),
            ("[[volume]]\norigin = \"vg/a\"\ndest = \"/x\"\nsnapshot_size = \"lots\"\n", "snapshot_size"),
            ("[[volume]]\norigin = \"vg/a\"\ndest = \"/x\"\n[[volume]]\norigin = \"vg/a\"\ndest = \"/x\"\n", "named twice"),
            ("[defaults]\nrsh = \"ssh\"\n", "no [[volume]]"),
            ("[[volume]\n", ""),
        ] {
            let err = parse(text, &link()).unwrap_err();
            assert!(err.contains(want) && !err.contains('\n'), "{text}: {err}");
        }
    }
}
