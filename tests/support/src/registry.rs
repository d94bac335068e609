//! The real registry and its client: Debian's `docker-registry` (distribution 2.8) trusting a
//! certificate bundle, `skopeo` run hermetically, and a one-layer OCI image written from scratch
//! (no container engine needed to push one).

use crate::{Client, Process, free_port, require_program};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// What to install when the registry or skopeo is missing.
pub const REGISTRY_INSTALL: &str =
    "install both with `apt-get install -y docker-registry skopeo` (Debian: docker-registry 2.8, skopeo 1.9)";

/// A running `docker-registry serve`, on a free 127.0.0.1 port, storing below its directory and
/// trusting tokens from `realm` for `service`, signed by a key of `rootcertbundle`.
#[derive(Debug)]
pub struct DockerRegistry {
    config: PathBuf,
    address: String,
    process: Option<Process>,
}

impl DockerRegistry {
    /// Writes `dir/registry.yml` and starts the registry; returns once it answers `/v2/`.
    pub fn start(dir: &Path, realm: &str, service: &str, rootcertbundle: &Path) -> DockerRegistry {
        require_program("docker-registry", REGISTRY_INSTALL);
        require_program("skopeo", REGISTRY_INSTALL);
        let address = format!("127.0.0.1:{}", free_port());
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: info}}\n\
                 storage: {{filesystem: {{rootdirectory: '{root}/storage'}}, delete: {{enabled: true}}}}\n\
                 http: {{addr: '{address}'}}\n\
                 auth: {{token: {{realm: '{realm}', service: {service}, issuer: registry-token, \
                 rootcertbundle: '{bundle}'}}}}\n",
                root = dir.display(),
                bundle = rootcertbundle.display(),
            ),
        )
        .unwrap();
        let mut registry = DockerRegistry { config, address, process: None };
        registry.start_again();
        registry
    }

    /// Starts it (again) on the same address, as an operator restarts it to reread its bundle.
    pub fn start_again(&mut self) {
        let mut command = Command::new(require_program("docker-registry", REGISTRY_INSTALL));
        command.arg("serve").arg(&self.config);
        // The registry reads every REGISTRY_* variable as a configuration override (our own
        // REGISTRY_TOKEN_* included): it gets none of them.
        for (name, _) in std::env::vars() {
            if name.starts_with("REGISTRY_") {
                command.env_remove(name);
            }
        }
        self.process = Some(Process::start("docker-registry", command));
        for _ in 0..200 {
            if let Ok(reply) = self.client().get("/v2/") {
                assert_eq!(reply.status, 401, "the registry should ask for a token: {reply}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not start; its log:\n{}", self.log());
    }

    /// Stops it (by PID).
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// An HTTP client of it.
    pub fn client(&self) -> Client {
        Client::new(&self.address)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.process.as_ref().map(Process::stderr).unwrap_or_default()
    }

    /// `docker://ADDRESS/REPOSITORY:TAG`.
    pub fn image_ref(&self, repository: &str, tag: &str) -> String {
        format!("docker://{}/{repository}:{tag}", self.address)
    }
}

/// `skopeo` with nothing from the machine: no auth file, no policy, `home` as its home.
pub fn skopeo(home: &Path) -> Command {
    let mut command = Command::new("skopeo");
    command
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", home)
        .env("REGISTRY_AUTH_FILE", home.join("no-auth.json"));
    command
}

/// Runs `command`, failing the test with its standard error when it fails.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    output
}

/// Writes a one-layer OCI image layout (what `skopeo copy oci:DIR:1` reads). Returns its manifest
/// digest.
pub fn build_image(dir: &Path) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> (String, usize) {
        let digest = data_encoding::HEXLOWER.encode(&Sha256::digest(bytes));
        std::fs::write(blobs.join(&digest), bytes).unwrap();
        (format!("sha256:{digest}"), bytes.len())
    };

    let mut tar = tar::Builder::new(Vec::new());
    let content = b"hello from registry-token's end-to-end suite\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, "hello.txt", &content[..]).unwrap();
    let tar = tar.into_inner().unwrap();
    let diff_id = format!("sha256:{}", data_encoding::HEXLOWER.encode(&Sha256::digest(&tar)));
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&tar).unwrap();
    let (layer, layer_size) = put(&gzip.finish().unwrap());

    let config = json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let (config, config_size) = put(config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": layer_size}],
    });
    let (manifest, manifest_size) = put(manifest.to_string().as_bytes());
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "1"},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    manifest
}

/// The manifest digest an OCI layout's index names for its first tag.
pub fn layout_digest(dir: &Path) -> String {
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"].as_str().unwrap().to_owned()
}
