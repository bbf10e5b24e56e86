//! A real PostgreSQL server for tests and benchmarks: Debian's `postgresql` binaries, a throwaway data
//! directory, a loopback port, password (SCRAM) authentication. Not a stand-in: the hub's PostgreSQL
//! backend talks to the real server. `initdb` and `postgres` refuse to run as root, so when the caller is
//! root they run as the `postgres` user (the package creates it).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The user the tests connect as.
pub const USER: &str = "outpost";

/// A running PostgreSQL server; stopped (fast shutdown) and its directory removed when dropped.
pub struct Postgres {
    /// The loopback port it listens on.
    pub port: u16,
    /// The password of [`USER`].
    pub password: String,
    root: PathBuf,
    bin: PathBuf,
    /// `(uid, gid)` the server runs as, when the caller is root.
    ids: Option<(u32, u32)>,
    fsync: bool,
    /// TLS on, and required for every TCP connection.
    tls: bool,
    child: Option<Child>,
}

/// Where the server binaries are: Debian keeps them out of `PATH`, in `/usr/lib/postgresql/VERSION/bin`.
fn bin_dir() -> Result<PathBuf, String> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).filter(|p| p.join("postgres").exists()).collect())
        .unwrap_or_default();
    versions.sort();
    versions.pop().ok_or_else(|| {
        "no PostgreSQL server in /usr/lib/postgresql/*/bin: install Debian's `postgresql` package \
         (scripts/test does)"
            .to_string()
    })
}

/// The uid and gid of `user` from /etc/passwd.
fn user_ids(user: &str) -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("reading /etc/passwd: {e}"))?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&user))
        .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
        .ok_or_else(|| format!("no user {user:?} to run PostgreSQL as (Debian's `postgresql` package creates it)"))
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

impl Postgres {
    /// Creates a cluster in a new temporary directory and starts it. `fsync = false` for tests (a crash of
    /// the machine is not what they test); benchmarks keep it on.
    pub fn start(fsync: bool) -> Result<Postgres, String> {
        Postgres::start_with(fsync, None)
    }

    /// As [`Postgres::start`], serving TLS with `(certificate chain, key)` (PEM) and refusing every TCP
    /// connection without it (`hostssl` only).
    pub fn start_tls(fsync: bool, cert_pem: &str, key_pem: &str) -> Result<Postgres, String> {
        Postgres::start_with(fsync, Some((cert_pem, key_pem)))
    }

    fn start_with(fsync: bool, tls: Option<(&str, &str)>) -> Result<Postgres, String> {
        let bin = bin_dir()?;
        let ids = if is_root() { Some(user_ids("postgres")?) } else { None };
        let root = std::env::temp_dir().join(format!("outpost-pg-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
        let password = format!("pw-{}-{}", std::process::id(), unique());
        let pwfile = root.join("pw");
        std::fs::write(&pwfile, &password).map_err(|e| format!("writing {}: {e}", pwfile.display()))?;
        if let Some((uid, gid)) = ids {
            for p in [&root, &pwfile] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", p.display()))?;
            }
        }
        let mut pg = Postgres { port: 0, password, root, bin, ids, fsync, tls: tls.is_some(), child: None };
        let out = pg
            .command("initdb")
            .args(["-D"])
            .arg(pg.data())
            .args(["-U", USER, "-A", "scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .map_err(|e| format!("running initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        if let Some((cert, key)) = tls {
            let data = pg.data();
            let write = |name: &str, body: &str, mode: u32| -> Result<(), String> {
                use std::os::unix::fs::PermissionsExt as _;
                let path = data.join(name);
                std::fs::write(&path, body).map_err(|e| format!("writing {}: {e}", path.display()))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
                if let Some((uid, gid)) = ids {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
                }
                Ok(())
            };
            write("server.crt", cert, 0o644)?;
            write("server.key", key, 0o600)?;
            let hba_path = data.join("pg_hba.conf");
            let hba = std::fs::read_to_string(&hba_path).map_err(|e| e.to_string())?;
            let hba: String = hba
                .lines()
                .map(|l| if l.starts_with("host ") { l.replacen("host ", "hostssl ", 1) } else { l.to_string() } + "\n")
                .collect();
            write("pg_hba.conf", &hba, 0o600)?;
        }
        pg.port = free_port()?;
        pg.run()?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        c.env("LC_ALL", "C").current_dir(&self.root);
        if let Some((uid, gid)) = self.ids {
            c.uid(uid).gid(gid).env("HOME", &self.root);
        }
        c
    }

    /// Starts the server and returns once it accepts connections.
    fn run(&mut self) -> Result<(), String> {
        let mut child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c"])
            .arg(format!("unix_socket_directories={}", self.root.display()))
            .args(["-c", &format!("fsync={}", if self.fsync { "on" } else { "off" })])
            .args(["-c", "max_connections=200", "-c", "shared_buffers=64MB"])
            .args(["-c", if self.tls { "ssl=on" } else { "ssl=off" }])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting postgres: {e}"))?;
        // The server's log is read to its end (so it never blocks on a full pipe); the line saying it
        // is ready is the event awaited.
        let (tx, rx) = mpsc::channel();
        let log = child.stderr.take().expect("piped");
        let log_path = self.root.join("postgres.log");
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&log_path).ok();
            // Clients refused while it starts log FATAL lines too: only the end of the log (the server
            // exited) is a failure.
            let mut last = String::new();
            for line in BufReader::new(log).lines().map_while(Result::ok) {
                if let Some(f) = file.as_mut() {
                    use std::io::Write as _;
                    let _ = writeln!(f, "{line}");
                }
                if line.contains("ready to accept connections") {
                    let _ = tx.send(Ok(()));
                }
                last = line;
            }
            let _ = tx.send(Err(format!("postgres exited; its last words: {last}")));
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => {
                self.child = Some(child);
                Ok(())
            }
            other => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("postgres did not start: {other:?}; log in {}", self.root.join("postgres.log").display()))
            }
        }
    }

    /// A connection string for database `postgres` (what `[store.postgres] url` takes; the password
    /// comes apart, from a file).
    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user={USER} dbname=postgres", self.port)
    }

    /// Writes the password to a 0600 file in `dir` and returns its path.
    pub fn password_file(&self, dir: &Path) -> PathBuf {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = dir.join("postgres-password");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .expect("writing the password file");
        std::io::Write::write_all(&mut f, self.password.as_bytes()).expect("writing the password file");
        path
    }

    /// The postmaster's pid (its backends are its children).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops the server (fast shutdown: clients are disconnected) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with everything it stored.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.run()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}
