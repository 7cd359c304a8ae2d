//! A private S3 server on 127.0.0.1 for the tests of the store module:
//! s3s-fs (`cargo install s3s-fs@0.14.1 --features binary --locked`, which
//! tests/run does), on a free port, with its own data directory and random
//! credentials; stopped when dropped. A bucket is a directory under its
//! root.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lvmsync::store::{S3Credentials, StoreOptions};

pub struct S3Server {
    /// The directory the server keeps its buckets in.
    pub root: PathBuf,
    pub port: u16,
    pub access_key: String,
    pub secret_key: String,
    log: PathBuf,
    child: Option<Child>,
}

/// The s3s-fs binary: on PATH, or in cargo's bin directory.
pub fn s3s_fs() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("s3s-fs"));
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let in_cargo = cargo_home.map(|c| c.join("bin/s3s-fs"));
    on_path.chain(in_cargo).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "s3s-fs is missing: cargo install s3s-fs@0.14.1 --features binary --locked (tests/run does)"
        )
    })
}

/// A port on 127.0.0.1 that nothing listens on (now).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Hex digits that differ from run to run and from call to call.
fn random_hex(len: usize) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ CALLS
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut out = String::new();
    while out.len() < len {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.push_str(&format!("{:016x}", x.wrapping_mul(0x2545_f491_4f6c_dd1d)));
    }
    out.truncate(len);
    out
}

impl S3Server {
    /// Starts s3s-fs with its root (and its log) in `dir` (created), and
    /// waits until it accepts connections.
    pub fn start(dir: &Path) -> S3Server {
        let root = dir.join("root");
        fs::create_dir_all(&root).unwrap();
        let mut server = S3Server {
            root,
            port: free_port(),
            access_key: format!("AK{}", random_hex(18)).to_uppercase(),
            secret_key: random_hex(40),
            log: dir.join("s3s-fs.log"),
            child: None,
        };
        server.restart();
        server
    }

    /// Starts the server again (after [`S3Server::kill`]) on the same port,
    /// root and credentials.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--access-key",
                &self.access_key,
                "--secret-key",
                &self.secret_key,
            ])
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "s3s-fs exited ({status}): {}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "s3s-fs does not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server (SIGSTOP): it still takes connections, as the
    /// kernel does that, but answers nothing until [`S3Server::resume`].
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let child = self.child.as_ref().expect("the server is running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal s3s-fs");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Makes a bucket (a directory under the root).
    pub fn create_bucket(&self, bucket: &str) -> PathBuf {
        let dir = self.root.join(bucket);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub fn credentials(&self) -> S3Credentials {
        S3Credentials {
            access_key_id: self.access_key.clone(),
            secret_access_key: self.secret_key.clone(),
            session_token: None,
        }
    }

    /// Options for a store on this server: its endpoint and credentials,
    /// and short retries so that a dead server shows in seconds.
    pub fn options(&self) -> StoreOptions {
        StoreOptions {
            endpoint: Some(self.endpoint()),
            credentials: Some(self.credentials()),
            max_retries: 2,
            retry_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(2),
            ..StoreOptions::default()
        }
    }

    /// The files s3s-fs keeps for unfinished multipart uploads.
    pub fn upload_parts(&self) -> Vec<String> {
        fs::read_dir(&self.root)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with(".upload_id-"))
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}
