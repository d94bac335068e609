//! Where a bundle comes from (`policy.bundle`): a file, an HTTPS URL, or an OCI registry; and
//! `bundle push`, which puts one in a registry as an OCI artifact of its own media type.
//!
//! Every fetch is bounded by the size limit before the bytes are kept: a file by its length, an
//! HTTPS answer by its `Content-Length` and then by what arrives, an OCI manifest by 4 MiB (read
//! here, not by oci-client, which reads one whole), an OCI layer by the size its manifest declares
//! and then by what arrives (whose SHA-256 must be the digest the manifest names). HTTPS fetches are conditional (`If-None-Match` with the last `ETag`), OCI ones compare
//! the manifest's digest: an unchanged bundle is not downloaded again.

use super::{ARTIFACT_TYPE, BundleError, CONFIG_MEDIA_TYPE, MEDIA_TYPE};
use crate::config::BundleSource;
use futures_util::StreamExt;
use oci_client::client::{
    Certificate, CertificateEncoding, ClientConfig, ClientProtocol, Config, ImageLayer,
};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::Digest;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

/// How to fetch: the limit, whom to trust, who to be.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// The largest bundle accepted, packed or unpacked.
    pub max_bytes: u64,
    /// PEM certificates trusted besides the system's, for an HTTPS source or registry.
    pub ca_file: Option<PathBuf>,
    /// The user name presented to a registry (with the password in `password_file`).
    pub username: Option<String>,
    /// A file holding the password (readable by its owner only), read at every fetch so a
    /// credential that is renewed on disk is picked up.
    pub password_file: Option<PathBuf>,
    /// How long one fetch may take.
    pub timeout: Duration,
}

/// A bundle's bytes and what identifies this version of them at the source (an `ETag`, an OCI
/// manifest digest), for the next conditional fetch.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The bundle file.
    pub bytes: Vec<u8>,
    /// The source's version of it, when it has one.
    pub version: Option<String>,
}

/// What a fetch found.
#[derive(Debug)]
pub enum Fetch {
    /// The source still has the version asked about.
    Unchanged,
    /// A bundle (perhaps the same bytes, for a source without versions).
    New(Fetched),
}

/// Fetches the bundle at `source`; `known` is the version fetched last, if any.
pub async fn fetch(
    source: &BundleSource,
    options: &FetchOptions,
    known: Option<&str>,
) -> Result<Fetch, BundleError> {
    match source {
        BundleSource::File(path) => {
            read_file(path, options.max_bytes).map(|bytes| Fetch::New(Fetched { bytes, version: None }))
        }
        BundleSource::Https(url) => fetch_https(url, options, known).await,
        // The OCI client bounds each read and connection, not the whole pull: a registry that
        // sends a byte now and then would hold the fetch (and at start, or in the reloader, all
        // that waits on it) for ever. The HTTPS client has a total timeout of its own.
        BundleSource::Oci(reference) => {
            tokio::time::timeout(options.timeout, fetch_oci(reference, options, known)).await.unwrap_or_else(
                |_| {
                    Err(BundleError::Unavailable(format!(
                        "oci://{reference}: the pull did not finish within {:?}",
                        options.timeout
                    )))
                },
            )
        }
    }
}

