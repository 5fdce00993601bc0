//! A throwaway PostgreSQL cluster for the tests: `initdb` into a temp
//! folder, a free port on 127.0.0.1, stopped by a guard when dropped and by
//! a watchdog when the test process dies any other way.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The superuser's password; tests check that it is never printed.
pub const PASSWORD: &str = "pg-test-pw-7f3a9c";

pub struct Cluster {
    pub port: u16,
    /// Whether commits reach the disk (`fsync`): on for benchmarks, off
    /// for tests, where only processes crash, never the machine.
    durable: bool,
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

/// Returns the folder with `initdb`, `pg_ctl` and `postgres`, if any.
fn server_bindir() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    versions.sort();
    candidates.extend(versions.into_iter().rev());
    candidates
        .into_iter()
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Runs a server program, as the `postgres` user when the tests run as root
/// (the server refuses to run as root).
fn server_command(bin: &Path, program: &str) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(bin.join(program));
        command
    } else {
        Command::new(bin.join(program))
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// Starts a new cluster, or returns `None` (with a message) where no
    /// server is installed; under `CI=true` that is a failure.
    pub fn start() -> Option<Cluster> {
        Self::start_with(false)
    }

    /// Starts a new cluster, with `fsync` on when `durable`.
    pub fn start_with(durable: bool) -> Option<Cluster> {
        let Some(bin) = server_bindir() else {
            if super::host::in_ci() {
                panic!(
                    "CI=true but no PostgreSQL server binaries were found (install Debian's postgresql package)"
                );
            }
            eprintln!(
                "SKIPPED: no PostgreSQL server binaries (pg_config --bindir, /usr/lib/postgresql/*/bin)"
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("tokenctl-pg")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown of the cluster folder failed");
        }
        let out = server_command(&bin, "initdb")
            .args([
                "-U",
                "postgres",
                "-A",
                "scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            ])
            .arg("--pwfile")
            .arg(&pwfile)
            .arg("-D")
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Cluster {
            port: free_port(),
            durable,
            bin,
            data,
            _dir: dir,
        };
        cluster.watchdog();
        cluster.start_server();
        Some(cluster)
    }

    /// Stops the server once this test process is gone, whatever ends it.
    fn watchdog(&self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = if is_root() {
            format!(
                "runuser -u postgres -- {} -D {} stop -m immediate",
                pg_ctl.display(),
                self.data.display()
            )
        } else {
            format!(
                "{} -D {} stop -m immediate",
                pg_ctl.display(),
                self.data.display()
            )
        };
        // The shared cluster lives in a static, which is never dropped:
        // its folder goes with the watchdog too.
        let script = format!(
            "while kill -0 {} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf '{}'",
            std::process::id(),
            self.folder().display()
        );
        // Left to run on its own: it outlives this process on purpose.
        #[allow(clippy::zombie_processes)]
        let _watchdog = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    }

    /// Starts (or restarts) the server and waits until it answers.
    pub fn start_server(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync={} -c max_connections=100",
            self.port,
            self.data.parent().unwrap().display(),
            if self.durable { "on" } else { "off" }
        );
        let out = server_command(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-o", &options, "-l"])
            .arg(self.data.parent().unwrap().join("log"))
            .args(["-w", "-t", "120", "start"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.psql("postgres", "SELECT 1").is_err() {
            assert!(Instant::now() < deadline, "the server did not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Returns the folder that holds the cluster, owned by the server's user.
    pub fn folder(&self) -> &Path {
        self.data.parent().unwrap()
    }

    /// Makes `path` the server's own (it refuses a key others can read).
    pub fn give_to_server(&self, path: &Path) {
        if is_root() {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(path)
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    /// Stops the server the hard way, as a crash would.
    pub fn stop_immediate(&self) {
        let _ = server_command(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", "immediate"])
            .output();
    }

    /// Returns the server's processes: the postmaster and its children.
    pub fn processes(&self) -> Vec<i32> {
        let pid_file = std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap();
        let postmaster: i32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // The fields after the command's closing parenthesis: state, ppid.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Stops every process of the server (SIGSTOP), as a hung host would
    /// look from a client: connections stay open and nothing answers.
    /// The server goes on (SIGCONT) when the guard is dropped, also when
    /// the test fails.
    pub fn freeze(&self) -> Frozen<'_> {
        let pids = self.processes();
        for pid in &pids {
            unsafe { libc::kill(*pid, libc::SIGSTOP) };
        }
        Frozen {
            pids,
            _cluster: self,
        }
    }

    /// Starts `psql` running `sql` in database `db` as application
    /// `name`, without waiting for it.
    pub fn psql_spawn(&self, db: &str, name: &str, sql: &str) -> std::process::Child {
        Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
            .env("PGPASSWORD", PASSWORD)
            .env("PGAPPNAME", name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Waits until `sql` (a query answering one boolean) answers true.
    pub fn wait_until(&self, db: &str, sql: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.psql(db, sql).as_deref() != Ok("t") {
            assert!(Instant::now() < deadline, "never true: {sql}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Returns a new empty database's name.
    pub fn create_db(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("t{}", NEXT.fetch_add(1, Ordering::SeqCst));
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap();
        name
    }

    /// Returns the connection string of database `db`.
    pub fn conn_str(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Runs SQL in database `db`; returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
            .env("PGPASSWORD", PASSWORD)
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// A frozen server, let go on when dropped.
pub struct Frozen<'a> {
    pids: Vec<i32>,
    _cluster: &'a Cluster,
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        for pid in &self.pids {
            unsafe { libc::kill(*pid, libc::SIGCONT) };
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_immediate();
    }
}

/// Returns the cluster that the tests of this binary share (one database
/// each), started on first use; stopped by its watchdog at exit.
pub fn shared() -> Option<&'static Cluster> {
    static SHARED: OnceLock<Option<Cluster>> = OnceLock::new();
    SHARED.get_or_init(Cluster::start).as_ref()
}
