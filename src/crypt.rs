//! Encryption at rest: an envelope around a byte stream (a delta file, an
//! archive object) that keeps it private and makes any change to it
//! detected before a byte of it is used.
//!
//! The construction is age's STREAM (Hoang, Reyhanitabar, Rogaway and
//! Vizár, "Online authenticated-encryption and its nonce-reuse
//! misuse-resistance"): a header, then the plaintext cut into chunks of
//! [`CHUNK`] bytes, each sealed on its own with AES-256-GCM under a key of
//! the stream's own (HKDF-SHA-256 of the user's key, the stream's random id
//! and, for an archive object, the archive and the object's name). A
//! chunk's nonce is its number and a flag for the last chunk, and every
//! chunk authenticates the header, so chunks cannot be reordered, dropped,
//! repeated, cut off at the end or taken from another stream or object
//! without the reader noticing; a reader releases a chunk's bytes only
//! once its tag has been checked. All chunks but the last hold exactly
//! [`CHUNK`] bytes and the last fewer (possibly none), so a plaintext
//! offset maps to a ciphertext range and single records of an archive's
//! deltas can still be read by byte range.
//!
//! The byte layout is docs/FORMAT.md, "The encryption envelope".

use std::fmt;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

/// The envelope's magic: like a delta's, but `E` for `D`.
pub const MAGIC: [u8; 8] = *b"\x89LVMSE\r\n";
/// The envelope's version.
pub const VERSION: u32 = 1;
/// The header's length.
pub const HEADER_LEN: usize = 96;
/// Plaintext bytes in every chunk but the last.
pub const CHUNK: usize = 64 << 10;
/// The tag after each chunk.
pub const TAG: usize = 16;
/// A sealed full chunk.
pub const SEALED: usize = CHUNK + TAG;
/// The one algorithm: AES-256-GCM.
pub const AEAD_AES256GCM: u8 = 1;
/// Key kinds: a key (a key file, an archive's key) or a passphrase.
pub const KIND_KEY: u8 = 1;
pub const KIND_PASSPHRASE: u8 = 2;
/// Argon2id's settings for a new passphrase-derived key: 64 MiB, 3 passes,
/// one lane (RFC 9106's second recommendation, with one lane).
pub const ARGON2_M_KIB: u32 = 64 << 10;
pub const ARGON2_T: u32 = 3;
pub const ARGON2_P: u32 = 1;
/// The most a header may ask Argon2id for: 1 GiB, 16 passes, 8 lanes.
const MAX_M_KIB: u32 = 1 << 20;
const MAX_T: u32 = 16;
const MAX_P: u32 = 8;
/// The environment variable a passphrase may come from.
pub const PASSPHRASE_ENV: &str = "LVMSYNC_PASSPHRASE";
/// The first line of a key file.
const KEY_FILE_TAG: &str = "lvmsync-rs key 1";

#[derive(Debug, Error)]
pub enum CryptError {
    #[error("{name}: encrypted with {with}; give {how}")]
    NoKey {
        name: String,
        with: &'static str,
        how: &'static str,
    },
    #[error("{name}: encrypted with another key (key id {found}); the key given has id {given}")]
    WrongKey {
        name: String,
        found: String,
        given: String,
    },
    #[error("{name}: wrong passphrase (it does not give the key this was encrypted with)")]
    WrongPassphrase { name: String },
    #[error("{name}: damaged encryption header: {reason}")]
    DamagedHeader { name: String, reason: String },
    #[error("{name}: encryption envelope version {found}, but this lvmsync-rs reads version {VERSION} only")]
    UnknownVersion { name: String, found: u32 },
    #[error("{name}: {reason}")]
    Damaged { name: String, reason: String },
    #[error("{path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("passphrase: {0}")]
    Passphrase(String),
    #[error("{0}")]
    Usage(String),
    #[error("no random numbers from the system: {0}")]
    Random(String),
}

impl CryptError {
    /// What kind of failure it is: a missing key or passphrase, an
    /// unreadable key file, is the command line's; a key that does not
    /// open the data is refused; data that fails its checks is damaged.
    pub fn kind(&self) -> crate::error::Kind {
        use crate::error::Kind;
        match self {
            CryptError::NoKey { .. }
            | CryptError::KeyFile { .. }
            | CryptError::Passphrase(_)
            | CryptError::Usage(_) => Kind::Usage,
            CryptError::WrongKey { .. }
            | CryptError::WrongPassphrase { .. }
            | CryptError::UnknownVersion { .. } => Kind::Refused,
            CryptError::DamagedHeader { .. } | CryptError::Damaged { .. } => Kind::Damaged,
            CryptError::Random(_) => Kind::Failed,
        }
    }
}

/// Random bytes from the system.
pub fn random<const N: usize>() -> Result<[u8; N], CryptError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| CryptError::Random(e.to_string()))?;
    Ok(b)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from hex, exactly `N` of them.
pub fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in text.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// A 256-bit key, wiped when dropped.
#[derive(Clone)]
pub struct Key(Zeroizing<[u8; 32]>);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(id {})", hex(&self.id()))
    }
}

