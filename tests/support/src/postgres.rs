//! A throwaway PostgreSQL cluster: `initdb` into a temporary directory, the server on a free port of
//! 127.0.0.1, and a `registry_token` database owned by the `registry_token` superuser (trust
//! authentication), stopped and removed when dropped.
//!
//! The binaries are Debian's `postgresql` package's, from the newest `/usr/lib/postgresql/N/bin`
//! (off PATH), else from PATH. PostgreSQL refuses to run as root, so a root test runs the cluster as
//! the unprivileged system user [`PG_USER`], created on first use.

use crate::free_port;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The system user the cluster runs as when the tests run as root.
const PG_USER: &str = "registry-token-pg";
/// The cluster's superuser and the database the service uses.
const ROLE: &str = "registry_token";
const DATABASE: &str = "registry_token";
/// Where Debian's `postgresql-N` packages put the server's programs.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
const INSTALL_HINT: &str = "install Debian's postgresql package (apt-get install -y postgresql; tests/run does \
                            this when run as root), which puts initdb, pg_ctl and postgres in \
                            /usr/lib/postgresql/N/bin";
/// How long the server may take to start, or to accept connections once started.
const READY: Duration = Duration::from_secs(30);

/// A running PostgreSQL cluster of its own (see the module documentation). [`PostgresCluster::stop`]
/// and [`PostgresCluster::start_again`] take the server down and up on the same port and data, as an
/// outage does; dropping it stops the server (`-m immediate`, then by PID) and removes its files.
#[derive(Debug)]
pub struct PostgresCluster {
    bin: Binaries,
    port: u16,
    /// `Some(PG_USER)` when the programs run as that user (the tests run as root).
    run_as: Option<&'static str>,
    dir: TempDir,
    /// The server's processes while [`PostgresCluster::freeze`] holds them stopped.
    frozen: Vec<u32>,
}

#[derive(Debug)]
struct Binaries {
    initdb: PathBuf,
    pg_ctl: PathBuf,
    postgres: PathBuf,
    psql: PathBuf,
}

impl PostgresCluster {
    /// A new cluster with the `registry_token` database, once it accepts connections. Panics (the
    /// test fails, never skips) when PostgreSQL is not installed.
    pub fn start() -> PostgresCluster {
        let bin = Binaries::find();
        let run_as = if running_as_root() {
            ensure_pg_user();
            Some(PG_USER)
        } else {
            None
        };
        // In /tmp, not $TMPDIR: the socket's path must stay short (about 100 bytes at most), and
        // the unprivileged user must be able to reach the directory.
        let dir = tempfile::Builder::new()
            .prefix("rt-pg.")
            .tempdir_in("/tmp")
            .unwrap_or_else(|e| panic!("cannot create a temporary directory in /tmp: {e}"));
        if let Some(user) = run_as {
            let chown = Command::new("chown").arg(format!("{user}:")).arg(dir.path()).output().unwrap();
            assert!(
                chown.status.success(),
                "chown {user}: {} failed: {}",
                dir.path().display(),
                text(&chown.stderr)
            );
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();

        let mut cluster = PostgresCluster { bin, port: free_port(), run_as, dir, frozen: Vec::new() };
        let mut initdb = cluster.command(&cluster.bin.initdb);
        initdb.arg("-D").arg(cluster.data()).args(["-U", ROLE, "--auth=trust"]);
        initdb.args(["-E", "UTF8", "--locale=C", "--no-sync"]);
        cluster.run(initdb, "initdb");

        // The server's settings go in its configuration file (later lines win), so that a restart
        // finds them again and `pg_ctl -o` need not quote paths.
        let settings = format!(
            "\n# PostgresCluster (registry-token's tests)\nport = {}\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n",
            cluster.port,
            cluster.dir.path().display()
        );
        let conf = cluster.data().join("postgresql.conf");
        let mut contents =
            std::fs::read_to_string(&conf).unwrap_or_else(|e| panic!("cannot read {}: {e}", conf.display()));
        contents.push_str(&settings);
        std::fs::write(&conf, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));

        cluster.start_server();
        cluster.psql_in("postgres", &format!("CREATE DATABASE {DATABASE}"));
        cluster
    }

    /// `postgres://registry_token@127.0.0.1:PORT/registry_token`.
    pub fn url(&self) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// The port the server listens on (127.0.0.1), the same across [`PostgresCluster::start_again`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (`pg_ctl stop -m fast`: open connections are closed), once it has exited.
    pub fn stop(&mut self) {
        let mut stop = self.command(&self.bin.pg_ctl);
        stop.arg("stop").arg("-D").arg(self.data()).args(["-m", "fast", "-w", "-t", "30"]);
        self.run(stop, "pg_ctl stop");
    }

    /// Starts the stopped server again, on the same port and data, once it accepts connections.
    pub fn start_again(&mut self) {
        self.start_server();
    }

    /// Stops the server's processes (`SIGSTOP`: the postmaster and its children) without closing
    /// anything: its connections stay open and the kernel still acknowledges what clients send,
    /// but nothing answers, as when its host freezes or the network drops its packets.
    pub fn freeze(&mut self) {
        assert!(self.frozen.is_empty(), "already frozen");
        let postmaster = self.postmaster_pid().expect("the server is not running: no postmaster.pid");
        let children = children_of(postmaster);
        // The postmaster first, so it forks nothing new; then every process it had started.
        for pid in std::iter::once(postmaster).chain(children) {
            signal(pid, "STOP");
            self.frozen.push(pid);
        }
    }

    /// Lets the processes [`PostgresCluster::freeze`] stopped run again (`SIGCONT`).
    pub fn thaw(&mut self) {
        for pid in self.frozen.drain(..).rev() {
            signal(pid, "CONT");
        }
    }

