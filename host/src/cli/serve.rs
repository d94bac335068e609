//! `registry-token serve`: load, listen, reload on SIGHUP, drain on SIGTERM/SIGINT.

use crate::app::{self, App, Live, system_clock};
use crate::config::{BundleSource, Config, JwksSource, PolicyModule};
use crate::ledger::Ledger;
use crate::{dev_authority, http, mint};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

/// Runs the service until SIGTERM or SIGINT.
pub async fn run(config_path: &Path) -> Result<ExitCode, String> {
    // First: SIGHUP's default action ends the process, and the start (the ledger, a bundle and the
    // Authority's keys fetched, HSM keys opened, the policy compiled) can take seconds. A reload
    // asked for meanwhile (systemd's ExecReload right after a start) runs once the service is up.
    let hangup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    if config.development.create_missing_keys {
        bootstrap_development(&config)?;
    }
    let grace = Duration::from_secs(config.http.shutdown_grace_seconds);
    let listen = config.listen;
    let admin_listen = config.admin.listen;
    let limits = http::listener::Limits {
        read_timeout: Duration::from_secs(config.http.read_timeout_seconds),
        max_connections: config.http.max_connections,
    };
    crate::metrics::metrics().set_enabled(config.admin.metrics);
    let ledger = Ledger::open(&config.ledger, true).await.map_err(|e| format!("the ledger: {e}"))?;
    match &ledger {
        Some(ledger) => tracing::info!(
            ledger = ledger.url(),
            durability = ?ledger.durability(),
            revocations = ledger.health().revocations,
            "ledger open"
        ),
        None => tracing::warn!(
            "ledger.url is none: no audit trail of exchanges and no admin revocations on this instance{}",
            if config.policy.bundle.is_some() {
                "; a restart accepts any valid policy bundle revision (the ledger keeps the highest applied)"
            } else {
                ""
            }
        ),
    }
    let record = app::bundle_record(ledger.as_ref(), &config).await;
    let live = Live::build_with(config, None, record).await.map_err(|e| e.to_string())?;
    tracing::info!(
        policy = live.policy.source(),
        digest = live.policy.digest(),
        settings = live.policy.settings_version(),
        kid = live.keys.minter().kid(),
        custody = live.keys.minter().signer().custody(),
        "loaded"
    );
    let service = Arc::new(App::new(live, Some(config_path.to_owned()), system_clock()).with_ledger(ledger));
    // Not serving a bundle the ledger could not record: a restart would then accept a rollback.
    service
        .record_bundle()
        .await
        .map_err(|e| format!("the ledger did not record the policy bundle as applied: {e}"))?;
    service.copy_bundle().await;

    let bind = |address: SocketAddr, what: &'static str| async move {
        tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| format!("cannot listen on {address} ({what}): {e}"))
    };
    let admin_listener = bind(admin_listen, "admin.listen").await?;
    let listener = bind(listen, "listen").await?;
    let admin_address = admin_listener.local_addr().map_err(|e| e.to_string())?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    // Before the lines below: whoever waits for them (a test, a supervisor) may send SIGTERM at
    // once, and its default action would end the process without draining or writing the
    // ledger's queue. (Earlier, during the start, it still ends a start that hangs.)
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    // On standard output, for scripts and tests that started us on port 0; the main listener's
    // line comes last and means both accept connections.
    println!("registry-token admin listening on http://{admin_address}");
    println!("registry-token listening on http://{address}");
    tracing::info!(%address, admin = %admin_address, "listening");

    spawn_reloader(Arc::clone(&service), config_path, hangup)?;

    // When the stop began: the grace period runs from there.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(None::<tokio::time::Instant>);
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: draining in-flight requests"),
            _ = interrupt.recv() => tracing::info!("SIGINT: draining in-flight requests"),
        }
        let _ = stopping_tx.send(Some(tokio::time::Instant::now()));
    });
    type Stopping = tokio::sync::watch::Receiver<Option<tokio::time::Instant>>;
    let stopped = |mut stopping: Stopping| async move {
        let _ = stopping.wait_for(Option::is_some).await;
    };
    let server = http::listener::serve(
        listener,
        http::router(Arc::clone(&service)),
        limits,
        stopped(stopping.clone()),
    );
    let admin = http::listener::serve(
        admin_listener,
        http::admin_router(Arc::clone(&service)),
        limits,
        stopped(stopping.clone()),
    );
    let grace_over = |mut stopping: Stopping| async move {
        let began = stopping.wait_for(Option::is_some).await.ok().and_then(|began| *began);
        tokio::time::sleep_until(began.unwrap_or_else(tokio::time::Instant::now) + grace).await;
    };
    let deadline = grace_over(stopping.clone());
    let both = async { tokio::join!(server, admin) };
    tokio::select! {
        _ = both => {}
        () = deadline => tracing::warn!(?grace, "shutdown grace period over; exiting with requests in flight"),
    }
    // Exchanges whose clients hung up run on in tasks of their own, within the same grace period:
    // one cut off here would never queue its event.
    service.exchanges.close();
    let unfinished = tokio::select! {
        () = service.exchanges.wait() => 0,
        () = grace_over(stopping) => service.exchanges.len(),
    };
    if unfinished > 0 {
        match service.ledger {
            Some(_) => tracing::error!(
                unfinished,
                "exchanges still running when the grace period ended: their events are lost"
            ),
            None => tracing::warn!(unfinished, "exchanges still running when the grace period ended"),
        }
    }
    if let Some(ledger) = &service.ledger
        && let Err(error) = ledger.flush(Duration::from_secs(5)).await
    {
        let queued = ledger.health().queued;
        tracing::error!(%error, queued, "events still queued at exit are lost");
        // Not a clean stop: a supervisor (and whoever reads its log) must see that audit events
        // were lost.
        return Err(format!("stopped with {queued} ledger events unwritten (lost): {error}"));
    }
    if unfinished > 0 && service.ledger.is_some() {
        return Err(format!("stopped with {unfinished} exchanges unfinished: their ledger events are lost"));
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP, and with `watch: true` a change to any file the configuration names: re-read the
/// configuration and everything it names; keep serving the old set if the new one does not load.
/// Reloads run one at a time; triggers that arrive meanwhile are coalesced into the next one.
fn spawn_reloader(
    service: Arc<App>,
    config_path: &Path,
    mut hangup: tokio::signal::unix::Signal,
) -> Result<(), String> {
    let (changed_tx, mut changed) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watching = service.live().config.watch;
    let mut watcher = match watching {
        true => Some(FileWatcher::new(changed_tx)?),
        false => None,
    };
    let config_path = config_path.to_owned();
    tokio::spawn(async move {
        // When the next poll is due, and at which interval it was set: kept across the passes of
        // the loop, so that neither reloads nor the ledger's retries put a poll off.
        let mut next_poll: Option<(Duration, Instant)> = None;
        loop {
            if let Some(watcher) = watcher.as_mut() {
                watcher.watch(&watched_files(&config_path, &service.live().config));
            }
            // A bundle from a URL or a registry is asked for a new revision every
            // `policy.bundle_poll_seconds`; a file is reloaded like any other file.
            let poll_every = service
                .live()
                .config
                .policy
                .bundle
                .as_ref()
                .filter(|bundle| bundle.source.is_remote() && bundle.poll_seconds > 0)
                .map(|bundle| Duration::from_secs(bundle.poll_seconds));
            next_poll = match (poll_every, next_poll) {
                (Some(every), Some((set_at, due))) if set_at == every => Some((every, due)),
                (Some(every), _) => Some((every, Instant::now() + every)),
                (None, _) => None,
            };
            let poll = async move {
                match next_poll {
                    Some((_, due)) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            // A bundle applied by a reload or poll while the ledger could not record it.
            let unrecorded = service.bundle_unrecorded();
            let record_again = async move {
                match unrecorded {
                    true => tokio::time::sleep(RECORD_AGAIN).await,
                    false => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(()) = hangup.recv() => tracing::info!("SIGHUP: reloading"),
                Some(()) = changed.recv() => {
                    // Editors and deployment tools write in several steps: let them finish.
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    while changed.try_recv().is_ok() {}
                    tracing::info!("a watched file changed: reloading");
                }
                () = poll => {
                    // A refused bundle is logged (and counted, and shown by /readyz) by the App.
                    match service.poll_bundle().await {
                        Err(crate::app::BuildError::Bundle { .. }) | Ok(_) => {}
                        Err(error) => tracing::error!(%error, "a new policy bundle could not be applied"),
                    }
                    next_poll = poll_every.map(|every| (every, Instant::now() + every));
                    continue;
                }
                () = record_again => {
                    service.record_bundle_or_warn().await;
                    continue;
                }
                else => break,
            }
            if let Err(error) = service.reload().await {
                tracing::error!(%error, "reload refused; the previous configuration keeps serving");
            }
        }
    });
    Ok(())
}

/// How soon the ledger is asked again to record a bundle it could not.
const RECORD_AGAIN: Duration = Duration::from_secs(5);

/// Every file a configuration names, and the configuration itself.
fn watched_files(config_path: &Path, config: &Config) -> Vec<PathBuf> {
    let mut files = vec![config_path.to_owned()];
    if !config.signing.key_file.as_os_str().is_empty() {
        files.push(config.signing.key_file.clone());
    }
    files.extend(config.signing.cert_file.clone());
    for key in &config.signing.keys {
        files.extend(key.key_file.clone());
        files.extend(key.cert_file.clone());
        files.extend(key.pkcs11.as_ref().map(|hsm| hsm.pin_file.clone()));
    }
    if let JwksSource::File(jwks) = &config.authority.jwks {
        files.push(jwks.clone());
    }
    match &config.policy.bundle {
        Some(bundle) => {
            if let BundleSource::File(file) = &bundle.source {
                files.push(file.clone());
            }
            files.extend(bundle.keys.iter().cloned());
            files.extend(bundle.ca_file.clone());
            files.extend(bundle.password_file.clone());
        }
        None => {
            files.extend(config.policy.settings_file.clone());
            if let PolicyModule::File(module) = &config.policy.module {
                files.push(module.clone());
            }
        }
    }
    files
}

/// Watches the directories of a set of files (editors replace files by renaming, which a watch on
/// the file itself would miss) and reports changes to those files. A Kubernetes ConfigMap or
/// Secret volume changes none of its files' names: each is a link through `..data`, which the
/// kubelet swaps for a new directory; a change to `..data` beside a watched file is reported too.
const KUBERNETES_DATA: &str = "..data";

struct FileWatcher {
    watcher: notify::RecommendedWatcher,
    files: Arc<std::sync::Mutex<Vec<PathBuf>>>,
    directories: Vec<PathBuf>,
}

impl FileWatcher {
    fn new(changed: tokio::sync::mpsc::UnboundedSender<()>) -> Result<FileWatcher, String> {
        let files: Arc<std::sync::Mutex<Vec<PathBuf>>> = Arc::default();
        let wanted = Arc::clone(&files);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if event.kind.is_access() {
                return;
            }
            let ours = wanted.lock().is_ok_and(|files| {
                event.paths.iter().any(|p| {
                    let swapped = p.file_name().is_some_and(|name| name == KUBERNETES_DATA);
                    files
                        .iter()
                        .any(|f| (swapped || p.file_name() == f.file_name()) && p.parent() == f.parent())
                })
            });
            if ours {
                let _ = changed.send(());
            }
        })
        .map_err(|e| format!("cannot watch files: {e}"))?;
        Ok(FileWatcher { watcher, files, directories: Vec::new() })
    }

    fn watch(&mut self, files: &[PathBuf]) {
        use notify::Watcher as _;
        let absolute: Vec<PathBuf> = files.iter().filter_map(|f| std::path::absolute(f).ok()).collect();
        let mut directories: Vec<PathBuf> =
            absolute.iter().filter_map(|f| f.parent().map(Path::to_owned)).collect();
        directories.sort();
        directories.dedup();
        if let Ok(mut wanted) = self.files.lock() {
            *wanted = absolute;
        }
        if directories == self.directories {
            return;
        }
        for directory in self.directories.drain(..) {
            let _ = self.watcher.unwatch(&directory);
        }
        for directory in directories {
            match self.watcher.watch(&directory, notify::RecursiveMode::NonRecursive) {
                Ok(()) => self.directories.push(directory),
                Err(error) => tracing::warn!(directory = %directory.display(), %error, "cannot watch"),
            }
        }
    }
}

/// `development.create_missing_keys`: make a missing signing key (and certificate) and a missing
/// development Authority, loudly. For trials on a fresh clone only.
fn bootstrap_development(config: &Config) -> Result<(), String> {
    let signing = &config.signing;
    // The single-key form only: a key set's files are the operator's, made with `keygen`.
    if signing.keys.is_empty() && !signing.key_file.exists() {
        let dir = signing.key_file.parent().unwrap_or(Path::new("."));
        let expected_names = signing.key_file.file_name() == Some(mint::keygen::KEY_FILE.as_ref())
            && signing.cert_file.as_ref().is_none_or(|c| {
                c.file_name() == Some(mint::keygen::CERT_FILE.as_ref()) && c.parent() == Some(dir)
            });
        if !expected_names {
            return Err(format!(
                "development.create_missing_keys can only create {dir}/{} and {dir}/{}; \
                 create {} with `registry-token keygen` instead",
                mint::keygen::KEY_FILE,
                mint::keygen::CERT_FILE,
                signing.key_file.display(),
                dir = dir.display(),
            ));
        }
        let generated = mint::keygen::generate(dir, signing.algorithm.unwrap_or_default(), 2048)
            .map_err(|e| e.to_string())?;
        tracing::warn!(
            key = %generated.key_file.display(),
            cert = %generated.cert_file.display(),
            "DEVELOPMENT: created a new signing key because development.create_missing_keys is on; \
             never run production like this"
        );
    }
    if let JwksSource::File(jwks) = &config.authority.jwks
        && !jwks.exists()
    {
        let dir = jwks.parent().unwrap_or(Path::new("."));
        if jwks.file_name() != Some(dev_authority::JWKS_FILE.as_ref()) {
            return Err(format!(
                "{} does not exist, and development.create_missing_keys only creates a development \
                 Authority whose JWKS is named {}",
                jwks.display(),
                dev_authority::JWKS_FILE
            ));
        }
        dev_authority::init(dir, &config.authority.issuer).map_err(|e| e.to_string())?;
        tracing::warn!(
            dir = %dir.display(),
            "DEVELOPMENT: created a development Authority; mint caller tokens with \
             `registry-token dev-authority token --dir {}`; never run production like this",
            dir.display()
        );
    }
    Ok(())
}
