//! `shardfs top`: a live view of the cluster, one line per interval, from the master's
//! Prometheus metrics (`/metrics` at its `--http` address): data read and written on the
//! nodes, node requests, metadata operations and their mean latency, nodes up, degraded
//! blocks and shards repaired.

use anyhow::{bail, Context};
use prometheus_parse::{Scrape, Value};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Master requests that are not metadata operations of users (or that wait on purpose).
const NOT_METADATA: &[&str] = &["node-report", "watch", "session", "lock", "connect"];

/// The figures one line is made of, as totals since the processes started.
#[derive(Clone, Copy, Default, Debug)]
struct Totals {
    read: f64,
    written: f64,
    node_requests: f64,
    meta_ops: f64,
    meta_seconds: f64,
    nodes_up: f64,
    nodes: f64,
    degraded: f64,
    unrecoverable: f64,
    repaired: f64,
}

fn totals(text: &str) -> anyhow::Result<Totals> {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .context("the master's metrics are not Prometheus text")?;
    let mut t = Totals::default();
    for s in &scrape.samples {
        let v = match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => continue,
        };
        let op = s.labels.get("op").unwrap_or("");
        match s.metric.as_str() {
            "shardfs_cluster_read_bytes" => t.read = v,
            "shardfs_cluster_written_bytes" => t.written = v,
            "shardfs_cluster_node_requests" => t.node_requests = v,
            "shardfs_master_requests_total" if !NOT_METADATA.contains(&op) => t.meta_ops += v,
            "shardfs_master_request_duration_seconds_sum" if !NOT_METADATA.contains(&op) => {
                t.meta_seconds += v
            }
            "shardfs_nodes" => {
                t.nodes += v;
                if s.labels.get("state") == Some("up") {
                    t.nodes_up = v;
                }
            }
            "shardfs_blocks_degraded" => t.degraded = v,
            "shardfs_blocks_unrecoverable" => t.unrecoverable = v,
            "shardfs_repair_shards_total" => t.repaired = v,
            _ => {}
        }
    }
    Ok(t)
}

fn fetch(addr: &str) -> anyhow::Result<String> {
    let url = format!("http://{addr}/metrics");
    let r = ureq::get(&url)
        .timeout(Duration::from_secs(5))
        .call()
        .with_context(|| format!("cannot read {url}"))?;
    Ok(r.into_string()?)
}

/// The master's metrics address: given, or `http.addr` beside a MASTER address file (where
/// the launcher writes it).
pub fn http_addr(master: &str, given: Option<String>) -> anyhow::Result<String> {
    if let Some(a) = given {
        return Ok(a);
    }
    let p = Path::new(master);
    let beside = p.parent().unwrap_or(Path::new(".")).join("http.addr");
    match std::fs::read_to_string(&beside) {
        Ok(s) if p.is_file() => Ok(s.trim().to_string()),
        _ => bail!(
            "no metrics address for {master}: give --http HOST:PORT (the master's --http), \
             or the launcher's master.addr with http.addr beside it"
        ),
    }
}

/// Print one line every `interval`, `count` times (0: until interrupted).
pub fn run(addr: &str, interval: Duration, count: u64) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<8} {:>10} {:>10} {:>9} {:>9} {:>8} {:>6} {:>8} {:>8}",
        "time",
        "read MB/s",
        "write MB/s",
        "node IO/s",
        "meta op/s",
        "meta ms",
        "nodes",
        "degraded",
        "repaired"
    )?;
    let mut last = totals(&fetch(addr)?)?;
    let mut at = Instant::now();
    let mut lines = 0;
    while count == 0 || lines < count {
        std::thread::sleep(interval.saturating_sub(at.elapsed()));
        let now = totals(&fetch(addr)?)?;
        let secs = at.elapsed().as_secs_f64().max(1e-3);
        at = Instant::now();
        let rate = |a: f64, b: f64| (a - b).max(0.0) / secs;
        let ops = (now.meta_ops - last.meta_ops).max(0.0);
        let ms = match ops {
            0.0 => 0.0,
            n => (now.meta_seconds - last.meta_seconds).max(0.0) / n * 1000.0,
        };
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            % 86_400;
        let mut degraded = format!("{}", now.degraded);
        if now.unrecoverable > 0.0 {
            degraded += &format!("!{}", now.unrecoverable);
        }
        writeln!(
            out,
            "{:02}:{:02}:{:02} {:>10.1} {:>10.1} {:>9.0} {:>9.0} {:>8.2} {:>6} {:>8} {:>8}",
            t / 3600,
            t / 60 % 60,
            t % 60,
            rate(now.read, last.read) / 1e6,
            rate(now.written, last.written) / 1e6,
            rate(now.node_requests, last.node_requests),
            ops / secs,
            ms,
            format!("{}/{}", now.nodes_up, now.nodes),
            degraded,
            (now.repaired - last.repaired).max(0.0)
        )?;
        out.flush()?;
        last = now;
        lines += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_come_from_the_masters_metrics() {
        let text = "\
# TYPE shardfs_master_requests_total counter
shardfs_master_requests_total{op=\"create\"} 10
shardfs_master_requests_total{op=\"watch\"} 99
# TYPE shardfs_master_request_duration_seconds histogram
shardfs_master_request_duration_seconds_bucket{op=\"create\",le=\"+Inf\"} 10
shardfs_master_request_duration_seconds_sum{op=\"create\"} 0.5
shardfs_master_request_duration_seconds_count{op=\"create\"} 10
shardfs_master_request_duration_seconds_sum{op=\"watch\"} 90
# TYPE shardfs_nodes gauge
shardfs_nodes{state=\"up\"} 5
shardfs_nodes{state=\"down\"} 1
# TYPE shardfs_cluster_read_bytes gauge
shardfs_cluster_read_bytes 4096
";
        let t = totals(text).unwrap();
        assert_eq!((t.meta_ops, t.meta_seconds), (10.0, 0.5));
        assert_eq!((t.nodes_up, t.nodes), (5.0, 6.0));
        assert_eq!(t.read, 4096.0);
    }
}
