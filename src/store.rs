//! Objects on a local directory or on S3-compatible storage (AWS S3, MinIO,
//! Ceph RGW, Garage), behind one small synchronous API: the storage that an
//! archive of deltas sits on.
//!
//! [`Location::parse`] reads where a store is (`/srv/archive`,
//! `file:///srv/archive`, `s3://bucket/prefix`), [`Store::open`] opens it
//! with the S3 settings from the usual places (see [`StoreOptions`]), and the
//! store then puts, gets, lists and deletes objects by key. Keys are
//! `/`-separated strings such as `vg0/root/catalogue.json` (see
//! [`check_key`]).
//!
//! The object_store crate does the work for both kinds. It is async, so a
//! [`Store`] runs a small tokio runtime of its own ([`WORKER_THREADS`]
//! threads) and blocks on it: call it from ordinary threads, not from inside
//! an async runtime.
//!
//! Memory is bounded everywhere: [`Store::get`] refuses an object larger than
//! the caller's limit, [`Store::reader`] reads a big object a few blocks ahead
//! ([`READ_BLOCK`], [`READ_AHEAD`]), an [`Upload`] holds a few parts at a
//! time, and [`Store::list`] refuses more than [`LIST_LIMIT`] objects.
//!
//! Every error is one line that names the store and the object, and says
//! what to check ([`StoreError`]). Requests are retried a few times over a
//! bounded time ([`StoreOptions::max_retries`],
//! [`StoreOptions::retry_timeout`]), so a dead server is an error within
//! seconds, not minutes.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};
use thiserror::Error;
use tokio::runtime::Runtime;
use tokio::task::{JoinHandle, JoinSet};

/// The threads of a store's runtime: the work is waiting on the network or
/// the disk, and the uploads' parallelism comes from requests in flight.
pub const WORKER_THREADS: usize = 2;
/// The size of the blocks [`Store::reader`] fetches.
pub const READ_BLOCK: usize = 4 << 20;
/// How many blocks [`Store::reader`] fetches ahead of the one being read.
pub const READ_AHEAD: usize = 2;
/// The most objects [`Store::list`] returns before it refuses.
pub const LIST_LIMIT: usize = 100_000;
/// The most parts of a multipart upload (S3's limit).
pub const MAX_PARTS: u32 = 10_000;
/// The smallest part but the last that S3 accepts.
pub const MIN_PART_SIZE: usize = 5 << 20;
/// The largest [`StoreOptions::part_size`]: the parts grow to 32 times it,
/// and S3 takes parts of 5 GiB at most.
pub const MAX_PART_SIZE: usize = 128 << 20;
/// The longest key S3 accepts, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// The region when none is set anywhere.
pub const DEFAULT_REGION: &str = "us-east-1";
/// The largest AWS settings file read.
const MAX_SETTINGS_FILE: u64 = 1 << 20;
/// The longest detail an error carries from a server's answer.
const MAX_DETAIL: usize = 300;

/// Why a store could not be opened or an operation failed. Each message is
/// one line that names the store's location and the object, and says what
/// to check.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{text:?} is not a store location: {reason}")]
    BadLocation { text: String, reason: String },
    #[error("{location}: {key:?} is not an object key: {reason}")]
    BadKey {
        location: String,
        key: String,
        reason: String,
    },
    #[error("{location}: {reason}")]
    BadSettings { location: String, reason: String },
    #[error("{location}: no such directory; create it first")]
    NoSuchDirectory { location: String },
    #[error("{location}: not a directory")]
    NotADirectory { location: String },
    #[error("{location}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE naming a profile in ~/.aws/credentials")]
    NoCredentials { location: String },
    #[error("{location}: no object {key}")]
    NotFound { location: String, key: String },
    #[error("{location}: object {key} already exists; it was left as it is")]
    Exists { location: String, key: String },
    #[error("{location}: access denied to {what} ({detail}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the AWS profile) and the bucket's permissions")]
    AccessDenied {
        location: String,
        what: String,
        detail: String,
    },
    #[error("{location}: no bucket {bucket} at {endpoint}: create it, or check the bucket's name and the endpoint")]
    NoSuchBucket {
        location: String,
        bucket: String,
        endpoint: String,
    },
    #[error("{location}: cannot connect to the S3 endpoint {endpoint} for {what}: {detail}; is the server up, and the endpoint right?")]
    Unreachable {
        location: String,
        endpoint: String,
        what: String,
        detail: String,
    },
    #[error(
        "{location}: object {key} is {size} bytes, more than the {max_len} bytes this read takes"
    )]
    TooLarge {
        location: String,
        key: String,
        size: u64,
        max_len: u64,
    },
    #[error(
        "{location}: object {key} is {size} bytes: the range {start}..{end} runs past its end"
    )]
    OutOfRange {
        location: String,
        key: String,
        start: u64,
        end: u64,
        size: u64,
    },
    #[error("{location}: object {key} would be larger than the {max} bytes an upload of {MAX_PARTS} parts holds; raise the part size")]
    UploadTooLarge {
        location: String,
        key: String,
        max: u64,
    },
    #[error("{location}: object {key} changed while it was being read")]
    Changed { location: String, key: String },
    #[error("{location}: {what}: {detail}")]
    Other {
        location: String,
        what: String,
        detail: String,
    },
}

/// Where a store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory on a local file system.
    Local(PathBuf),
    /// A bucket of an S3-compatible service, and the key prefix that the
    /// store's keys live under (without a leading or trailing `/`; empty for
    /// the whole bucket).
    S3 { bucket: String, prefix: String },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(dir) => write!(f, "{}", dir.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

impl Location {
    /// Reads a location: `/abs/dir`, `relative/dir` or `file:///abs/dir` for
    /// a local directory, `s3://bucket` or `s3://bucket/prefix` for S3. Other
    /// URLs, an `s3://` without a bucket, and bucket names that break S3's
    /// rules are refused.
    pub fn parse(text: &str) -> Result<Location, StoreError> {
        let bad = |reason: &str| StoreError::BadLocation {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        if text.chars().any(char::is_control) {
            return Err(bad("it contains a control character"));
        }
        let Some((scheme, rest)) = split_scheme(text) else {
            if text.to_ascii_lowercase().starts_with("s3:") {
                return Err(bad("S3 locations are written s3://BUCKET[/PREFIX]"));
            }
            return Ok(Location::Local(PathBuf::from(text)));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad("no bucket name; write s3://BUCKET[/PREFIX]"));
                }
                check_bucket(bucket).map_err(|reason| bad(&reason))?;
                let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
                if !prefix.is_empty() {
                    check_key(prefix).map_err(|reason| bad(&format!("the prefix: {reason}")))?;
                }
                Ok(Location::S3 {
                    bucket: bucket.to_string(),
                    prefix: prefix.to_string(),
                })
            }
            "file" => {
                if !rest.starts_with('/') {
                    return Err(bad(
                        "a file URL names an absolute directory on this host: file:///DIR",
                    ));
                }
                let path = percent_decode(rest).map_err(|reason| bad(&reason))?;
                Ok(Location::Local(PathBuf::from(path)))
            }
            _ => Err(bad(&format!(
                "{scheme}:// is not supported; give a directory, file:///DIR or s3://BUCKET[/PREFIX]"
            ))),
        }
    }
}