/// A bundle file, at most `max_bytes` of it (read up to one byte more, whatever its metadata says).
pub fn read_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, BundleError> {
    let unreadable =
        |e: std::io::Error| BundleError::Unavailable(format!("cannot read {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let length = file.metadata().map_err(unreadable)?.len();
    if length > max_bytes {
        return Err(BundleError::TooLarge(format!(
            "{} is {length} bytes, more than the limit of {max_bytes}",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    file.take(max_bytes + 1).read_to_end(&mut bytes).map_err(unreadable)?;
    if bytes.len() as u64 > max_bytes {
        return Err(BundleError::TooLarge(format!(
            "{} grew past the limit of {max_bytes} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The PEM certificates of `ca_file`.
fn extra_roots(ca_file: Option<&Path>) -> Result<Vec<Vec<u8>>, BundleError> {
    let Some(path) = ca_file else { return Ok(Vec::new()) };
    let text = std::fs::read(path)
        .map_err(|e| BundleError::Unavailable(format!("cannot read the CA file {}: {e}", path.display())))?;
    let certificates: Vec<Vec<u8>> = pem::parse_many(&text)
        .map_err(|e| BundleError::Unavailable(format!("the CA file {} is not PEM: {e}", path.display())))?
        .into_iter()
        .filter(|block| block.tag() == "CERTIFICATE")
        .map(|block| pem::encode(&block).into_bytes())
        .collect();
    if certificates.is_empty() {
        return Err(BundleError::Unavailable(format!("the CA file {} holds no certificate", path.display())));
    }
    Ok(certificates)
}

async fn fetch_https(url: &str, options: &FetchOptions, known: Option<&str>) -> Result<Fetch, BundleError> {
    // Errors name the URL without its credentials or query (reqwest's would repeat it whole).
    let shown = crate::authority::shown_url(url);
    let failed = |reason: String| BundleError::Unavailable(format!("cannot fetch {shown}: {reason}"));
    let mut builder = reqwest::Client::builder()
        .timeout(options.timeout)
        .https_only(true)
        .redirect(reqwest::redirect::Policy::limited(3));
    for pem in extra_roots(options.ca_file.as_deref())? {
        let certificate = reqwest::Certificate::from_pem(&pem).map_err(|e| failed(e.to_string()))?;
        builder = builder.add_root_certificate(certificate);
    }
    let client = builder.build().map_err(|e| failed(e.to_string()))?;
    let mut request = client.get(url);
    if let Some(etag) = known {
        request = request.header(reqwest::header::IF_NONE_MATCH, etag);
    }
    let mut response = request.send().await.map_err(|e| failed(error_chain(&e.without_url())))?;
    if response.status() == reqwest::StatusCode::NOT_MODIFIED {
        return Ok(Fetch::Unchanged);
    }
    if !response.status().is_success() {
        return Err(failed(format!("HTTP {}", response.status())));
    }
    if let Some(length) = response.content_length()
        && length > options.max_bytes
    {
        return Err(BundleError::TooLarge(format!(
            "{shown} is {length} bytes, more than the limit of {}",
            options.max_bytes
        )));
    }
    let version =
        response.headers().get(reqwest::header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| failed(error_chain(&e.without_url())))? {
        if (bytes.len() + chunk.len()) as u64 > options.max_bytes {
            return Err(BundleError::TooLarge(format!(
                "{shown} sends more than the limit of {} bytes",
                options.max_bytes
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Fetch::New(Fetched { bytes, version }))
}

/// An error with its causes (reqwest's own text is often only "error sending request").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The OCI client for `reference`'s registry: plain HTTP only to a loopback registry (a test, a
/// sidecar on the same host), HTTPS trusting `ca_file` too otherwise.
fn oci_client(reference: &Reference, options: &FetchOptions) -> Result<Client, BundleError> {
    let registry = reference.registry().to_owned();
    let loopback = is_loopback(reference);
    let extra_root_certificates = extra_roots(options.ca_file.as_deref())?
        .into_iter()
        .map(|data| Certificate { encoding: CertificateEncoding::Pem, data })
        .collect();
    let config = ClientConfig {
        protocol: if loopback { ClientProtocol::HttpsExcept(vec![registry]) } else { ClientProtocol::Https },
        extra_root_certificates,
        read_timeout: Some(options.timeout),
        connect_timeout: Some(options.timeout),
        // A bundle is one layer: never an index to resolve by platform.
        platform_resolver: None,
        ..ClientConfig::default()
    };
    Client::try_from(config)
        .map_err(|e| BundleError::Unavailable(format!("cannot set up the OCI client: {e}")))
}

/// Whether `reference`'s registry is on this host (spoken to over plain HTTP).
fn is_loopback(reference: &Reference) -> bool {
    let registry = reference.registry();
    let host = registry.rsplit_once(':').map_or(registry, |(host, _)| host);
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The largest manifest read (distribution's own limit): a bundle's is a few hundred bytes.
const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// The manifest `reference` names, and its digest, read at most [`MAX_MANIFEST_BYTES`] of it
/// (oci-client reads a manifest whole, whatever its size). Authenticates through `client`, which
/// keeps the token for the layer's pull.
async fn pull_manifest(
    client: &Client,
    reference: &Reference,
    auth: &RegistryAuth,
    options: &FetchOptions,
    reference_text: &str,
) -> Result<(Vec<u8>, String), BundleError> {
    let failed =
        |reason: String| BundleError::Unavailable(format!("cannot pull oci://{reference_text}: {reason}"));
    let token = client
        .auth(reference, auth, oci_client::RegistryOperation::Pull)
        .await
        .map_err(|e| failed(error_chain(&e)))?;
    let mut builder = reqwest::Client::builder()
        .timeout(options.timeout)
        .https_only(!is_loopback(reference))
        .redirect(reqwest::redirect::Policy::limited(3));
    for pem in extra_roots(options.ca_file.as_deref())? {
        let certificate = reqwest::Certificate::from_pem(&pem).map_err(|e| failed(e.to_string()))?;
        builder = builder.add_root_certificate(certificate);
    }
    let http = builder.build().map_err(|e| failed(e.to_string()))?;
    let url = format!(
        "{scheme}://{registry}/v2/{repository}/manifests/{name}",
        scheme = if is_loopback(reference) { "http" } else { "https" },
        registry = reference.resolve_registry(),
        repository = reference.repository(),
        name = reference.digest().or(reference.tag()).unwrap_or("latest"),
    );
    let mut request = http.get(&url).header(reqwest::header::ACCEPT, OCI_IMAGE_MEDIA_TYPE);
    request = match (token, auth) {
        (Some(token), _) => request.bearer_auth(token),
        (None, RegistryAuth::Basic(username, password)) => request.basic_auth(username, Some(password)),
        (None, _) => request,
    };
    let mut response = request.send().await.map_err(|e| failed(error_chain(&e)))?;
    if response.status() != reqwest::StatusCode::OK {
        // The registry's error (distribution's JSON `errors`), cut short: it says why.
        let status = response.status();
        let mut said = Vec::new();
        while said.len() < 512
            && let Ok(Some(chunk)) = response.chunk().await
        {
            said.extend_from_slice(&chunk);
        }
        let said = String::from_utf8_lossy(&said[..said.len().min(512)]).trim().to_owned();
        return Err(failed(format!("HTTP {status} for its manifest: {said}")));
    }
    let too_large = || {
        BundleError::TooLarge(format!(
            "oci://{reference_text}: its manifest is more than {MAX_MANIFEST_BYTES} bytes; a bundle's is a few hundred"
        ))
    };
    if response.content_length().is_some_and(|length| length > MAX_MANIFEST_BYTES as u64) {
        return Err(too_large());
    }
    let said =
        response.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| failed(error_chain(&e)))? {
        if bytes.len() + chunk.len() > MAX_MANIFEST_BYTES {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    let digest = format!("sha256:{}", data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(&bytes)));
    for (whose, expected) in [("the registry", said.as_deref()), ("the reference", reference.digest())] {
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(BundleError::Digest(format!(
                "oci://{reference_text}: its manifest is {digest}, not the {expected} {whose} names"
            )));
        }
    }
    Ok((bytes, digest))
}

/// Who to be at the registry: anonymous, or the user name and the password file's first line.
fn credentials(options: &FetchOptions) -> Result<RegistryAuth, BundleError> {
    let (Some(username), Some(path)) = (&options.username, &options.password_file) else {
        return Ok(RegistryAuth::Anonymous);
    };
    let shown = path.display();
    let metadata = std::fs::metadata(path)
        .map_err(|e| BundleError::Unavailable(format!("cannot read the password file {shown}: {e}")))?;
    let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777;
    if mode & 0o077 != 0 {
        return Err(BundleError::Unavailable(format!(
            "the password file {shown} is readable by group or others (mode {mode:o}): run `chmod 600 {shown}`"
        )));
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| BundleError::Unavailable(format!("cannot read the password file {shown}: {e}")))?,
    );
    let password = text.lines().next().unwrap_or_default().trim().to_owned();
    if password.is_empty() {
        return Err(BundleError::Unavailable(format!("the password file {shown} is empty")));
    }
    Ok(RegistryAuth::Basic(username.clone(), password))
}

fn parse_reference(reference: &str) -> Result<Reference, BundleError> {
    Reference::try_from(reference)
        .map_err(|e| BundleError::Unavailable(format!("oci://{reference} is not an OCI reference: {e}")))
}

async fn fetch_oci(
    reference_text: &str,
    options: &FetchOptions,
    known: Option<&str>,
) -> Result<Fetch, BundleError> {
    let failed = |e: &dyn std::error::Error| {
        BundleError::Unavailable(format!("cannot pull oci://{reference_text}: {}", error_chain(e)))
    };
    let reference = parse_reference(reference_text)?;
    let client = oci_client(&reference, options)?;
    let auth = credentials(options)?;
    let (manifest_bytes, digest) = pull_manifest(&client, &reference, &auth, options, reference_text).await?;
    if known == Some(digest.as_str()) {
        return Ok(Fetch::Unchanged);
    }
    let manifest: OciImageManifest = serde_json::from_slice(&manifest_bytes).map_err(|e| {
        BundleError::Malformed(format!(
            "oci://{reference_text}: its manifest is not an OCI image manifest: {e}"
        ))
    })?;
    // A bundle is one layer of the registry's own: never a "foreign" layer whose `urls` would send
    // the pull to wherever the manifest says.
    if manifest.layers.iter().any(|layer| layer.urls.as_ref().is_some_and(|urls| !urls.is_empty())) {
        return Err(BundleError::Malformed(format!(
            "oci://{reference_text}: a layer names URLs to fetch it from; a bundle is pulled from the registry only"
        )));
    }
    let [layer] = manifest.layers.as_slice() else {
        return Err(BundleError::Malformed(format!(
            "oci://{reference_text} has {} layers; a bundle is one layer of type {MEDIA_TYPE}",
            manifest.layers.len()
        )));
    };
    if layer.media_type != MEDIA_TYPE {
        return Err(BundleError::Malformed(format!(
            "oci://{reference_text} is a {}, not a registry-token bundle ({MEDIA_TYPE})",
            layer.media_type
        )));
    }
    if u64::try_from(layer.size).map_or(true, |size| size > options.max_bytes) {
        return Err(BundleError::TooLarge(format!(
            "oci://{reference_text}: its bundle is {} bytes, more than the limit of {}",
            layer.size, options.max_bytes
        )));
    }
    let mut stream = client.pull_blob_stream(&reference, layer).await.map_err(|e| failed(&e))?;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| failed(&e))?;
        if (bytes.len() + chunk.len()) as u64 > options.max_bytes {
            return Err(BundleError::TooLarge(format!(
                "oci://{reference_text} sends more than the limit of {} bytes",
                options.max_bytes
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    let found = format!("sha256:{}", data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(&bytes)));
    if found != layer.digest {
        return Err(BundleError::Digest(format!(
            "oci://{reference_text}: the layer's content is {found}, not the {} its manifest names",
            layer.digest
        )));
    }
    Ok(Fetch::New(Fetched { bytes, version: Some(digest) }))
}

/// Pushes `bytes` (a bundle whose manifest is `manifest_json`) to `reference`
/// (`host/repository:tag`) as an OCI artifact: one layer of [`MEDIA_TYPE`], the bundle's
/// `manifest.json` as its config. Returns the pushed manifest's digest.
pub async fn push(
    bytes: &[u8],
    manifest_json: &[u8],
    annotations: BTreeMap<String, String>,
    reference_text: &str,
    options: &FetchOptions,
) -> Result<String, BundleError> {
    let failed = |e: &dyn std::error::Error| {
        BundleError::Unavailable(format!("cannot push oci://{reference_text}: {}", error_chain(e)))
    };
    let reference = parse_reference(reference_text)?;
    let client = oci_client(&reference, options)?;
    let auth = credentials(options)?;
    let layers = [ImageLayer::new(bytes.to_vec(), MEDIA_TYPE.to_owned(), None)];
    let config = Config::new(manifest_json.to_vec(), CONFIG_MEDIA_TYPE.to_owned(), None);
    let mut manifest = OciImageManifest::build(&layers, &config, Some(annotations));
    manifest.artifact_type = Some(ARTIFACT_TYPE.to_owned());
    client.push(&reference, &layers, config, &auth, Some(manifest)).await.map_err(|e| failed(&e))?;
    client.fetch_manifest_digest(&reference, &auth).await.map_err(|e| failed(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A registry on 127.0.0.1 that answers each of its first few requests with `head`, then
    /// `body` a piece at a time (`pause` between pieces).
    fn registry(head: String, body: Vec<u8>, pieces: usize, pause: Duration) -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(4) {
                let Ok(mut stream) = stream else { return };
                let (head, body) = (head.clone(), body.clone());
                std::thread::spawn(move || {
                    let mut request = [0u8; 4096];
                    let _ = stream.read(&mut request);
                    if stream.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    for piece in body.chunks(body.len().div_ceil(pieces).max(1)) {
                        std::thread::sleep(pause);
                        if stream.write_all(piece).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        address
    }

    fn options(timeout: Duration) -> FetchOptions {
        FetchOptions { max_bytes: 1 << 20, ca_file: None, username: None, password_file: None, timeout }
    }

    /// The registry answers one request per connection and closes it: it says so, or the client
    /// may send its next request on a connection being closed ("connection closed before message
    /// completed", a test that failed once in a while).
    fn manifest_head(length: usize) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {OCI_IMAGE_MEDIA_TYPE}\r\nContent-Length: {length}\r\n\
             Connection: close\r\n\r\n"
        )
    }

    /// A manifest sent a byte at a time, each well within the read timeout: the pull as a whole
    /// still ends at `timeout`.
    #[tokio::test]
    async fn an_oci_pull_that_trickles_ends_at_its_timeout() {
        let registry = registry(manifest_head(100), vec![b' '; 100], 100, Duration::from_millis(200));
        let source = BundleSource::Oci(format!("{registry}/team/policy:live"));
        let started = std::time::Instant::now();
        let result = fetch(&source, &options(Duration::from_secs(2)), None).await;
        let took = started.elapsed();
        let Err(BundleError::Unavailable(message)) = result else {
            panic!("a trickling registry gave {:?}", result.map(|_| "a bundle"))
        };
        assert!(message.contains("did not finish within 2s"), "{message}");
        assert!(took < Duration::from_secs(6), "the pull ended after {took:?}");
    }

    /// A manifest larger than any bundle's is refused once the limit is reached, whether the
    /// registry says its length or not, instead of being read whole (as oci-client would).
    #[tokio::test]
    async fn a_huge_manifest_is_refused_at_the_limit() {
        let huge = vec![b' '; 3 * MAX_MANIFEST_BYTES];
        let unsaid =
            format!("HTTP/1.1 200 OK\r\nContent-Type: {OCI_IMAGE_MEDIA_TYPE}\r\nConnection: close\r\n\r\n");
        for head in [manifest_head(huge.len()), unsaid] {
            let registry = registry(head, huge.clone(), 64, Duration::ZERO);
            let source = BundleSource::Oci(format!("{registry}/team/policy:live"));
            let result = fetch(&source, &options(Duration::from_secs(10)), None).await;
            let Err(BundleError::TooLarge(message)) = result else {
                panic!("a huge manifest gave {:?}", result.map(|_| "a bundle"))
            };
            assert!(message.contains("its manifest is more than 4194304 bytes"), "{message}");
        }
    }

    /// A registry's refusal is quoted (cut short) in the error: it says why.
    #[tokio::test]
    async fn a_refused_manifest_pull_says_what_the_registry_said() {
        let body = format!(
            r#"{{"errors":[{{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}}]}}{}"#,
            " ".repeat(4096)
        );
        let head = format!(
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        );
        let registry = registry(head, body.into_bytes(), 1, Duration::ZERO);
        let source = BundleSource::Oci(format!("{registry}/team/policy:live"));
        let result = fetch(&source, &options(Duration::from_secs(5)), None).await;
        let Err(BundleError::Unavailable(message)) = result else {
            panic!("a 404 gave {:?}", result.map(|_| "a bundle"))
        };
        assert!(message.contains("HTTP 404 Not Found for its manifest"), "{message}");
        assert!(message.contains("MANIFEST_UNKNOWN"), "{message}");
        assert!(message.len() < 700, "cut short: {message}");
    }

    /// A manifest whose layer names URLs (a "foreign" layer) is refused before any blob is
    /// fetched: the pull never goes where a registry's manifest says.
    #[tokio::test]
    async fn a_layer_with_urls_is_refused() {
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_IMAGE_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": format!("sha256:{}", "0".repeat(64)), "size": 2},
            "layers": [{
                "mediaType": MEDIA_TYPE,
                "digest": format!("sha256:{}", "1".repeat(64)),
                "size": 10,
                "urls": ["http://127.0.0.1:9/elsewhere"],
            }],
        })
        .to_string()
        .into_bytes();
        let registry = registry(manifest_head(manifest.len()), manifest, 1, Duration::ZERO);
        let source = BundleSource::Oci(format!("{registry}/team/policy:live"));
        let result = fetch(&source, &options(Duration::from_secs(5)), None).await;
        let Err(BundleError::Malformed(message)) = result else {
            panic!("a foreign layer gave {:?}", result.map(|_| "a bundle"))
        };
        assert!(message.contains("a layer names URLs"), "{message}");
    }
}