impl Key {
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(Zeroizing::new(bytes))
    }

    pub fn random() -> Result<Key, CryptError> {
        Ok(Key::from_bytes(random()?))
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key derived from `passphrase` with Argon2id.
    pub fn from_passphrase(
        passphrase: &[u8],
        salt: &[u8; 16],
        m_kib: u32,
        t: u32,
        p: u32,
    ) -> Result<Key, String> {
        if m_kib > MAX_M_KIB || t > MAX_T || p > MAX_P {
            return Err(format!(
                "Argon2id settings of {m_kib} KiB, {t} passes, {p} lanes: more than the {MAX_M_KIB} KiB, {MAX_T} passes, {MAX_P} lanes this lvmsync-rs allows"
            ));
        }
        let params = argon2::Params::new(m_kib, t, p, Some(32)).map_err(|e| e.to_string())?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase, salt, &mut out[..])
            .map_err(|e| e.to_string())?;
        Ok(Key(out))
    }

    fn expand(&self, salt: Option<&[u8]>, info: &[&[u8]], out: &mut [u8]) {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(salt, &self.0[..]);
        hk.expand_multi_info(info, out)
            .expect("HKDF gives 32 bytes and less");
    }

    /// The key's id: a public name for it (HKDF of the key, so it tells
    /// nothing of it), which a header carries so that a wrong key is told
    /// from damaged data.
    pub fn id(&self) -> [u8; 16] {
        let mut id = [0u8; 16];
        self.expand(None, &[b"lvmsync-rs key id 1"], &mut id);
        id
    }

    /// The AEAD of one stream.
    fn stream_cipher(&self, stream_id: &[u8; 16], context: &[u8]) -> Cipher {
        let mut k = Zeroizing::new([0u8; 32]);
        self.expand(
            Some(stream_id),
            &[b"lvmsync-rs stream 1\0", context],
            &mut k[..],
        );
        Cipher::new(&k)
    }

    /// A cipher for wrapping another key (an archive's).
    pub fn wrap_cipher(&self, context: &[u8]) -> Cipher {
        let mut k = Zeroizing::new([0u8; 32]);
        self.expand(None, &[b"lvmsync-rs key wrap 1\0", context], &mut k[..]);
        Cipher::new(&k)
    }
}

/// AES-256-GCM with one key (AWS-LC's implementation, which uses the
/// CPU's AES and carry-less multiply instructions, wide ones where there
/// are: several times the speed of a portable one).
#[derive(Clone)]
pub struct Cipher(std::sync::Arc<LessSafeKey>);

impl Cipher {
    fn new(key: &[u8; 32]) -> Cipher {
        let key = UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key is AES-256's");
        Cipher(std::sync::Arc::new(LessSafeKey::new(key)))
    }

    /// Encrypts `data` in place; returns its tag.
    pub fn seal(&self, nonce: [u8; 12], aad: &[u8], data: &mut [u8]) -> [u8; TAG] {
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), data)
            .expect("a chunk is far below AES-GCM's limit");
        tag.as_ref().try_into().expect("a 16-byte tag")
    }

    /// Opens `sealed` (ciphertext, then its tag) in place: true when it
    /// authenticates, and then the plaintext is its first bytes (all but
    /// the tag's); else false, and `sealed` is wiped.
    pub fn open(&self, nonce: [u8; 12], aad: &[u8], sealed: &mut [u8]) -> bool {
        let ok = sealed.len() >= TAG
            && self
                .0
                .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), sealed)
                .is_ok();
        if !ok {
            sealed.zeroize();
        }
        ok
    }
}

/// What the user gave to open encrypted data: a key file, a passphrase,
/// both or neither. The passphrase is read when first needed.
#[derive(Debug, Default, Clone)]
pub struct Secrets {
    pub key_file: Option<PathBuf>,
    pub passphrase: PassphraseFrom,
}

/// Where a passphrase comes from.
#[derive(Default, Clone)]
pub enum PassphraseFrom {
    /// `LVMSYNC_PASSPHRASE`, if set.
    #[default]
    Env,
    File(PathBuf),
    Fd(i32),
    /// Given by the program (tests, the library's callers).
    Given(Zeroizing<Vec<u8>>),
}

impl fmt::Debug for PassphraseFrom {
    // Never the passphrase itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PassphraseFrom::Env => write!(f, "Env"),
            PassphraseFrom::File(p) => write!(f, "File({})", p.display()),
            PassphraseFrom::Fd(fd) => write!(f, "Fd({fd})"),
            PassphraseFrom::Given(_) => write!(f, "Given(..)"),
        }
    }
}

impl Secrets {
    /// The key file's key, if a key file was named.
    pub fn key(&self) -> Result<Option<Key>, CryptError> {
        self.key_file.as_deref().map(read_key_file).transpose()
    }