/// `("s3", "bucket/prefix")` for `s3://bucket/prefix`; `None` when the text
/// does not start with a URL scheme and `://`.
fn split_scheme(text: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = text.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    let is_scheme = first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    is_scheme.then_some((scheme, rest))
}

/// Decodes the `%XX` escapes of a file URL's path.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("a bad %-escape at byte {i}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "its %-escapes are not UTF-8".to_string())
}

/// Checks a bucket name against S3's rules: 3 to 63 characters, lowercase
/// letters, digits, dots and hyphens, starting and ending with a letter or
/// a digit, no two dots in a row, not an IP address.
pub fn check_bucket(bucket: &str) -> Result<(), String> {
    let rules = "S3 bucket names are 3 to 63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or a digit";
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && ends_ok(bucket.chars().next())
        && ends_ok(bucket.chars().last())
        && !bucket.contains("..");
    if !ok {
        return Err(format!("bucket name {bucket:?}: {rules}"));
    }
    if bucket.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(format!(
            "bucket name {bucket:?}: S3 bucket names are not IP addresses"
        ));
    }
    Ok(())
}

/// Checks a key: `/`-separated segments, none of them empty (no leading,
/// trailing or doubled `/`), `.` or `..`; no control characters; no `#`
/// (the local kind names its unfinished uploads KEY#N); at most
/// [`MAX_KEY_LEN`] bytes.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("it is empty".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!("it is longer than {MAX_KEY_LEN} bytes"));
    }
    if key.chars().any(char::is_control) {
        return Err("it contains a control character".into());
    }
    if key.contains('#') {
        return Err("it contains '#'".into());
    }
    for segment in key.split('/') {
        match segment {
            "" => {
                return Err("it has an empty segment (a leading, trailing or doubled '/')".into())
            }
            "." | ".." => return Err(format!("it has a {segment:?} segment")),
            _ => {}
        }
    }
    Ok(())
}

/// An access key for S3. Its `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"(hidden)")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "(hidden)"),
            )
            .finish()
    }
}

/// How to open a store. The S3 settings that are `None` here come from the
/// environment, then from the AWS profile:
///
/// - credentials: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
///   `AWS_SESSION_TOKEN`, else the profile's `aws_access_key_id`,
///   `aws_secret_access_key` and `aws_session_token` in
///   `~/.aws/credentials` (`AWS_SHARED_CREDENTIALS_FILE`), then in
///   `~/.aws/config` (`AWS_CONFIG_FILE`);
/// - region: `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's `region`,
///   else [`DEFAULT_REGION`];
/// - endpoint: `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, the profile's
///   `s3 = endpoint_url = ...` or `endpoint_url`, else AWS itself.
///
/// The profile is [`StoreOptions::profile`], else `AWS_PROFILE`, else
/// `default`; a profile named but found nowhere is an error.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Create a local directory that does not exist (with its parents).
    pub create: bool,
    /// The S3 endpoint, `http://HOST[:PORT]` or `https://HOST[:PORT]`, for a
    /// service other than AWS. Plain http is allowed only when the endpoint
    /// says so.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style requests (`ENDPOINT/BUCKET/KEY`) rather than
    /// virtual-hosted ones (`BUCKET.ENDPOINT/KEY`). By default on with a
    /// custom endpoint (MinIO, Ceph RGW and Garage want it) and for bucket
    /// names with dots, off for AWS.
    pub path_style: Option<bool>,
    /// The AWS profile to read the settings from.
    pub profile: Option<String>,
    pub credentials: Option<S3Credentials>,
    /// How often a failed request is tried again (server errors, refused or
    /// broken connections).
    pub max_retries: usize,
    /// No request is tried again after this long since its first try.
    pub retry_timeout: Duration,
    /// How long a connection to the endpoint may take to open.
    pub connect_timeout: Duration,
    /// How long one request may take, its body included.
    pub request_timeout: Duration,
    /// The size of an upload's parts (the first 1000; see [`Upload`]).
    pub part_size: usize,
    /// How many parts of an upload are sent at once.
    pub parts_in_flight: usize,
    /// What opens an encrypted archive (the key file, the passphrase): the
    /// store does not use it; [`crate::archive::Archive::open`] does.
    pub secrets: crate::crypt::Secrets,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            create: false,
            endpoint: None,
            region: None,
            path_style: None,
            profile: None,
            credentials: None,
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            part_size: 8 << 20,
            parts_in_flight: 4,
            secrets: crate::crypt::Secrets::default(),
        }
    }
}

/// What is known of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub key: String,
    pub size: u64,
    pub last_modified: SystemTime,
    pub e_tag: Option<String>,
}

/// What a put or a finished [`Upload`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub size: u64,
    /// The parts of its multipart upload; 0 when it went up in one request.
    pub parts: u32,
    /// The new object's e_tag, when the store gives one.
    pub e_tag: Option<String>,
}

/// What errors name: the store, and for S3 its endpoint and bucket.
#[derive(Debug)]
struct Names {
    location: String,
    s3: Option<S3Names>,
}

#[derive(Debug)]
struct S3Names {
    endpoint: String,
    bucket: String,
}

/// What the operations share: the runtime, the object_store client, and the
/// names for errors.
#[derive(Debug)]
struct Shared {
    runtime: Runtime,
    inner: Arc<dyn ObjectStore>,
    names: Names,
    part_size: usize,
    parts_in_flight: usize,
}

/// An open store. It may be used from several threads at once.
#[derive(Debug)]
pub struct Store {
    location: Location,
    shared: Arc<Shared>,
}

