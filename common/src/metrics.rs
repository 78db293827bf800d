//! Prometheus metrics: each process's recorder (the `metrics` facade, rendered by
//! `metrics-exporter-prometheus`) and the small HTTP server that serves them at `/metrics`.
//!
//! Every name starts with `shardfs_` and carries its unit (`_seconds`, `_bytes`, `_total`).
//! Durations are histograms with fixed buckets from 50 µs to 30 s. Gauges that describe state
//! (nodes by state, blocks degraded, bytes stored) are set by a refresh function just before
//! each scrape, so they cost nothing between scrapes.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tokio::sync::watch;

/// Bucket bounds of every `_seconds` histogram.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install this process's recorder (once; later calls return the same handle).
pub fn install() -> crate::Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .map_err(|e| crate::Error::Config(format!("metrics: {e}")))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| crate::Error::Config(format!("metrics: {e}")))?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// What to update right before a scrape.
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

/// Serve `/metrics` (and the routes of `extra`) on `addr` until `shutdown` turns true; the
/// bound address is returned (and written to `addr_file`, if given, once listening).
pub async fn serve(
    addr: SocketAddr,
    addr_file: Option<&Path>,
    refresh: Refresh,
    extra: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) -> crate::Result<SocketAddr> {
    let handle = install()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| crate::Error::Config(format!("cannot listen on {addr} for HTTP: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| crate::Error::Config(e.to_string()))?;
    if let Some(f) = addr_file {
        let tmp = f.with_extension("tmp");
        std::fs::write(&tmp, format!("{bound}\n"))
            .and_then(|()| std::fs::rename(&tmp, f))
            .map_err(|e| crate::Error::Config(format!("{}: {e}", f.display())))?;
    }
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (handle, refresh) = (handle.clone(), refresh.clone());
            async move {
                refresh();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    );
    let app = app.merge(extra);
    tokio::spawn(async move {
        let stop = async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        };
        if let Err(e) = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop)
        .await
        {
            tracing::warn!("metrics server stopped: {e}");
        }
    });
    Ok(bound)
}

/// Count one `op` of `what` (e.g. `shardfs_fuse`) and its duration since `start`: the
/// counter `{what}_ops_total{op}` and the histogram `{what}_op_duration_seconds{op}`.
pub fn timed(counter: &'static str, histogram: &'static str, op: &'static str, start: Instant) {
    metrics::counter!(counter, "op" => op).increment(1);
    metrics::histogram!(histogram, "op" => op).record(start.elapsed().as_secs_f64());
}