    /// The passphrase, if one was given (an empty one is refused).
    pub fn passphrase(&self) -> Result<Option<Zeroizing<Vec<u8>>>, CryptError> {
        let mut text = match &self.passphrase {
            PassphraseFrom::Env => match std::env::var_os(PASSPHRASE_ENV) {
                Some(v) => Zeroizing::new(std::os::unix::ffi::OsStringExt::into_vec(v)),
                None => return Ok(None),
            },
            PassphraseFrom::Given(p) => p.clone(),
            PassphraseFrom::File(path) => {
                let body = crate::files::read_capped(path, 4096)
                    .map_err(|e| CryptError::Passphrase(format!("{}: {e}", path.display())))?;
                Zeroizing::new(body.ok_or_else(|| {
                    CryptError::Passphrase(format!("{}: no such file", path.display()))
                })?)
            }
            PassphraseFrom::Fd(fd) => {
                use std::os::fd::FromRawFd;
                if *fd < 0 {
                    return Err(CryptError::Passphrase(format!(
                        "{fd} is no file descriptor"
                    )));
                }
                let dup = nix::unistd::dup(*fd)
                    .map_err(|e| CryptError::Passphrase(format!("file descriptor {fd}: {e}")))?;
                // SAFETY: `dup` just made this descriptor, which nothing else owns.
                let file = unsafe { std::fs::File::from_raw_fd(dup) };
                let mut body = Zeroizing::new(Vec::new());
                file.take(4097)
                    .read_to_end(&mut body)
                    .map_err(|e| CryptError::Passphrase(format!("file descriptor {fd}: {e}")))?;
                if body.len() > 4096 {
                    return Err(CryptError::Passphrase(format!(
                        "file descriptor {fd}: more than 4096 bytes"
                    )));
                }
                body
            }
        };
        // One line: a trailing newline is not part of it.
        while text.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
            text.pop();
        }
        if text.is_empty() {
            return Err(CryptError::Passphrase("it is empty".into()));
        }
        Ok(Some(text))
    }
}

/// Reads a key file: `lvmsync-rs key 1` on the first line, 64 hex digits on
/// the second.
pub fn read_key_file(path: &Path) -> Result<Key, CryptError> {
    let err = |reason: String| CryptError::KeyFile {
        path: path.display().to_string(),
        reason,
    };
    let body = Zeroizing::new(
        crate::files::read_capped(path, 4096)
            .map_err(|e| err(format!("cannot read the key file: {e}")))?
            .ok_or_else(|| err("no such key file".into()))?,
    );
    let text = std::str::from_utf8(&body).map_err(|_| err("not a key file".into()))?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.starts_with('#'));
    if lines.next() != Some(KEY_FILE_TAG) {
        return Err(err(format!(
            "not a key file (the first line of one is '{KEY_FILE_TAG}')"
        )));
    }
    let key = lines
        .next()
        .and_then(unhex::<32>)
        .ok_or_else(|| err("damaged key file: the key is not 64 hex digits".into()))?;
    Ok(Key::from_bytes(key))
}

/// A key file's text.
pub fn key_file_text(key: &Key) -> Zeroizing<String> {
    Zeroizing::new(format!(
        "{KEY_FILE_TAG}\n{}\n# key id {}: keep a copy of this file apart from the data it opens\n",
        hex(key.bytes()),
        hex(&key.id())
    ))
}

/// Writes `key` to a new key file at `path`: created exclusively (an
/// existing file, or a symlink, is never written through), mode 0600.
pub fn write_key_file(path: &Path, key: &Key) -> Result<(), CryptError> {
    let err = |reason: String| CryptError::KeyFile {
        path: path.display().to_string(),
        reason,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                err("exists already; a key file is never overwritten".into())
            } else {
                err(format!("cannot create: {e}"))
            }
        })?;
    let text = key_file_text(key);
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(err(format!("cannot write: {e}")));
    }
    let _ = crate::files::sync_parent(path);
    Ok(())
}