impl Store {
    /// Opens a store. A local directory must exist (or is created when
    /// `options.create`) and be a directory. An S3 bucket is checked with one
    /// small listing, so that wrong credentials, a missing bucket or a dead
    /// endpoint show at once.
    pub fn open(location: &Location, options: &StoreOptions) -> Result<Store, StoreError> {
        let name = location.to_string();
        check_options(&name, options)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("lvmsync-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Other {
                location: name.clone(),
                what: "the store's threads".into(),
                detail: format!("cannot start them: {e}"),
            })?;
        let (inner, s3): (Arc<dyn ObjectStore>, _) = match location {
            Location::Local(dir) => (Arc::new(open_local(&name, dir, options.create)?), None),
            Location::S3 { bucket, prefix } => {
                let settings =
                    S3Settings::resolve(&name, bucket, options, &|var| std::env::var(var).ok())?;
                let client = settings.client(&name, bucket, options)?;
                let names = Names {
                    location: name.clone(),
                    s3: Some(S3Names {
                        endpoint: settings.endpoint_name(),
                        bucket: bucket.clone(),
                    }),
                };
                let probe_prefix = (!prefix.is_empty()).then(|| format!("{prefix}/"));
                let probe = PaginatedListOptions {
                    max_keys: Some(1),
                    delimiter: Some("/".into()),
                    ..Default::default()
                };
                runtime
                    .block_on(client.list_paginated(probe_prefix.as_deref(), probe))
                    .map_err(|e| classify(&names, "the bucket", None, e))?;
                let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    Arc::new(client)
                } else {
                    let prefix =
                        ObjectPath::parse(prefix).map_err(|e| StoreError::BadLocation {
                            text: name.clone(),
                            reason: one_line(&e.to_string()),
                        })?;
                    Arc::new(PrefixStore::new(client, prefix))
                };
                (store, names.s3)
            }
        };
        Ok(Store {
            location: location.clone(),
            shared: Arc::new(Shared {
                runtime,
                inner,
                names: Names { location: name, s3 },
                part_size: options.part_size,
                parts_in_flight: options.parts_in_flight,
            }),
        })
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Stores `data` under `key` unless an object is there already
    /// ([`StoreError::Exists`]; S3's `If-None-Match: *`).
    pub fn put_new(&self, key: &str, data: Vec<u8>) -> Result<Stored, StoreError> {
        self.put_with(key, data, PutMode::Create)
    }

    /// Stores `data` under `key`, replacing what is there.
    pub fn put(&self, key: &str, data: Vec<u8>) -> Result<Stored, StoreError> {
        self.put_with(key, data, PutMode::Overwrite)
    }

    fn put_with(&self, key: &str, data: Vec<u8>, mode: PutMode) -> Result<Stored, StoreError> {
        let path = self.shared.path(key)?;
        let size = data.len() as u64;
        let s = &self.shared;
        let result = s
            .runtime
            .block_on(
                s.inner
                    .put_opts(&path, PutPayload::from(data), PutOptions::from(mode)),
            )
            .map_err(|e| s.error(key, e))?;
        Ok(Stored {
            size,
            parts: 0,
            e_tag: result.e_tag,
        })
    }

    /// Starts a streaming upload to `key` (see [`Upload`]). The object
    /// appears, replacing what is there, only when [`Upload::finish`]
    /// returns.
    pub fn upload(&self, key: &str) -> Result<Upload, StoreError> {
        let path = self.shared.path(key)?;
        Ok(Upload {
            shared: Arc::clone(&self.shared),
            key: key.to_string(),
            path,
            buffer: Vec::new(),
            multipart: None,
            in_flight: JoinSet::new(),
            parts: 0,
            size: 0,
            state: UploadState::Open,
        })
    }

    /// The whole object, refused ([`StoreError::TooLarge`]) when it is larger
    /// than `max_len` bytes: nothing unbounded is read from outside. For big
    /// objects, use [`Store::reader`].
    pub fn get(&self, key: &str, max_len: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.shared.path(key)?;
        let s = &self.shared;
        let too_large = |size| StoreError::TooLarge {
            location: s.names.location.clone(),
            key: key.to_string(),
            size,
            max_len,
        };
        s.runtime.block_on(async {
            let result = s
                .inner
                .get_opts(&path, GetOptions::default())
                .await
                .map_err(|e| s.error(key, e))?;
            let size = result.meta.size;
            if size > max_len {
                return Err(too_large(size));
            }
            let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            let mut stream = result.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| s.error(key, e))?;
                let len = data.len() as u64 + chunk.len() as u64;
                if len > max_len {
                    return Err(too_large(len));
                }
                data.extend_from_slice(&chunk);
            }
            if data.len() as u64 != size {
                return Err(s.other(key, format!("read {} bytes of its {size}", data.len())));
            }
            Ok(data)
        })
    }

    /// The bytes `range` of an object. A range that runs past the object's
    /// end is refused ([`StoreError::OutOfRange`]); an empty one is empty.
    pub fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        let path = self.shared.path(key)?;
        let s = &self.shared;
        if range.start > range.end {
            return Err(s.other(
                key,
                format!("the range {}..{} runs backwards", range.start, range.end),
            ));
        }
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let out_of_range = |size| StoreError::OutOfRange {
            location: s.names.location.clone(),
            key: key.to_string(),
            start: range.start,
            end: range.end,
            size,
        };
        let options = GetOptions::new().with_range(Some(range.clone()));
        let fetched = s.runtime.block_on(async {
            let result = s.inner.get_opts(&path, options).await?;
            let (got, size) = (result.range.clone(), result.meta.size);
            Ok::<_, object_store::Error>((got, size, result.bytes().await?))
        });
        match fetched {
            Ok((got, size, bytes))
                if got != range || bytes.len() as u64 != range.end - range.start =>
            {
                Err(out_of_range(size))
            }
            Ok((_, _, bytes)) => Ok(Vec::from(bytes)),
            Err(e) => {
                let error = s.error(key, e);
                if let StoreError::Other { .. } = error {
                    // A range that starts past the end fails in ways that
                    // differ between the kinds: say it plainly.
                    if let Ok(Some(meta)) = self.head(key) {
                        if range.end > meta.size {
                            return Err(out_of_range(meta.size));
                        }
                    }
                }
                Err(error)
            }
        }
    }

    /// A sequential reader of a whole object that fetches [`READ_BLOCK`]
    /// bytes at a time, [`READ_AHEAD`] blocks ahead of the one being read:
    /// it holds at most `(READ_AHEAD + 1) * READ_BLOCK` bytes (12 MiB). Each
    /// block is asked for only if the object is still the one first seen
    /// (its e_tag, `If-Match`), so an object replaced while it is read is an
    /// error ([`StoreError::Changed`]) rather than a mix of two, on the
    /// stores that honour `If-Match` (local directories, AWS S3, MinIO);
    /// elsewhere only a change of size is seen. Its errors are `io::Error`s
    /// that carry the [`StoreError`] (`into_inner`).
    pub fn reader(&self, key: &str) -> Result<Reader, StoreError> {
        let meta = self.head(key)?.ok_or_else(|| StoreError::NotFound {
            location: self.shared.names.location.clone(),
            key: key.to_string(),
        })?;
        Ok(Reader {
            shared: Arc::clone(&self.shared),
            path: self.shared.path(key)?,
            key: key.to_string(),
            size: meta.size,
            e_tag: meta.e_tag,
            next_fetch: 0,
            fetching: VecDeque::new(),
            block: Bytes::new(),
        })
    }

    /// The object's size, last change and e_tag; `None` when there is no
    /// object under `key`.
    pub fn head(&self, key: &str) -> Result<Option<Meta>, StoreError> {
        let path = self.shared.path(key)?;
        let s = &self.shared;
        match s.runtime.block_on(s.inner.head(&path)) {
            Ok(meta) => Ok(Some(to_meta(meta))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s.error(key, e)),
        }
    }

    /// The objects under `prefix` (whole segments: `a/b` lists `a/b/c` but
    /// not `a/bc`; empty for all), in key order. More than [`LIST_LIMIT`]
    /// objects are refused.
    pub fn list(&self, prefix: &str) -> Result<Vec<Meta>, StoreError> {
        let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
        let s = &self.shared;
        let what = if prefix.is_empty() {
            "the objects".to_string()
        } else {
            format!("the objects under {prefix}/")
        };
        let path = if prefix.is_empty() {
            None
        } else {
            Some(s.path(prefix)?)
        };
        let mut found = s.runtime.block_on(async {
            let mut stream = s.inner.list(path.as_ref());
            let mut found = Vec::new();
            while let Some(meta) = stream.next().await {
                let meta = meta.map_err(|e| classify(&s.names, &what, None, e))?;
                if found.len() == LIST_LIMIT {
                    return Err(s.other_what(
                        &what,
                        format!("more than {LIST_LIMIT}; list a narrower prefix"),
                    ));
                }
                found.push(to_meta(meta));
            }
            Ok(found)
        })?;
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    /// Deletes an object; deleting one that is not there is no error.
    pub fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.shared.path(key)?;
        let s = &self.shared;
        match s.runtime.block_on(s.inner.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s.error(key, e)),
        }
    }
}