    /// The postmaster's PID: the first line of `postmaster.pid`.
    fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()
            .and_then(|pidfile| pidfile.lines().next().and_then(|line| line.trim().parse().ok()))
    }

    /// Runs `sql` with `psql -At` in the `registry_token` database and returns its standard output
    /// (rows one a line, columns separated by `|`). Panics with psql's error when it fails.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in(DATABASE, sql)
    }

    /// A psql session on the `registry_token` database that reads its SQL from standard input
    /// (piped), for a test that holds a transaction open (a lock, say) while it does something
    /// else: write `COMMIT;` and close standard input to end it.
    pub fn session(&self) -> std::process::Child {
        let mut command = Command::new(&self.bin.psql);
        command
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", ROLE, "-d", DATABASE])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .current_dir(self.dir.path());
        command.spawn().unwrap_or_else(|e| panic!("cannot start psql: {e}"))
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// `pg_ctl start`, then waits until a client can connect over TCP.
    fn start_server(&mut self) {
        let mut start = self.command(&self.bin.pg_ctl);
        start
            .arg("start")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log_path())
            .arg("-p")
            .arg(&self.bin.postgres)
            .args(["-w", "-t", &READY.as_secs().to_string()]);
        self.run(start, "pg_ctl start");

        let deadline = Instant::now() + READY;
        loop {
            let attempt = self.psql_command("postgres", "SELECT 1").output().unwrap();
            if attempt.status.success() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "PostgreSQL on 127.0.0.1:{} did not accept connections within {READY:?}: {}\nserver log:\n{}",
                    self.port,
                    text(&attempt.stderr),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn psql_in(&self, database: &str, sql: &str) -> String {
        let output = self.psql_command(database, sql).output().unwrap();
        if !output.status.success() {
            panic!(
                "psql -c {sql:?} failed ({}): {}\nserver log:\n{}",
                output.status,
                text(&output.stderr),
                self.log()
            );
        }
        text(&output.stdout)
    }

    /// psql as a client connects: over TCP, as the `registry_token` role, ignoring `~/.psqlrc`.
    /// It runs as the tests' own user (trust authentication does not care who that is).
    fn psql_command(&self, database: &str, sql: &str) -> Command {
        let mut command = Command::new(&self.bin.psql);
        command
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", ROLE, "-d", database, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .current_dir(self.dir.path());
        command
    }

    /// `program`, run as [`PG_USER`] when the tests run as root, in the cluster's directory (the
    /// tests' own may not be readable by that user).
    fn command(&self, program: &Path) -> Command {
        let mut command = match self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        };
        command.stdin(Stdio::null()).current_dir(self.dir.path());
        command
    }

    /// Runs `command` to completion; panics with its output and the server log when it fails.
    fn run(&self, mut command: Command, what: &str) -> Output {
        let output = command.output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        if !output.status.success() {
            panic!(
                "{what} failed ({}):\n{}{}\nserver log:\n{}",
                output.status,
                text(&output.stdout),
                text(&output.stderr),
                self.log()
            );
        }
        output
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        // A test that failed while the server was frozen: it must run to stop.
        self.thaw();
        if !self.data().join("postmaster.pid").exists() {
            return;
        }
        let mut stop = self.command(&self.bin.pg_ctl);
        stop.arg("stop").arg("-D").arg(self.data()).args(["-m", "immediate", "-w", "-t", "10"]);
        stop.stdout(Stdio::null()).stderr(Stdio::null());
        let stopped = stop.status().is_ok_and(|status| status.success());
        if !stopped {
            // Its children exit with the postmaster.
            if let Some(pid) = self.postmaster_pid() {
                signal(pid, "KILL");
            }
        }
    }
}

/// The processes whose parent is `parent` (from each `/proc/PID/stat`).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // `PID (COMMAND) STATE PPID ...`: the command may hold spaces and parentheses.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().is_some_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

/// `kill -SIGNAL PID`, by PID (a process this suite started).
fn signal(pid: u32, signal: &str) {
    let _ =
        Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).stderr(Stdio::null()).status();
}

impl Binaries {
    /// From the newest `/usr/lib/postgresql/N/bin` that has `initdb`, else from PATH.
    fn find() -> Binaries {
        let debian = newest_debian_bin_dir();
        let find = |program: &str| match &debian {
            Some(dir) if dir.join(program).is_file() => dir.join(program),
            _ => PathBuf::from(crate::require_program(program, INSTALL_HINT)),
        };
        Binaries {
            initdb: find("initdb"),
            pg_ctl: find("pg_ctl"),
            postgres: find("postgres"),
            psql: find("psql"),
        }
    }
}

fn newest_debian_bin_dir() -> Option<PathBuf> {
    let entries = match std::fs::read_dir(DEBIAN_ROOT) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot list {DEBIAN_ROOT}: {e}"),
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
}

/// Whether this process's effective user is root (the second field of `Uid:` in its status).
fn running_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    match uid {
        Some(uid) => uid == "0",
        None => panic!("/proc/self/status has no Uid: line"),
    }
}

/// Creates the system user [`PG_USER`] unless it exists. Tests in other processes may race to
/// create it too: a failed `useradd` is fine if the user exists afterwards.
fn ensure_pg_user() {
    static CREATING: Mutex<()> = Mutex::new(());
    let _serialised = CREATING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let exists = || {
        Command::new("id")
            .arg(PG_USER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    if exists() {
        return;
    }
    let useradd = Command::new("useradd")
        .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run useradd to create {PG_USER} (PostgreSQL does not run as root): {e}")
        });
    if !useradd.status.success() && !exists() {
        panic!(
            "useradd {PG_USER} failed ({}), and PostgreSQL does not run as root: {}",
            useradd.status,
            text(&useradd.stderr)
        );
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
