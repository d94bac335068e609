//! The service as operators run it: `registry-token serve --config FILE`, on a real socket.

use crate::{Client, Process};
use std::ffi::OsStr;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `BINARY serve --config CONFIG`: how the service is run.
pub fn serve_command(binary: impl AsRef<OsStr>, config: &Path) -> Command {
    let mut command = Command::new(binary);
    command.args(["serve", "--config"]).arg(config);
    command
}

/// A running `registry-token serve`, started on the port its configuration names (a free one with
/// `listen: 127.0.0.1:0`) and serving once started; killed by PID when dropped. It is the
/// [`Process`] it runs as (signals, stderr, exit status).
#[derive(Debug)]
pub struct Server {
    process: Process,
    address: String,
    admin_address: String,
}

impl Server {
    /// How long a server may take to say it listens (the first start compiles the policy).
    const START: Duration = Duration::from_secs(60);
    /// What the server prints on stdout once it accepts connections, before its address.
    const LISTENING: &str = "registry-token listening on http://";
    /// What it prints just before, with the operator listener's address.
    const ADMIN_LISTENING: &str = "registry-token admin listening on http://";

    /// `binary serve --config config`, once it listens.
    pub fn start(binary: impl AsRef<OsStr>, config: &Path) -> Server {
        Server::start_command(serve_command(binary, config))
    }

    /// `command` (a [`serve_command`] with an environment of its own, say), once it listens.
    pub fn start_command(command: Command) -> Server {
        Server::listening(Process::start("registry-token", command))
    }

    /// Like [`Server::start_command`], with the server's log written to the file `log`.
    pub fn start_logging_to(command: Command, log: &Path) -> Server {
        Server::listening(Process::start_logging_to("registry-token", command, log))
    }

    fn listening(mut process: Process) -> Server {
        let admin_address = process.wait_for_stdout(Server::ADMIN_LISTENING, Server::START);
        let address = process.wait_for_stdout(Server::LISTENING, Server::START);
        Server { process, address, admin_address }
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// An HTTP client of this server.
    pub fn client(&self) -> Client {
        Client::new(&self.address)
    }

    /// The operator listener's `127.0.0.1:PORT`.
    pub fn admin_address(&self) -> &str {
        &self.admin_address
    }

    /// An HTTP client of the operator listener.
    pub fn admin(&self) -> Client {
        Client::new(&self.admin_address)
    }
}

impl Deref for Server {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

impl DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}