impl Shared {
    fn path(&self, key: &str) -> Result<ObjectPath, StoreError> {
        let bad = |reason: String| StoreError::BadKey {
            location: self.names.location.clone(),
            key: key.to_string(),
            reason,
        };
        check_key(key).map_err(bad)?;
        ObjectPath::parse(key).map_err(|e| bad(one_line(&e.to_string())))
    }

    fn error(&self, key: &str, e: object_store::Error) -> StoreError {
        classify(&self.names, &format!("object {key}"), Some(key), e)
    }

    fn other(&self, key: &str, detail: String) -> StoreError {
        self.other_what(&format!("object {key}"), detail)
    }

    fn other_what(&self, what: &str, detail: String) -> StoreError {
        StoreError::Other {
            location: self.names.location.clone(),
            what: what.to_string(),
            detail,
        }
    }

    /// Runs `future` to its end: here when called from an ordinary thread,
    /// on the store's runtime when called from inside another runtime (a
    /// drop there may not block).
    fn finish_in_background<F>(&self, future: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            drop(self.runtime.spawn(future));
        } else {
            self.runtime.block_on(future);
        }
    }
}

fn check_options(location: &str, options: &StoreOptions) -> Result<(), StoreError> {
    let bad = |reason: String| StoreError::BadSettings {
        location: location.to_string(),
        reason,
    };
    if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&options.part_size) {
        return Err(bad(format!(
            "the part size {} is not between {MIN_PART_SIZE} and {MAX_PART_SIZE} bytes",
            options.part_size
        )));
    }
    if !(1..=64).contains(&options.parts_in_flight) {
        return Err(bad(format!(
            "{} parts in flight: give 1 to 64",
            options.parts_in_flight
        )));
    }
    Ok(())
}

fn open_local(name: &str, dir: &Path, create: bool) -> Result<LocalFileSystem, StoreError> {
    let other = |detail: String| StoreError::Other {
        location: name.to_string(),
        what: "the directory".into(),
        detail,
    };
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(StoreError::NotADirectory {
                location: name.to_string(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
            std::fs::create_dir_all(dir).map_err(|e| other(format!("cannot create it: {e}")))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StoreError::NoSuchDirectory {
                location: name.to_string(),
            })
        }
        Err(e) => return Err(other(e.to_string())),
    }
    let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| other(one_line(&e.to_string())))?;
    // Empty directories go with their last object; written objects are on
    // disk before a put or an upload returns, as on S3.
    Ok(fs.with_automatic_cleanup(true).with_fsync(true))
}

fn to_meta(meta: ObjectMeta) -> Meta {
    Meta {
        key: meta.location.to_string(),
        size: meta.size,
        last_modified: SystemTime::from(meta.last_modified),
        e_tag: meta.e_tag,
    }
}

/// The S3 settings after the options, the environment and the profile.
#[derive(Debug, PartialEq, Eq)]
struct S3Settings {
    credentials: S3Credentials,
    region: String,
    /// A custom endpoint, without a trailing `/`.
    endpoint: Option<String>,
    path_style: bool,
}

impl S3Settings {
    /// Resolves the settings for `bucket`; `env` reads an environment
    /// variable.
    fn resolve(
        location: &str,
        bucket: &str,
        options: &StoreOptions,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<S3Settings, StoreError> {
        let env = |var: &str| env(var).filter(|v| !v.is_empty());
        let bad = |reason: String| StoreError::BadSettings {
            location: location.to_string(),
            reason,
        };
        let named_profile = options.profile.clone().or_else(|| env("AWS_PROFILE"));
        let profile_name = named_profile.clone().unwrap_or_else(|| "default".into());
        let home = env("HOME").map(PathBuf::from);
        let file = |var: &str, default: &str| {
            env(var)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
        };
        let credentials_file = file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
        let config_file = file("AWS_CONFIG_FILE", "config");
        let from_credentials = match &credentials_file {
            Some(path) => read_profile(path, &profile_name, false).map_err(bad)?,
            None => None,
        };
        let from_config = match &config_file {
            Some(path) => read_profile(path, &profile_name, true).map_err(bad)?,
            None => None,
        };
        if let (Some(name), None, None) = (&named_profile, &from_credentials, &from_config) {
            return Err(bad(format!(
                "the AWS profile {name:?} is in neither {} nor {}",
                shown(&credentials_file),
                shown(&config_file)
            )));
        }
        let profile = |key: &str| {
            [&from_credentials, &from_config]
                .into_iter()
                .flatten()
                .find_map(|p| p.get(key).filter(|v| !v.is_empty()).cloned())
        };

        let credentials = match &options.credentials {
            Some(c) => c.clone(),
            None => match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                (Some(access_key_id), Some(secret_access_key)) => S3Credentials {
                    access_key_id,
                    secret_access_key,
                    session_token: env("AWS_SESSION_TOKEN"),
                },
                _ => match (
                    profile("aws_access_key_id"),
                    profile("aws_secret_access_key"),
                ) {
                    (Some(access_key_id), Some(secret_access_key)) => S3Credentials {
                        access_key_id,
                        secret_access_key,
                        session_token: profile("aws_session_token"),
                    },
                    _ => {
                        return Err(StoreError::NoCredentials {
                            location: location.to_string(),
                        })
                    }
                },
            },
        };
        let region = options
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| profile("region"))
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        let endpoint = options
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .or_else(|| profile("s3.endpoint_url"))
            .or_else(|| profile("endpoint_url"));
        let endpoint = match endpoint {
            Some(e) => Some(check_endpoint(&e).map_err(bad)?),
            None => None,
        };
        let path_style = options
            .path_style
            .unwrap_or(endpoint.is_some() || bucket.contains('.'));
        Ok(S3Settings {
            credentials,
            region,
            endpoint,
            path_style,
        })
    }

    /// The endpoint as errors name it.
    fn endpoint_name(&self) -> String {
        match &self.endpoint {
            Some(e) => e.clone(),
            None => format!("https://s3.{}.amazonaws.com", self.region),
        }
    }

    fn client(
        &self,
        location: &str,
        bucket: &str,
        options: &StoreOptions,
    ) -> Result<AmazonS3, StoreError> {
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: options.max_retries,
            retry_timeout: options.retry_timeout,
        };
        let plain_http = self
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        let client_options = ClientOptions::new()
            .with_allow_http(plain_http)
            .with_timeout(options.request_timeout)
            .with_connect_timeout(options.connect_timeout);
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&self.region)
            .with_access_key_id(&self.credentials.access_key_id)
            .with_secret_access_key(&self.credentials.secret_access_key)
            .with_virtual_hosted_style_request(!self.path_style)
            .with_retry(retry)
            .with_client_options(client_options);
        if let Some(token) = &self.credentials.session_token {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &self.endpoint {
            // A virtual-hosted endpoint names the bucket in its host.
            let endpoint = if self.path_style {
                endpoint.clone()
            } else {
                let (scheme, host) = endpoint.split_once("://").unwrap_or(("https", endpoint));
                format!("{scheme}://{bucket}.{host}")
            };
            builder = builder.with_endpoint(endpoint);
        }
        builder.build().map_err(|e| StoreError::BadSettings {
            location: location.to_string(),
            reason: format!("cannot set up the S3 client: {}", one_line(&e.to_string())),
        })
    }
}

