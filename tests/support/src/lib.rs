//! Shared pieces of registry-token's tests: the test guests (built from source by `build.rs`),
//! processes that are stopped by PID whatever happens to the test, and the fixtures of a running
//! installation — its configuration file ([`Config`]), the plan catalogue ([`PLANS`]), the server
//! ([`Server`]), an HTTP client of it ([`Client`]) and a throwaway PostgreSQL cluster
//! ([`PostgresCluster`]).
//!
//! It knows the service only from the outside (its file format, command line and protocol), so it
//! does not depend on the `registry-token` crate; the binary's path comes from the caller
//! (`env!("CARGO_BIN_EXE_registry-token")` exists only in that crate's tests and benches).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod config;
mod docker;
mod hsm;
mod http;
mod plans;
mod postgres;
mod registry;
mod server;

pub use config::{
    Admin, Authority, Cache, Config, Http, Ledger, Pkcs11Key, Policy, RefreshTokens, Signing, SigningKey,
};
pub use docker::{DOCKER_INSTALL, DockerEngine, rootfs_tar};
pub use hsm::{SOFTHSM_INSTALL, SOFTHSM_MODULE, softhsm_token};
pub use http::{Client, Reply, raw_exchange};
pub use plans::{PLANS, as_json, plans_revoking, plans_with};
pub use postgres::PostgresCluster;
pub use registry::{DockerRegistry, REGISTRY_INSTALL, build_image, layout_digest, run_ok, skopeo};
pub use server::{Server, serve_command};

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The hostile test guest (see `tests/guests/hostile`), built for wasm32-wasip2 against
/// `stellaops:registry-policy@0.1.0`: a guest of the released contract, which the host must keep
/// loading unchanged.
pub const HOSTILE_GUEST_WASM: &str = env!("HOSTILE_GUEST_WASM");
/// The same hostile guest built against `stellaops:registry-policy@0.2.0` (lifetimes, the request
/// time and annotations to misuse too).
pub const HOSTILE_GUEST_V0_2_WASM: &str = env!("HOSTILE_GUEST_V0_2_WASM");
/// The plan catalogue (`policies/plan-catalogue`) built against `stellaops:registry-policy@0.1.0`:
/// an older build of a real policy, kept as a fixture built from source.
pub const PLAN_CATALOGUE_V0_1_WASM: &str = env!("PLAN_CATALOGUE_V0_1_WASM");
/// A component built for another world (see `tests/guests/wrong-world`).
pub const WRONG_WORLD_GUEST_WASM: &str = env!("WRONG_WORLD_GUEST_WASM");

/// A free TCP port on 127.0.0.1 (for programs that cannot listen on port 0 and report it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process that is killed (by its PID) and reaped when dropped, so a failing test never
/// leaves it running. Its standard error is collected (or written to a log file) for failure
/// messages.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    stdout_lines: mpsc::Receiver<String>,
    stderr: Stderr,
}

#[derive(Debug)]
enum Stderr {
    Collected(Arc<Mutex<String>>),
    Logged(PathBuf),
}

impl Process {
    /// Starts `command` with piped stdout/stderr.
    pub fn start(name: &str, mut command: Command) -> Process {
        command.stderr(Stdio::piped());
        let sink = Arc::<Mutex<String>>::default();
        let mut process = Process::spawn(name, command, Stderr::Collected(sink.clone()));
        let mut pipe = process.child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        process
    }

    /// Starts `command` with piped stdout and its standard error written to the file `log`, as a
    /// service logs in production (a benchmark's server writes far more than a test should hold).
    pub fn start_logging_to(name: &str, mut command: Command, log: &Path) -> Process {
        let file =
            std::fs::File::create(log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        command.stderr(file);
        Process::spawn(name, command, Stderr::Logged(log.to_owned()))
    }

    fn spawn(name: &str, mut command: Command, stderr: Stderr) -> Process {
        command.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, stdout_lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Process { name: name.to_owned(), child, stdout_lines, stderr }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line starting with `prefix` and returns the rest of it.
    pub fn wait_for_stdout(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout_lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_owned();
                    }
                }
                Err(_) => panic!(
                    "{} did not print {prefix:?} within {timeout:?}; exit status {:?}; stderr:\n{}",
                    self.name,
                    self.child.try_wait().ok().flatten(),
                    self.stderr()
                ),
            }
        }
    }

    /// What it wrote to standard error so far.
    pub fn stderr(&self) -> String {
        match &self.stderr {
            Stderr::Collected(text) => text.lock().unwrap().clone(),
            Stderr::Logged(log) => {
                String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned()
            }
        }
    }

    /// Sends `signal` (e.g. `"TERM"`, `"HUP"`) to the process by PID.
    pub fn signal(&self, signal: &str) {
        let status =
            Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().unwrap();
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Whether it has not exited yet.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit on its own.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                panic!("{} did not exit within {timeout:?}; stderr:\n{}", self.name, self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Runs `command` to its end like [`Command::output`], but for at most `limit`: one that should
/// have exited (a `serve` refusing its configuration) and runs on instead is killed, and the test
/// fails saying so rather than hanging.
pub fn output_within(mut command: Command, limit: Duration) -> std::process::Output {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    let Some(status) = status else {
        panic!("{command:?} still ran after {limit:?}; stderr:\n{}", String::from_utf8_lossy(&stderr));
    };
    std::process::Output { status, stdout, stderr }
}

/// Where a command comes from, for the message when it is missing.
pub fn require_program(program: &str, install_hint: &str) -> String {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join(program)).find(|p| p.is_file()))
        .unwrap_or(None);
    match found {
        Some(path) => path.display().to_string(),
        None => panic!("{program} is required by this test and is not installed: {install_hint}"),
    }
}
