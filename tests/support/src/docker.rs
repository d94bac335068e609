//! The Docker engine (Debian's `docker.io`, 20.10) as a registry client: a private `dockerd`
//! started in a temporary directory with no networking of its own and the vfs storage driver (as
//! `shared/SPEC-NOTES.md` shows), its client (`/usr/bin/docker`) pointed at it and at a config
//! directory of its own, and the containerd it runs, for containerd's `ctr`. Stopped by PID.

use crate::{Process, require_program};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// What to install when the engine or ctr is missing.
pub const DOCKER_INSTALL: &str = "install it with `apt-get install -y --no-install-recommends docker.io containerd` (Debian: Docker 20.10, containerd 1.6)";

/// Debian's client: `/usr/local/bin/docker` on some machines is another, newer one.
const DOCKER_CLIENT: &str = "/usr/bin/docker";

/// A running `dockerd` of the test's own.
#[derive(Debug)]
pub struct DockerEngine {
    dir: PathBuf,
    process: Process,
}

impl DockerEngine {
    /// Starts `dockerd` below `dir` and waits until it answers (at most a minute).
    pub fn start(dir: &Path) -> DockerEngine {
        let dockerd = require_program("dockerd", DOCKER_INSTALL);
        assert!(Path::new(DOCKER_CLIENT).is_file(), "{DOCKER_CLIENT} is required: {DOCKER_INSTALL}");
        std::fs::create_dir_all(dir.join("cfg")).unwrap();
        let mut command = Command::new(dockerd);
        command
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs"])
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"));
        let process = Process::start_logging_to("dockerd", command, &dir.join("dockerd.log"));
        let engine = DockerEngine { dir: dir.to_owned(), process };
        let since = Instant::now();
        loop {
            let version =
                engine.docker().args(["version", "--format", "{{.Server.Version}}"]).output().unwrap();
            if version.status.success() {
                return engine;
            }
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "dockerd did not start within a minute; its log:\n{}",
                engine.process.stderr()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `docker` talking to this engine, with its own config directory (where `docker login` keeps
    /// what it stores).
    pub fn docker(&self) -> Command {
        let mut command = Command::new(DOCKER_CLIENT);
        command
            .env("DOCKER_HOST", format!("unix://{}", self.dir.join("docker.sock").display()))
            .env("DOCKER_CONFIG", self.dir.join("cfg"))
            .stdin(Stdio::null());
        command
    }

    /// `docker ARGS`, its output whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.docker().args(args).output().unwrap()
    }

    /// The engine's client configuration (`config.json`), as `docker login` left it.
    pub fn client_config(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.join("cfg/config.json")).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_default()
    }

    /// `ctr` talking to the containerd this engine runs, in namespace `namespace`.
    pub fn ctr(&self, namespace: &str) -> Command {
        let ctr = require_program("ctr", DOCKER_INSTALL);
        let mut command = Command::new(ctr);
        command
            .arg("--address")
            .arg(self.dir.join("exec/containerd/containerd.sock"))
            .args(["--namespace", namespace])
            .stdin(Stdio::null());
        command
    }

    /// The engine's log so far.
    pub fn log(&self) -> String {
        self.process.stderr()
    }
}

impl Drop for DockerEngine {
    /// SIGTERM, so that dockerd stops the containerd it started (a SIGKILL would orphan it), then
    /// SIGKILL if it has not exited within 20 s.
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.process.pid().to_string()).status();
        let since = Instant::now();
        while self.process.running() && since.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A tar of a one-file root file system, for `docker import` (an image without any network).
pub fn rootfs_tar(path: &Path) {
    let mut tar = tar::Builder::new(std::fs::File::create(path).unwrap());
    let content = b"hello from registry-token's Docker engine test\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, "hello.txt", &content[..]).unwrap();
    tar.finish().unwrap();
}