fn shown(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => p.display().to_string(),
        None => "(no HOME)".into(),
    }
}

/// Checks an endpoint URL (`http://HOST[:PORT]`, `https://HOST[:PORT]`) and
/// drops its trailing `/`.
fn check_endpoint(endpoint: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "the S3 endpoint {endpoint:?} is not an http://HOST[:PORT] or https://HOST[:PORT] URL"
        )
    };
    let trimmed = endpoint.trim_end_matches('/');
    let host = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(bad)?;
    if host.is_empty()
        || host.contains('/')
        || host.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad());
    }
    Ok(trimmed.to_string())
}

/// The keys of profile `name` in an AWS settings file; `None` when the file
/// or the profile is not there. In the config file a profile other than
/// `default` is `[profile NAME]`; in the credentials file it is `[NAME]`.
fn read_profile(
    path: &Path,
    name: &str,
    config: bool,
) -> Result<Option<HashMap<String, String>>, String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: cannot read it: {e}", path.display())),
    };
    let mut text = String::new();
    file.take(MAX_SETTINGS_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
    if text.len() as u64 > MAX_SETTINGS_FILE {
        return Err(format!(
            "{}: larger than {MAX_SETTINGS_FILE} bytes; is it an AWS settings file?",
            path.display()
        ));
    }
    let sections = parse_ini(&text);
    let wanted: Vec<String> = if config && name != "default" {
        vec![format!("profile {name}")]
    } else if config {
        vec!["default".into(), "profile default".into()]
    } else {
        vec![name.to_string()]
    };
    Ok(sections
        .into_iter()
        .find(|(section, _)| wanted.contains(section))
        .map(|(_, keys)| keys))
}

/// The sections of an INI file as the AWS tools write them: `[section]`
/// lines, `key = value` lines, `#` and `;` comments, and indented
/// `key = value` lines under a `key =` with no value, kept as
/// `key.subkey` (`s3 =` then `  endpoint_url = ...`). Keys are lowercased;
/// a later section of the same name adds to the earlier.
fn parse_ini(text: &str) -> Vec<(String, HashMap<String, String>)> {
    let mut sections: Vec<(String, HashMap<String, String>)> = Vec::new();
    let mut current: Option<usize> = None;
    let mut parent: Option<String> = None;
    for line in text.lines() {
        let indented = line.starts_with([' ', '\t']);
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.split_whitespace().collect::<Vec<_>>().join(" ");
            current = Some(match sections.iter().position(|(s, _)| *s == section) {
                Some(i) => i,
                None => {
                    sections.push((section, HashMap::new()));
                    sections.len() - 1
                }
            });
            parent = None;
            continue;
        }
        let (Some(i), Some((key, value))) = (current, line.split_once('=')) else {
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim().to_string();
        let keys = &mut sections[i].1;
        match &parent {
            Some(p) if indented => {
                keys.insert(format!("{p}.{key}"), value);
            }
            _ => {
                parent = value.is_empty().then(|| key.clone());
                keys.insert(key, value);
            }
        }
    }
    sections
}

/// Turns an object_store error into a [`StoreError`] that says what to
/// check. `what` names the object (or the objects) for the message; `key`
/// is the object's key when there is one.
fn classify(names: &Names, what: &str, key: Option<&str>, e: object_store::Error) -> StoreError {
    let location = names.location.clone();
    let text = e.to_string();
    let code = s3_tag(&text, "Code");
    if let (Some(s3), Some("NoSuchBucket")) = (&names.s3, code.as_deref()) {
        return StoreError::NoSuchBucket {
            location,
            bucket: s3.bucket.clone(),
            endpoint: s3.endpoint.clone(),
        };
    }
    let denied = matches!(
        code.as_deref(),
        Some(
            "InvalidAccessKeyId"
                | "NotSignedUp"
                | "SignatureDoesNotMatch"
                | "AccessDenied"
                | "ExpiredToken"
                | "InvalidToken"
                | "TokenRefreshRequired"
        )
    );
    match (&e, key) {
        (object_store::Error::AlreadyExists { .. }, Some(key)) => {
            return StoreError::Exists {
                location,
                key: key.to_string(),
            }
        }
        (object_store::Error::NotFound { .. }, Some(key)) if !denied => {
            return StoreError::NotFound {
                location,
                key: key.to_string(),
            }
        }
        _ => {}
    }
    let detail = match (&code, s3_tag(&text, "Message")) {
        (Some(code), Some(message)) => one_line(&format!("{code}: {message}")),
        (Some(code), None) => code.clone(),
        (None, _) => one_line(&text),
    };
    // Some requests' errors keep only the status in their text.
    let permission = matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || text.contains("403 Forbidden")
        || text.contains("401 Unauthorized");
    if names.s3.is_some() && (denied || permission) {
        return StoreError::AccessDenied {
            location,
            what: what.to_string(),
            detail,
        };
    }
    if let (Some(s3), Some((kind, cause))) = (&names.s3, http_failure(&e)) {
        let detail = match kind {
            HttpErrorKind::Connect => cause,
            HttpErrorKind::Timeout => format!("no answer in time: {cause}"),
            _ => format!("the connection broke: {cause}"),
        };
        if matches!(
            kind,
            HttpErrorKind::Connect
                | HttpErrorKind::Timeout
                | HttpErrorKind::Request
                | HttpErrorKind::Interrupted
        ) {
            return StoreError::Unreachable {
                location,
                endpoint: s3.endpoint.clone(),
                what: what.to_string(),
                detail: one_line(&detail),
            };
        }
    }
    StoreError::Other {
        location,
        what: what.to_string(),
        detail,
    }
}

/// The kind of the HTTP failure behind an error, and its deepest cause
/// (`Connection refused (os error 111)`).
fn http_failure(e: &object_store::Error) -> Option<(HttpErrorKind, String)> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = source {
        if let Some(http) = error.downcast_ref::<HttpError>() {
            let mut deepest: &(dyn std::error::Error + 'static) = http;
            while let Some(next) = deepest.source() {
                deepest = next;
            }
            return Some((http.kind(), deepest.to_string()));
        }
        source = error.source();
    }
    None
}

/// The text of the first `<tag>...</tag>` in an S3 error body.
fn s3_tag(text: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&close)?;
    let value = text[start..end].trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// `text` on one line of at most [`MAX_DETAIL`] characters.
