//! `registry-token serve`: load, listen, reload on SIGHUP, drain on SIGTERM/SIGINT.

use crate::app::{Live, Service, system_clock};
use crate::config::Config;
use crate::{dev_authority, http, mint};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};

/// Runs the service until SIGTERM or SIGINT.
pub async fn run(config_path: &Path) -> Result<ExitCode, String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    if config.development.create_missing_keys {
        bootstrap_development(&config)?;
    }
    let grace = Duration::from_secs(config.http.shutdown_grace_seconds);
    let listen = config.listen;
    let live = Live::build(config).await.map_err(|e| e.to_string())?;
    tracing::info!(
        policy = live.policy.source(),
        digest = live.policy.digest(),
        settings = live.policy.settings_version(),
        kid = live.minter.kid(),
        "loaded"
    );
    let service = Arc::new(Service::new(live, Some(config_path.to_owned()), system_clock()));

    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    // On standard output, for scripts and tests that started us on port 0.
    println!("registry-token listening on http://{address}");
    tracing::info!(%address, "listening");

    spawn_reloader(Arc::clone(&service))?;

    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: draining in-flight requests"),
            _ = interrupt.recv() => tracing::info!("SIGINT: draining in-flight requests"),
        }
        let _ = stopping_tx.send(());
    };
    let server = axum::serve(listener, http::router(service)).with_graceful_shutdown(shutdown);
    let deadline = async {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = server => served.map_err(|e| format!("the server failed: {e}"))?,
        () = deadline => tracing::warn!(?grace, "shutdown grace period over; exiting with requests in flight"),
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP: re-read the configuration and everything it names; keep serving the old set if the
/// new one does not load.
fn spawn_reloader(service: Arc<Service>) -> Result<(), String> {
    let mut hangup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            if let Err(error) = service.reload().await {
                tracing::error!(%error, "reload refused; the previous configuration keeps serving");
            }
        }
    });
    Ok(())
}

/// `development.create_missing_keys`: make a missing signing key (and certificate) and a missing
/// development Authority, loudly. For trials on a fresh clone only.
fn bootstrap_development(config: &Config) -> Result<(), String> {
    let signing = &config.signing;
    if !signing.key_file.exists() {
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
        let generated = mint::keygen::generate(dir, signing.algorithm, 2048).map_err(|e| e.to_string())?;
        tracing::warn!(
            key = %generated.key_file.display(),
            cert = %generated.cert_file.display(),
            "DEVELOPMENT: created a new signing key because development.create_missing_keys is on; \
             never run production like this"
        );
    }
    if let Some(jwks) = &config.authority.jwks_file
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