/// An envelope's header, as read or about to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub kind: u8,
    pub stream_id: [u8; 16],
    pub key_id: [u8; 16],
    pub salt: [u8; 16],
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl Envelope {
    /// A new envelope for `key`, with a fresh stream id.
    pub fn for_key(key: &Key) -> Result<Envelope, CryptError> {
        Ok(Envelope {
            kind: KIND_KEY,
            stream_id: random()?,
            key_id: key.id(),
            salt: [0; 16],
            m_kib: 0,
            t: 0,
            p: 0,
        })
    }

    /// A new envelope for a key derived from `passphrase` with a fresh salt;
    /// the key too.
    pub fn for_passphrase(passphrase: &[u8]) -> Result<(Envelope, Key), CryptError> {
        let salt = random()?;
        let key = Key::from_passphrase(passphrase, &salt, ARGON2_M_KIB, ARGON2_T, ARGON2_P)
            .map_err(CryptError::Passphrase)?;
        Ok((
            Envelope {
                kind: KIND_PASSPHRASE,
                stream_id: random()?,
                key_id: key.id(),
                salt,
                m_kib: ARGON2_M_KIB,
                t: ARGON2_T,
                p: ARGON2_P,
            },
            key,
        ))
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12] = AEAD_AES256GCM;
        h[13] = self.kind;
        h[16..20].copy_from_slice(&(CHUNK as u32).to_le_bytes());
        h[24..40].copy_from_slice(&self.stream_id);
        h[40..56].copy_from_slice(&self.key_id);
        h[56..72].copy_from_slice(&self.salt);
        h[72..76].copy_from_slice(&self.m_kib.to_le_bytes());
        h[76..80].copy_from_slice(&self.t.to_le_bytes());
        h[80..84].copy_from_slice(&self.p.to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&h[..88]);
        h[88..96].copy_from_slice(&sum.to_le_bytes());
        h
    }

    /// Reads a header (`bytes` starts with [`MAGIC`] and holds
    /// [`HEADER_LEN`] bytes).
    pub fn decode(name: &str, h: &[u8]) -> Result<Envelope, CryptError> {
        let damaged = |reason: &str| CryptError::DamagedHeader {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        if h.len() < HEADER_LEN {
            return Err(damaged(&format!(
                "the input ends at byte {}, inside the {HEADER_LEN}-byte header",
                h.len()
            )));
        }
        if h[0..8] != MAGIC {
            return Err(damaged("no envelope magic"));
        }
        let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
        let sum = u64::from_le_bytes(h[88..96].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if sum != xxhash_rust::xxh3::xxh3_64(&h[..88]) {
            return Err(damaged("checksum mismatch"));
        }
        if version != VERSION {
            return Err(CryptError::UnknownVersion {
                name: name.to_string(),
                found: version,
            });
        }
        if h[12] != AEAD_AES256GCM {
            return Err(damaged(&format!("unknown algorithm {}", h[12])));
        }
        if h[13] != KIND_KEY && h[13] != KIND_PASSPHRASE {
            return Err(damaged(&format!("unknown key kind {}", h[13])));
        }
        if u32_at(16) as usize != CHUNK {
            return Err(damaged(&format!("chunk size {}, not {CHUNK}", u32_at(16))));
        }
        if h[14..16] != [0, 0] || h[20..24] != [0; 4] || h[84..88] != [0; 4] {
            return Err(damaged("reserved bytes are not zero"));
        }
        let mut e = Envelope {
            kind: h[13],
            stream_id: h[24..40].try_into().expect("16 bytes"),
            key_id: h[40..56].try_into().expect("16 bytes"),
            salt: h[56..72].try_into().expect("16 bytes"),
            m_kib: u32_at(72),
            t: u32_at(76),
            p: u32_at(80),
        };
        if e.kind == KIND_KEY && (e.salt != [0; 16] || e.m_kib != 0 || e.t != 0 || e.p != 0) {
            return Err(damaged("a key's header with passphrase settings"));
        }
        if e.kind == KIND_KEY {
            e.salt = [0; 16];
        }
        Ok(e)
    }

    /// The key that opens this envelope, from what the user gave: checked
    /// against the header's key id.
    pub fn key(&self, name: &str, secrets: &Secrets) -> Result<Key, CryptError> {
        match self.kind {
            KIND_PASSPHRASE => {
                let Some(pass) = secrets.passphrase()? else {
                    return Err(CryptError::NoKey {
                        name: name.to_string(),
                        with: "a passphrase",
                        how: "it with --passphrase-file FILE, --passphrase-fd N or LVMSYNC_PASSPHRASE",
                    });
                };
                let key = Key::from_passphrase(&pass, &self.salt, self.m_kib, self.t, self.p)
                    .map_err(|reason| CryptError::DamagedHeader {
                        name: name.to_string(),
                        reason,
                    })?;
                if key.id() != self.key_id {
                    return Err(CryptError::WrongPassphrase {
                        name: name.to_string(),
                    });
                }
                Ok(key)
            }
            _ => {
                let Some(key) = secrets.key()? else {
                    return Err(CryptError::NoKey {
                        name: name.to_string(),
                        with: "a key",
                        how: "its key file with --key-file FILE",
                    });
                };
                self.check_key(name, &key)?;
                Ok(key)
            }
        }
    }

    /// Refuses a key other than the header's.
    pub fn check_key(&self, name: &str, key: &Key) -> Result<(), CryptError> {
        if key.id() != self.key_id {
            return Err(CryptError::WrongKey {
                name: name.to_string(),
                found: hex(&self.key_id),
                given: hex(&key.id()),
            });
        }
        Ok(())
    }
}

/// The sealing and opening of one stream's chunks.
#[derive(Clone)]
pub struct Stream {
    header: [u8; HEADER_LEN],
    cipher: Cipher,
}

impl Stream {
    /// The stream `envelope` heads, opened with `key` (its key id is not
    /// checked here: see [`Envelope::key`]). `context` binds the stream to
    /// where it is kept (an archive object's name), empty for a file.
    pub fn new(envelope: &Envelope, key: &Key, context: &[u8]) -> Stream {
        Stream {
            header: envelope.encode(),
            cipher: key.stream_cipher(&envelope.stream_id, context),
        }
    }

    pub fn header(&self) -> &[u8; HEADER_LEN] {
        &self.header
    }

    fn nonce(index: u64, last: bool) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[3..11].copy_from_slice(&index.to_be_bytes());
        n[11] = u8::from(last);
        n
    }

    /// Seals chunk `index` in place; returns its tag.
    pub fn seal(&self, index: u64, last: bool, chunk: &mut [u8]) -> [u8; TAG] {
        self.cipher
            .seal(Stream::nonce(index, last), &self.header, chunk)
    }

    /// Opens sealed chunk `index` (its ciphertext, then its tag) in place:
    /// true when it authenticates, and then its plaintext is its first
    /// bytes; false when it does not, and then it is wiped.
    pub fn open(&self, index: u64, last: bool, sealed: &mut [u8]) -> bool {
        self.cipher
            .open(Stream::nonce(index, last), &self.header, sealed)
    }
}