fn one_line(text: &str) -> String {
    let mut out = String::new();
    for word in text.split(|c: char| c.is_whitespace() || c.is_control()) {
        if word.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    if out.chars().count() > MAX_DETAIL {
        out = out.chars().take(MAX_DETAIL).collect();
        out.push_str("...");
    }
    out
}

/// The size of part `number` (from 1) of an upload whose first parts are
/// `base` bytes: each 1000 parts twice the size of the 1000 before, up to
/// 32 times `base` from part 5001 on.
pub fn part_size(base: usize, number: u32) -> usize {
    base << (number.saturating_sub(1) / 1000).min(5)
}

/// The most an upload whose first parts are `base` bytes holds in
/// [`MAX_PARTS`] parts: 191,000 times `base` (1.46 TiB for 8 MiB parts).
pub fn upload_capacity(base: usize) -> u64 {
    (1..=MAX_PARTS).map(|n| part_size(base, n) as u64).sum()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UploadState {
    Open,
    Finished,
    /// Failed or aborted: the multipart upload was abandoned.
    Abandoned,
}

/// A streaming upload to one key, from [`Store::upload`].
///
/// The data goes into parts of [`StoreOptions::part_size`] bytes (8 MiB by
/// default): the first 1000 parts are that size, each further 1000 twice
/// the size of the 1000 before, up to 32 times it from part 5001 on
/// ([`part_size`]), so that S3's 10,000 parts hold 191,000 times the part
/// size ([`upload_capacity`]: 1.46 TiB with 8 MiB parts); a bigger object is
/// refused ([`StoreError::UploadTooLarge`]). Data that fits in one part goes
/// up in one request when the upload finishes; more goes up as a multipart
/// upload, [`StoreOptions::parts_in_flight`] parts at a time (4 by default).
///
/// Memory: the part being filled, and the parts in flight, whose count
/// drops as they grow so that they hold at most
/// `max(parts_in_flight * part_size, current part)`. With the defaults that
/// is 40 MiB up to 7.8 GiB, and at most twice the current part after (512
/// MiB from 242 GiB on).
///
/// The object appears only when [`Upload::finish`] returns. An upload
/// that fails, is aborted ([`Upload::abort`]) or is dropped unfinished
/// leaves no object under its key: its multipart upload is aborted, and on
/// a local directory its staging file (`KEY#N`) is removed. A drop waits for
/// that abort, which is retried no longer than any other request.
///
/// An upload replaces what is under its key; it has no create-only mode, as
/// object_store's multipart uploads have none.
#[derive(Debug)]
pub struct Upload {
    shared: Arc<Shared>,
    key: String,
    path: ObjectPath,
    buffer: Vec<u8>,
    multipart: Option<Box<dyn MultipartUpload>>,
    in_flight: JoinSet<Result<(), object_store::Error>>,
    /// The parts started.
    parts: u32,
    /// The bytes written.
    size: u64,
    state: UploadState,
}

impl Upload {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The parts of the multipart upload started so far.
    pub fn parts(&self) -> u32 {
        self.parts
    }

    /// Appends `data` to the object; sends a part when one is full, after
    /// waiting for room among the parts in flight. An error abandons the
    /// upload.
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        self.check_open()?;
        while !data.is_empty() {
            let part = part_size(self.shared.part_size, self.parts + 1);
            if self.buffer.len() == part {
                // A full part goes once more data comes, so that the last
                // part is never empty.
                if let Err(e) = self.send_part() {
                    self.abandon();
                    return Err(e);
                }
                continue;
            }
            if self.buffer.capacity() == 0 {
                self.buffer.reserve_exact(part);
            }
            let take = (part - self.buffer.len()).min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            self.size += take as u64;
            data = &data[take..];
        }
        Ok(())
    }

    /// Sends what is left and makes the object visible under its key,
    /// replacing what was there. An error abandons the upload.
    pub fn finish(mut self) -> Result<Stored, StoreError> {
        self.check_open()?;
        match self.complete() {
            Ok(uploaded) => {
                self.state = UploadState::Finished;
                Ok(uploaded)
            }
            Err(e) => {
                self.abandon();
                Err(e)
            }
        }
    }

    /// Abandons the upload: stops the parts in flight and aborts the
    /// multipart upload, so that nothing appears under the key.
    pub fn abort(mut self) -> Result<(), StoreError> {
        self.check_open()?;
        self.state = UploadState::Abandoned;
        let shared = Arc::clone(&self.shared);
        let mut in_flight = std::mem::take(&mut self.in_flight);
        let multipart = self.multipart.take();
        shared
            .runtime
            .block_on(async {
                // Parts still going up are let finish, not cancelled: a
                // server may still store a part whose request was cut,
                // after the abort, and keep it.
                while in_flight.join_next().await.is_some() {}
                match multipart {
                    Some(mut multipart) => multipart.abort().await,
                    None => Ok(()),
                }
            })
            .map_err(|e| shared.error(&self.key, e))
    }

    fn check_open(&self) -> Result<(), StoreError> {
        match self.state {
            UploadState::Open => Ok(()),
            _ => Err(self.shared.other(
                &self.key,
                "the upload failed or was aborted before; start a new one".into(),
            )),
        }
    }

    fn complete(&mut self) -> Result<Stored, StoreError> {
        let shared = Arc::clone(&self.shared);
        if self.multipart.is_none() {
            let data = std::mem::take(&mut self.buffer);
            let put = shared
                .runtime
                .block_on(shared.inner.put_opts(
                    &self.path,
                    PutPayload::from(data),
                    PutOptions::default(),
                ))
                .map_err(|e| shared.error(&self.key, e))?;
            return Ok(Stored {
                size: self.size,
                parts: 0,
                e_tag: put.e_tag,
            });
        }
        if !self.buffer.is_empty() {
            self.send_part()?;
        }
        while !self.in_flight.is_empty() {
            self.wait_for_part()?;
        }
        let Some(multipart) = self.multipart.as_mut() else {
            return Err(shared.other(&self.key, "the multipart upload is gone".into()));
        };
        let done = shared
            .runtime
            .block_on(multipart.complete())
            .map_err(|e| shared.error(&self.key, e))?;
        self.multipart = None;
        Ok(Stored {
            size: self.size,
            parts: self.parts,
            e_tag: done.e_tag,
        })
    }

    /// Sends the buffer as the next part.
    fn send_part(&mut self) -> Result<(), StoreError> {
        let shared = Arc::clone(&self.shared);
        if self.parts >= MAX_PARTS {
            return Err(StoreError::UploadTooLarge {
                location: shared.names.location.clone(),
                key: self.key.clone(),
                max: upload_capacity(shared.part_size),
            });
        }
        let part = part_size(shared.part_size, self.parts + 1);
        let budget = shared.parts_in_flight * shared.part_size;
        let limit = (budget / part).max(1);
        while self.in_flight.len() >= limit {
            self.wait_for_part()?;
        }
        let multipart = match &mut self.multipart {
            Some(multipart) => multipart,
            None => {
                let multipart = shared
                    .runtime
                    .block_on(
                        shared
                            .inner
                            .put_multipart_opts(&self.path, Default::default()),
                    )
                    .map_err(|e| shared.error(&self.key, e))?;
                self.multipart.insert(multipart)
            }
        };
        let data = std::mem::take(&mut self.buffer);
        // Some kinds start their work as the part is made.
        let sending = {
            let _runtime = shared.runtime.enter();
            multipart.put_part(PutPayload::from(data))
        };
        self.in_flight.spawn_on(sending, shared.runtime.handle());
        self.parts += 1;
        Ok(())
    }

    fn wait_for_part(&mut self) -> Result<(), StoreError> {
        let shared = Arc::clone(&self.shared);
        match shared.runtime.block_on(self.in_flight.join_next()) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(shared.error(&self.key, e)),
            Some(Err(e)) => Err(shared.other(&self.key, format!("sending a part: {e}"))),
        }
    }

    /// Stops the parts in flight and aborts the multipart upload, ignoring
    /// errors: the error that led here is the one to report.
    fn abandon(&mut self) {
        self.state = UploadState::Abandoned;
        self.buffer = Vec::new();
        let mut in_flight = std::mem::take(&mut self.in_flight);
        let multipart = self.multipart.take();
        self.shared.finish_in_background(async move {
            // As in abort: the parts going up finish before the abort.
            while in_flight.join_next().await.is_some() {}
            if let Some(mut multipart) = multipart {
                let _ = multipart.abort().await;
            }
        });
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.state == UploadState::Open {
            self.abandon();
        }
    }
}

