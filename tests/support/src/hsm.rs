//! A SoftHSM2 token of a test's own (Debian's `softhsm2`), found through `SOFTHSM2_CONF`.

use crate::{require_program, run_ok};
use std::path::{Path, PathBuf};
use std::process::Command;

/// SoftHSM2's PKCS#11 module, as Debian installs it.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// What to install when it is missing.
pub const SOFTHSM_INSTALL: &str = "install it with `apt-get install -y softhsm2`";

/// Initialises a token labelled `label` with user PIN `pin` in `root/hsm`; returns its
/// configuration file (for `SOFTHSM2_CONF`). The PIN is written to `root/hsm/pin` (mode 0600).
pub fn softhsm_token(root: &Path, label: &str, pin: &str) -> PathBuf {
    require_program("softhsm2-util", SOFTHSM_INSTALL);
    assert!(Path::new(SOFTHSM_MODULE).is_file(), "{SOFTHSM_MODULE} is missing: {SOFTHSM_INSTALL}");
    let hsm = root.join("hsm");
    std::fs::create_dir_all(hsm.join("tokens")).unwrap();
    let conf = hsm.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            hsm.join("tokens").display()
        ),
    )
    .unwrap();
    run_ok(Command::new("softhsm2-util").env("SOFTHSM2_CONF", &conf).args([
        "--init-token",
        "--free",
        "--label",
        label,
        "--pin",
        pin,
        "--so-pin",
        "8213-test-so-pin",
    ]));
    let pin_file = hsm.join("pin");
    std::fs::write(&pin_file, format!("{pin}\n")).unwrap();
    std::fs::set_permissions(&pin_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    conf
}