/// The length of the envelope that holds `plain` bytes.
pub fn sealed_len(plain: u64) -> u64 {
    HEADER_LEN as u64 + plain + (plain / CHUNK as u64 + 1) * TAG as u64
}

/// The plaintext length an envelope of `sealed` bytes holds; none when no
/// envelope has that length.
pub fn plain_len(sealed: u64) -> Option<u64> {
    let body = sealed.checked_sub(HEADER_LEN as u64)?;
    let (full, rest) = (body / SEALED as u64, body % SEALED as u64);
    let rest = rest.checked_sub(TAG as u64)?;
    Some(full * CHUNK as u64 + rest)
}

/// The chunks that hold `plain` (a range of plaintext offsets) and the
/// envelope's bytes that hold those chunks, in a stream of `total` plain
/// bytes.
pub fn sealed_range(plain: &Range<u64>, total: u64) -> (Range<u64>, Range<u64>) {
    let c = CHUNK as u64;
    let first = plain.start / c;
    let last = if plain.end > plain.start {
        (plain.end - 1) / c
    } else {
        first
    };
    let last = last.min(total / c);
    let start = HEADER_LEN as u64 + first * SEALED as u64;
    let end = (HEADER_LEN as u64 + (last + 1) * SEALED as u64).min(sealed_len(total));
    (first..last + 1, start..end)
}

/// Opens the chunks `chunks` of a stream of `total` plain bytes, read as
/// `sealed` (the bytes [`sealed_range`] names), and returns their
/// plaintext, which starts at plaintext offset `chunks.start * CHUNK`.
pub fn open_chunks(
    stream: &Stream,
    chunks: Range<u64>,
    mut sealed: Vec<u8>,
    total: u64,
) -> Result<Vec<u8>, String> {
    let last_chunk = total / CHUNK as u64;
    let mut out = 0usize;
    let mut at = 0usize;
    for index in chunks {
        let last = index == last_chunk;
        let len = if last {
            (total % CHUNK as u64) as usize
        } else {
            CHUNK
        };
        if sealed.len() < at + len + TAG {
            return Err(format!("chunk {index} is cut short"));
        }
        if !stream.open(index, last, &mut sealed[at..at + len + TAG]) {
            return Err(format!(
                "chunk {index} fails authentication: damaged, altered, or not of this object"
            ));
        }
        sealed.copy_within(at..at + len, out);
        out += len;
        at += len + TAG;
    }
    if at != sealed.len() {
        return Err("bytes past the chunks read".into());
    }
    sealed.truncate(out);
    Ok(sealed)
}

/// Chunks handed to the helper thread at once (a segment), and segments
/// in flight: fewer, larger hand-overs wake the threads less often.
const SEG: usize = 4;
const DEPTH: usize = 2;

/// A segment back from the worker: whether it ends with the last chunk,
/// the bytes sealed or opened, and (opening) the chunk that failed, with
/// its sealed length, after the chunks before it that opened.
type Done = (bool, Vec<u8>, Option<(u64, usize)>);

/// A thread that seals or opens segments of chunks in the order they
/// come, so that the AEAD runs beside the thread that reads or writes the
/// stream.
struct Worker {
    to: Option<mpsc::SyncSender<(u64, bool, Vec<u8>)>>,
    from: mpsc::Receiver<Done>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Seals a segment: the plaintext of full chunks from `index` on and,
/// when `last`, the last chunk (shorter than a chunk, maybe empty).
fn seal_segment(stream: &Stream, mut index: u64, last: bool, plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(plain.len() + TAG * (plain.len() / CHUNK + 1));
    let mut rest = plain;
    while rest.len() >= CHUNK || (!rest.is_empty() && !last) {
        let n = rest.len().min(CHUNK);
        let start = out.len();
        out.extend_from_slice(&rest[..n]);
        let tag = stream.seal(index, false, &mut out[start..]);
        out.extend_from_slice(&tag);
        rest = &rest[n..];
        index += 1;
    }
    if last {
        let start = out.len();
        out.extend_from_slice(rest);
        let tag = stream.seal(index, true, &mut out[start..]);
        out.extend_from_slice(&tag);
    }
    out
}

/// Opens a segment in place: sealed full chunks from `index` on and, when
/// `last`, the last chunk. Returns the plaintext of the chunks that
/// opened, up to the first that did not, and that one.
fn open_segment(
    stream: &Stream,
    mut index: u64,
    last: bool,
    mut data: Vec<u8>,
) -> (Vec<u8>, Option<(u64, usize)>) {
    let (mut at, mut out) = (0usize, 0usize);
    while at < data.len() {
        let n = (data.len() - at).min(SEALED);
        let is_last = last && n < SEALED;
        if n < TAG || !stream.open(index, is_last, &mut data[at..at + n]) {
            data.truncate(out);
            return (data, Some((index, n)));
        }
        data.copy_within(at..at + n - TAG, out);
        out += n - TAG;
        at += n;
        index += 1;
    }
    data.truncate(out);
    (data, None)
}

impl Worker {
    /// `seal`: a worker that seals segments, else one that opens them.
    fn new(stream: Stream, seal: bool) -> Worker {
        let (to, rx) = mpsc::sync_channel::<(u64, bool, Vec<u8>)>(DEPTH);
        let (tx, from) = mpsc::sync_channel(DEPTH);
        let thread = std::thread::spawn(move || {
            while let Ok((index, last, data)) = rx.recv() {
                let done = if seal {
                    (last, seal_segment(&stream, index, last, &data), None)
                } else {
                    let (plain, failed) = open_segment(&stream, index, last, data);
                    (last, plain, failed)
                };
                if tx.send(done).is_err() {
                    return;
                }
            }
        });
        Worker {
            to: Some(to),
            from,
            thread: Some(thread),
        }
    }