/// A block being fetched: its range, and the task fetching it.
type BlockFetch = (Range<u64>, JoinHandle<Result<Bytes, object_store::Error>>);

/// A sequential reader of one object, from [`Store::reader`].
#[derive(Debug)]
pub struct Reader {
    shared: Arc<Shared>,
    key: String,
    path: ObjectPath,
    size: u64,
    e_tag: Option<String>,
    /// Where the next block to fetch starts.
    next_fetch: u64,
    /// The blocks being fetched, in order.
    fetching: VecDeque<BlockFetch>,
    /// What is left of the block being read.
    block: Bytes,
}

impl Reader {
    /// The object's size when the reader was opened.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Starts fetching blocks until [`READ_AHEAD`] + 1 are on their way.
    fn fetch_ahead(&mut self) {
        while self.fetching.len() <= READ_AHEAD && self.next_fetch < self.size {
            let end = self.size.min(self.next_fetch + READ_BLOCK as u64);
            let range = self.next_fetch..end;
            self.next_fetch = end;
            let options = GetOptions::new()
                .with_range(Some(range.clone()))
                .with_if_match(self.e_tag.clone());
            let inner = Arc::clone(&self.shared.inner);
            let path = self.path.clone();
            let fetch = self
                .shared
                .runtime
                .spawn(async move { inner.get_opts(&path, options).await?.bytes().await });
            self.fetching.push_back((range, fetch));
        }
    }

    /// The next block, or `None` at the end.
    fn next_block(&mut self) -> Result<Option<Bytes>, StoreError> {
        self.fetch_ahead();
        let Some((range, fetch)) = self.fetching.pop_front() else {
            return Ok(None);
        };
        let shared = Arc::clone(&self.shared);
        let changed = || StoreError::Changed {
            location: shared.names.location.clone(),
            key: self.key.clone(),
        };
        let bytes = match shared.runtime.block_on(fetch) {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            )) => return Err(changed()),
            Ok(Err(e)) => return Err(shared.error(&self.key, e)),
            Err(e) => return Err(shared.other(&self.key, format!("reading a block: {e}"))),
        };
        if bytes.len() as u64 != range.end - range.start {
            return Err(changed());
        }
        self.fetch_ahead();
        Ok(Some(bytes))
    }
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.block.is_empty() {
            match self.next_block() {
                Ok(Some(block)) => self.block = block,
                Ok(None) => return Ok(0),
                Err(e) => {
                    self.fetching.clear();
                    self.next_fetch = self.size;
                    return Err(io::Error::other(e));
                }
            }
        }
        let n = buf.len().min(self.block.len());
        buf[..n].copy_from_slice(&self.block[..n]);
        let _ = self.block.split_to(n);
        Ok(n)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        for (_, fetch) in self.fetching.drain(..) {
            fetch.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> String {
        let e = Location::parse(text).expect_err(text).to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains(&format!("{text:?}")), "{e}");
        e
    }

    #[test]
    fn locations() {
        assert_eq!(
            Location::parse("/srv/a").unwrap(),
            Location::Local("/srv/a".into())
        );
        assert_eq!(
            Location::parse("rel/dir").unwrap(),
            Location::Local("rel/dir".into())
        );
        assert_eq!(
            Location::parse("file:///srv/my%20archive").unwrap(),
            Location::Local("/srv/my archive".into())
        );
        assert_eq!(
            Location::parse("s3://bk-1.x").unwrap(),
            Location::S3 {
                bucket: "bk-1.x".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            Location::parse("s3://bucket/a/b/").unwrap(),
            Location::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            Location::parse("s3://bucket/a/b").unwrap().to_string(),
            "s3://bucket/a/b"
        );
        assert!(parse_err("http://host/x").contains("http:// is not supported"));
        assert!(parse_err("s3://").contains("no bucket name"));
        assert!(parse_err("s3:///p").contains("no bucket name"));
        assert!(parse_err("s3:bucket").contains("s3://BUCKET"));
        assert!(parse_err("s3://My_Bucket").contains("bucket name \"My_Bucket\""));
        assert!(parse_err("s3://ab").contains("3 to 63"));
        assert!(parse_err(&format!("s3://{}", "a".repeat(64))).contains("3 to 63"));
        assert!(parse_err("s3://-abc").contains("starting and ending"));
        assert!(parse_err("s3://a..b").contains("bucket name"));
        assert!(parse_err("s3://192.168.1.1").contains("IP address"));
        assert!(parse_err("s3://bucket/a//b").contains("empty segment"));
        assert!(parse_err("s3://bucket/../b").contains("\"..\""));
        assert!(parse_err("file://host/dir").contains("file:///DIR"));
        assert!(parse_err("file:///a%zz").contains("%-escape"));
        assert!(parse_err("").contains("empty"));
        assert!(parse_err("/a\nb").contains("control"));
    }

    #[test]
    fn keys() {
        assert!(check_key("vg0/root/catalogue.json").is_ok());
        assert!(check_key("a b/ünïcode").is_ok());
        for (key, why) in [
            ("", "empty"),
            ("/a", "empty segment"),
            ("a/", "empty segment"),
            ("a//b", "empty segment"),
            ("a/../b", "\"..\""),
            ("./b", "\".\""),
            ("a\tb", "control"),
            ("a#1", "'#'"),
        ] {
            let e = check_key(key).expect_err(key);
            assert!(e.contains(why), "{key:?}: {e}");
        }
        assert!(check_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
        assert!(check_key(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
    }

    #[test]
    fn part_sizes_grow_to_hold_big_objects() {
        let mib = 1 << 20;
        assert_eq!(part_size(8 * mib, 1), 8 * mib);
        assert_eq!(part_size(8 * mib, 1000), 8 * mib);
        assert_eq!(part_size(8 * mib, 1001), 16 * mib);
        assert_eq!(part_size(8 * mib, 5001), 256 * mib);
        assert_eq!(part_size(8 * mib, MAX_PARTS), 256 * mib);
        assert_eq!(upload_capacity(8 * mib), 191_000 * 8 * mib as u64);
        // S3's largest part is 5 GiB.
        assert!(part_size(MAX_PART_SIZE, MAX_PARTS) as u64 <= 5 << 30);
    }

    #[test]
    fn ini_files() {
        let text = "# comment\n[default]\nregion = eu-west-1\n; other\n[profile lab]\n\
                    aws_access_key_id=AK\nAWS_Secret_Access_Key = SK \ns3 =\n  endpoint_url = http://minio:9000\n\
                    region=lab-1\n[ profile  lab ]\naws_session_token = T\n";
        let sections = parse_ini(text);
        assert_eq!(sections.len(), 2);
        let lab = &sections[1].1;
        assert_eq!(sections[1].0, "profile lab");
        assert_eq!(lab["aws_access_key_id"], "AK");
        assert_eq!(lab["aws_secret_access_key"], "SK");
        assert_eq!(lab["s3.endpoint_url"], "http://minio:9000");
        assert_eq!(lab["region"], "lab-1");
        assert_eq!(lab["aws_session_token"], "T");
        assert!(!lab.contains_key("endpoint_url"));
    }

    /// A fake home with AWS settings files, and an environment over it.
    struct Home(PathBuf);

    impl Home {
        fn new(name: &str, credentials: &str, config: &str) -> Home {
            let dir =
                std::env::temp_dir().join(format!("lvmsync-store-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join(".aws")).unwrap();
            std::fs::write(dir.join(".aws/credentials"), credentials).unwrap();
            std::fs::write(dir.join(".aws/config"), config).unwrap();
            Home(dir)
        }

        fn resolve(
            &self,
            vars: &[(&str, &str)],
            options: &StoreOptions,
        ) -> Result<S3Settings, StoreError> {
            let mut env: HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            env.insert("HOME".into(), self.0.display().to_string());
            S3Settings::resolve("s3://bucket", "bucket", options, &|var| {
                env.get(var).cloned()
            })
        }
    }

    impl Drop for Home {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn s3_settings_from_environment_profile_and_options() {
        let home = Home::new(
            "settings",
            "[default]\naws_access_key_id = DAK\naws_secret_access_key = DSK\n\
             [lab]\naws_access_key_id = LAK\naws_secret_access_key = LSK\naws_session_token = LT\n",
            "[default]\nregion = eu-west-3\n[profile lab]\nregion = lab-1\nendpoint_url = https://rgw.lab/\n",
        );
        let defaults = StoreOptions::default();

        // The default profile.
        let s = home.resolve(&[], &defaults).unwrap();
        assert_eq!(s.credentials.access_key_id, "DAK");
        assert_eq!(s.credentials.secret_access_key, "DSK");
        assert_eq!(s.region, "eu-west-3");
        assert_eq!(s.endpoint, None);
        assert!(!s.path_style);
        assert_eq!(s.endpoint_name(), "https://s3.eu-west-3.amazonaws.com");

        // AWS_PROFILE; its endpoint turns path style on.
        let s = home.resolve(&[("AWS_PROFILE", "lab")], &defaults).unwrap();
        assert_eq!(s.credentials.access_key_id, "LAK");
        assert_eq!(s.credentials.session_token.as_deref(), Some("LT"));
        assert_eq!(s.region, "lab-1");
        assert_eq!(s.endpoint.as_deref(), Some("https://rgw.lab"));
        assert!(s.path_style);

        // The environment before the profile.
        let vars = [
            ("AWS_PROFILE", "lab"),
            ("AWS_ACCESS_KEY_ID", "EAK"),
            ("AWS_SECRET_ACCESS_KEY", "ESK"),
            ("AWS_DEFAULT_REGION", "env-2"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
        ];
        let s = home.resolve(&vars, &defaults).unwrap();
        assert_eq!(s.credentials.access_key_id, "EAK");
        assert_eq!(s.credentials.session_token, None);
        assert_eq!(s.region, "env-2");
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        let mut more = vars.to_vec();
        more.extend([
            ("AWS_REGION", "env-1"),
            ("AWS_ENDPOINT_URL_S3", "http://s3.local"),
        ]);
        let s = home.resolve(&more, &defaults).unwrap();
        assert_eq!(s.region, "env-1");
        assert_eq!(s.endpoint.as_deref(), Some("http://s3.local"));

        // The options before everything.
        let options = StoreOptions {
            endpoint: Some("http://10.0.0.1:3900".into()),
            region: Some("garage".into()),
            path_style: Some(false),
            credentials: Some(S3Credentials {
                access_key_id: "OAK".into(),
                secret_access_key: "OSK".into(),
                session_token: None,
            }),
            ..StoreOptions::default()
        };
        let s = home.resolve(&more, &options).unwrap();
        assert_eq!(s.credentials.access_key_id, "OAK");
        assert_eq!((s.region.as_str(), s.path_style), ("garage", false));
        assert_eq!(s.endpoint.as_deref(), Some("http://10.0.0.1:3900"));

        // Mistakes.
        let e = home
            .resolve(&[("AWS_PROFILE", "nope")], &defaults)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("profile \"nope\"") && e.contains(".aws/credentials"),
            "{e}"
        );
        let e = home
            .resolve(&[("AWS_ENDPOINT_URL", "ftp://x")], &defaults)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"ftp://x\"") && e.contains("http://HOST"),
            "{e}"
        );
        let bare = Home::new("bare", "", "");
        let e = bare.resolve(&[], &defaults).unwrap_err();
        assert!(matches!(e, StoreError::NoCredentials { .. }), "{e}");
        assert!(e.to_string().contains("AWS_ACCESS_KEY_ID"));
        let s = bare
            .resolve(
                &[("AWS_ACCESS_KEY_ID", "A"), ("AWS_SECRET_ACCESS_KEY", "S")],
                &defaults,
            )
            .unwrap();
        assert_eq!(s.region, DEFAULT_REGION);
    }

    #[test]
    fn credentials_hide_their_secret() {
        let c = S3Credentials {
            access_key_id: "AK".into(),
            secret_access_key: "very-secret".into(),
            session_token: Some("session-1234".into()),
        };
        let shown = format!("{c:?}");
        assert!(
            shown.contains("AK")
                && !shown.contains("very-secret")
                && !shown.contains("session-1234")
        );
    }

    #[test]
    fn errors_are_one_line() {
        assert_eq!(one_line(" a\n b\r\n\tc "), "a b c");
        assert_eq!(one_line(&"x".repeat(MAX_DETAIL + 5)).len(), MAX_DETAIL + 3);
        let body = "Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?>\n<Error><Code>SignatureDoesNotMatch</Code><Message>The request\nsignature</Message></Error>";
        assert_eq!(
            s3_tag(body, "Code").as_deref(),
            Some("SignatureDoesNotMatch")
        );
        assert_eq!(
            s3_tag(body, "Message").as_deref(),
            Some("The request\nsignature")
        );
        assert_eq!(s3_tag("no tags", "Code"), None);
    }
}