    fn send(&self, index: u64, last: bool, data: Vec<u8>) -> io::Result<()> {
        self.to
            .as_ref()
            .and_then(|to| to.send((index, last, data)).ok())
            .ok_or_else(|| io::Error::other("the encryption thread stopped"))
    }

    fn recv(&self) -> io::Result<Done> {
        self.from
            .recv()
            .map_err(|_| io::Error::other("the encryption thread stopped"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.to = None;
        // Let it finish the segment it holds and see the closed channel.
        while self.from.recv().is_ok() {}
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Seals what is written to it into an envelope written to `inner`.
/// [`SealWriter::finish`] seals the last chunk: without it the envelope is
/// incomplete, and a reader says so. Chunks are sealed on a thread of
/// their own, in order, while the next ones are written.
pub struct SealWriter<W: Write> {
    inner: Option<W>,
    worker: Worker,
    buf: Zeroizing<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    /// The first chunk of the next segment.
    index: u64,
    in_flight: usize,
    plain: u64,
}

impl<W: Write> SealWriter<W> {
    /// Writes the header now.
    pub fn new(mut inner: W, stream: Stream) -> io::Result<SealWriter<W>> {
        inner.write_all(stream.header())?;
        Ok(SealWriter {
            inner: Some(inner),
            worker: Worker::new(stream, true),
            buf: Zeroizing::new(Vec::with_capacity(SEG * CHUNK)),
            spare: Vec::new(),
            index: 0,
            in_flight: 0,
            plain: 0,
        })
    }

    /// Writes the next sealed segment, waiting for it.
    fn write_one(&mut self) -> io::Result<()> {
        let (_, mut sealed, _) = self.worker.recv()?;
        self.in_flight -= 1;
        let inner = self.inner.as_mut().expect("written before finish");
        inner.write_all(&sealed)?;
        sealed.clear();
        self.spare.push(sealed);
        Ok(())
    }

    fn seal_segment(&mut self, last: bool) -> io::Result<()> {
        let next = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(SEG * SEALED));
        let segment = std::mem::replace(&mut *self.buf, next);
        let chunks = (segment.len() / CHUNK) as u64;
        self.worker.send(self.index, last, segment)?;
        self.index += chunks;
        self.in_flight += 1;
        while self.in_flight >= DEPTH {
            self.write_one()?;
        }
        Ok(())
    }

    /// Seals the last chunk and returns the writer it wrote to, and the
    /// envelope's length.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.seal_segment(true)?;
        while self.in_flight > 0 {
            self.write_one()?;
        }
        let mut inner = self.inner.take().expect("finished once");
        inner.flush()?;
        Ok((inner, sealed_len(self.plain)))
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(SEG * CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.plain += n as u64;
        if self.buf.len() == SEG * CHUNK {
            self.seal_segment(false)?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        // A partial chunk cannot be written before it is full or last.
        match self.inner.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

/// Reads an envelope from `inner`, giving out each chunk's plaintext only
/// once the chunk has authenticated. An error names the chunk and what
/// failed, and nothing from that chunk is given out. The next chunks are
/// read ahead and opened on a thread of their own, in order.
pub struct OpenReader<R: Read> {
    inner: R,
    worker: Worker,
    name: String,
    buf: Zeroizing<Vec<u8>>,
    pos: usize,
    /// The first chunk of the next segment to read.
    read_index: u64,
    in_flight: usize,
    /// No more segments to read: the last chunk was read, or the input
    /// ended early (`pending` says how, once the chunks before are handed
    /// out).
    read_done: bool,
    pending: Option<String>,
    /// A chunk that failed, to report once the chunks before it are read.
    failed_chunk: Option<String>,
    done: bool,
    failed: Option<String>,
}

impl<R: Read> OpenReader<R> {
    pub fn new(inner: R, stream: Stream, name: &str) -> OpenReader<R> {
        OpenReader {
            inner,
            worker: Worker::new(stream, false),
            name: name.to_string(),
            buf: Zeroizing::new(Vec::new()),
            pos: 0,
            read_index: 0,
            in_flight: 0,
            read_done: false,
            pending: None,
            failed_chunk: None,
            done: false,
            failed: None,
        }
    }

    fn fail(&mut self, reason: String) -> io::Error {
        let reason = format!("{}: {reason}", self.name);
        self.failed = Some(reason.clone());
        self.buf.clear();
        io::Error::new(io::ErrorKind::InvalidData, reason)
    }

    /// Reads the next segment and hands it to the worker; stops reading
    /// at the last chunk or at a cut.
    fn read_ahead(&mut self) -> io::Result<()> {
        let mut data = vec![0u8; SEG * SEALED];
        let (n, result) = crate::files::read_full(&mut self.inner, &mut data);
        result?;
        let first = self.read_index;
        let at = |i: u64| HEADER_LEN as u64 + i * SEALED as u64;
        let (full, rest) = ((n / SEALED) as u64, n % SEALED);
        let mut last = false;
        let mut send_len = n;
        if n < SEG * SEALED {
            self.read_done = true;
            if rest >= TAG {
                last = true;
                // Nothing may follow the last chunk.
                let mut probe = [0u8; 1];
                let (extra, result) = crate::files::read_full(&mut self.inner, &mut probe);
                result?;
                if extra > 0 {
                    self.pending = Some(format!(
                        "bytes follow the last chunk of the encrypted stream, which ends at byte {}",
                        at(first + full) + rest as u64
                    ));
                    last = false;
                    send_len = full as usize * SEALED;
                }
            } else {
                send_len = full as usize * SEALED;
                let cut = first + full;
                self.pending = Some(if rest == 0 && cut > 0 {
                    format!("the encrypted stream ends at byte {}, after chunk {}, without its last chunk: it was cut short", at(cut), cut - 1)
                } else {
                    format!("the encrypted stream ends at byte {}, inside chunk {cut}: it was cut short", at(cut) + rest as u64)
                });
            }
        }
        if send_len > 0 {
            data.truncate(send_len);
            self.worker.send(first, last, data)?;
            self.read_index += full;
            self.in_flight += 1;
        }
        Ok(())
    }

    /// The next segment's plaintext, opened.
    fn next_segment(&mut self) -> io::Result<()> {
        if let Some(reason) = self.failed_chunk.take() {
            return Err(self.fail(reason));
        }
        while !self.read_done && self.in_flight < DEPTH {
            self.read_ahead()?;
        }
        if self.in_flight == 0 {
            let reason = self
                .pending
                .take()
                .unwrap_or_else(|| "the encrypted stream ended early".into());
            return Err(self.fail(reason));
        }
        let (last, plain, failed) = self.worker.recv()?;
        self.in_flight -= 1;
        *self.buf = plain;
        self.pos = 0;
        match failed {
            Some((index, n)) => {
                let at = HEADER_LEN as u64 + index * SEALED as u64;
                self.failed_chunk = Some(format!(
                    "chunk {index} (bytes {at} to {}) fails authentication: the encrypted data was damaged or altered",
                    at + n as u64
                ));
                // Nothing after it is read or handed out.
                self.read_done = true;
            }
            None => self.done = last,
        }
        Ok(())
    }
}

impl<R: Read> Read for OpenReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(reason) = &self.failed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, reason.clone()));
        }
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            self.next_segment()?;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A delta input, opened: decrypted when it is an envelope.
pub enum Opened {
    Plain(Box<dyn Read>),
    Encrypted(Box<dyn Read>, Envelope),
}

impl Opened {
    pub fn into_read(self) -> Box<dyn Read> {
        match self {
            Opened::Plain(r) | Opened::Encrypted(r, _) => r,
        }
    }
}

/// Opens `input` (named `name` in messages): when it starts with the
/// envelope's magic, reads the header, finds the key in `secrets` and
/// returns a reader of the plaintext; else a reader of `input` as it is.
pub fn open_input(
    mut input: Box<dyn Read>,
    name: &str,
    secrets: &Secrets,
) -> Result<Opened, CryptError> {
    let mut head = [0u8; HEADER_LEN];
    let read_err = |e: io::Error| CryptError::Damaged {
        name: name.to_string(),
        reason: format!("read error: {e}"),
    };
    let (n, result) = crate::files::read_full(&mut input, &mut head[..MAGIC.len()]);
    result.map_err(read_err)?;
    if n < MAGIC.len() || head[..MAGIC.len()] != MAGIC {
        let prefix = io::Cursor::new(head[..n].to_vec());
        return Ok(Opened::Plain(Box::new(prefix.chain(input))));
    }
    let (m, result) = crate::files::read_full(&mut input, &mut head[MAGIC.len()..]);
    result.map_err(read_err)?;
    let envelope = Envelope::decode(name, &head[..MAGIC.len() + m])?;
    let key = envelope.key(name, secrets)?;
    let stream = Stream::new(&envelope, &key, b"");
    Ok(Opened::Encrypted(
        Box::new(OpenReader::new(input, stream, name)),
        envelope,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(plain: &[u8], key: &Key) -> Vec<u8> {
        let env = Envelope::for_key(key).unwrap();
        let mut w = SealWriter::new(Vec::new(), Stream::new(&env, key, b"")).unwrap();
        w.write_all(plain).unwrap();
        let (out, len) = w.finish().unwrap();
        assert_eq!(out.len() as u64, len);
        out
    }

    fn open(sealed: &[u8], key: &Key) -> io::Result<Vec<u8>> {
        let env = Envelope::decode("t", sealed).unwrap();
        let mut r = OpenReader::new(&sealed[HEADER_LEN..], Stream::new(&env, key, b""), "t");
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn lengths_map_both_ways() {
        for plain in [
            0u64,
            1,
            100,
            CHUNK as u64 - 1,
            CHUNK as u64,
            CHUNK as u64 + 1,
            5 * CHUNK as u64,
            1 << 33,
        ] {
            assert_eq!(plain_len(sealed_len(plain)), Some(plain), "{plain}");
        }
        assert_eq!(plain_len(HEADER_LEN as u64 + 15), None);
        assert_eq!(plain_len(10), None);
    }

    #[test]
    fn round_trips_and_ranges() {
        let key = Key::random().unwrap();
        for len in [
            0usize,
            1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            3 * CHUNK + 17,
            4 * CHUNK,
            8 * CHUNK,
            9 * CHUNK + 5,
        ] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let sealed = seal(&plain, &key);
            assert_eq!(sealed.len() as u64, sealed_len(len as u64));
            assert_eq!(open(&sealed, &key).unwrap(), plain);
            let env = Envelope::decode("t", &sealed).unwrap();
            let stream = Stream::new(&env, &key, b"");
            for r in [0..1u64, 5..CHUNK as u64 + 3, len as u64 / 2..len as u64] {
                if r.end > len as u64 || r.is_empty() {
                    continue;
                }
                let (chunks, bytes) = sealed_range(&r, len as u64);
                let first = chunks.start * CHUNK as u64;
                let got = open_chunks(
                    &stream,
                    chunks,
                    sealed[bytes.start as usize..bytes.end as usize].to_vec(),
                    len as u64,
                )
                .unwrap();
                let want = &plain[r.start as usize..r.end as usize];
                assert_eq!(
                    &got[(r.start - first) as usize..(r.end - first) as usize],
                    want
                );
            }
        }
    }

    #[test]
    fn edits_are_caught() {
        for chunks in [3, 9] {
            edits_are_caught_in(chunks);
        }
    }

    fn edits_are_caught_in(chunks: usize) {
        let key = Key::random().unwrap();
        let plain = vec![9u8; chunks * CHUNK + 5];
        let sealed = seal(&plain, &key);
        let c = |i: usize| HEADER_LEN + i * SEALED..HEADER_LEN + (i + 1) * SEALED;
        // Swapped chunks.
        let mut s = sealed.clone();
        let (a, b) = (sealed[c(0)].to_vec(), sealed[c(1)].to_vec());
        s[c(0)].copy_from_slice(&b);
        s[c(1)].copy_from_slice(&a);
        assert!(open(&s, &key).is_err());
        // A chunk dropped.
        let mut s = sealed.clone();
        s.drain(c(1));
        assert!(open(&s, &key).is_err());
        // Cut after the full chunks, and after a segment's.
        assert!(open(&sealed[..HEADER_LEN + chunks * SEALED], &key).is_err());
        if chunks > SEG {
            assert!(open(&sealed[..HEADER_LEN + SEG * SEALED], &key).is_err());
            // Swapped across segments.
            let mut s = sealed.clone();
            let (a, b) = (sealed[c(SEG - 1)].to_vec(), sealed[c(SEG)].to_vec());
            s[c(SEG - 1)].copy_from_slice(&b);
            s[c(SEG)].copy_from_slice(&a);
            assert!(open(&s, &key).is_err());
        }
        // A chunk of another stream.
        let other = seal(&plain, &key);
        let mut s = sealed.clone();
        s[c(1)].copy_from_slice(&other[c(1)]);
        assert!(open(&s, &key).is_err());
        // Garbage appended.
        let mut s = sealed.clone();
        s.push(0);
        assert!(open(&s, &key).is_err());
        // Another key.
        assert!(open(&sealed, &Key::random().unwrap()).is_err());
    }

    #[test]
    fn passphrase_keys_are_checked_by_id() {
        let (env, key) = {
            let salt = [3u8; 16];
            let key = Key::from_passphrase(b"secret", &salt, 64, 1, 1).unwrap();
            let env = Envelope {
                kind: KIND_PASSPHRASE,
                stream_id: [1; 16],
                key_id: key.id(),
                salt,
                m_kib: 64,
                t: 1,
                p: 1,
            };
            (env, key)
        };
        let decoded = Envelope::decode("t", &env.encode()).unwrap();
        assert_eq!(decoded, env);
        let given = |p: &[u8]| Secrets {
            key_file: None,
            passphrase: PassphraseFrom::Given(Zeroizing::new(p.to_vec())),
        };
        assert_eq!(
            env.key("t", &given(b"secret\n")).unwrap().bytes(),
            key.bytes()
        );
        assert!(matches!(
            env.key("t", &given(b"Secret")),
            Err(CryptError::WrongPassphrase { .. })
        ));
        // A header asking for too much memory is refused, not obeyed.
        let mut greedy = env.clone();
        greedy.m_kib = u32::MAX;
        let greedy = Envelope::decode("t", &greedy.encode()).unwrap();
        assert!(matches!(
            greedy.key("t", &given(b"secret")),
            Err(CryptError::DamagedHeader { .. })
        ));
    }
}
