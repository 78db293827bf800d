//! Round-trip latency of one master request (GetAttr of the root), sequential and in parallel:
//! `rpc_latency MASTER_ADDR CREDENTIAL [N] [PARALLEL] [THREADS] [GAP_US]` (GAP_US: a pause
//! between one answer and the next request, as a program's own work between system calls).
use shardfs_client::master::MasterClient;
use shardfs_common::proto::MasterRequest;
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    shardfs_common::daemon::init("warn");
    let a: Vec<String> = std::env::args().collect();
    let addr = a[1].parse()?;
    let cred = shardfs_common::pki::Credential::load(std::path::Path::new(&a[2]))?;
    let n: usize = a.get(3).map_or(Ok(5000), |s| s.parse())?;
    let par: usize = a.get(4).map_or(Ok(1), |s| s.parse())?;
    let threads: usize = a.get(5).map_or(Ok(0), |s| s.parse())?;
    let gap = Duration::from_micros(a.get(6).map_or(Ok(0), |s| s.parse())?);
    let rt = if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        let mc = std::sync::Arc::new(MasterClient::new(
            addr,
            &cred,
            Duration::from_secs(5),
            Duration::from_secs(10),
        )?);
        mc.call(MasterRequest::GetAttr {
            ino: shardfs_common::ROOT_INO,
        })
        .await?;
        let t = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..par {
            let mc = mc.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(n);
                for _ in 0..n {
                    let s = Instant::now();
                    mc.call(MasterRequest::GetAttr {
                        ino: shardfs_common::ROOT_INO,
                    })
                    .await
                    .unwrap();
                    lat.push(s.elapsed());
                    if !gap.is_zero() {
                        tokio::time::sleep(gap).await;
                    }
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await?);
        }
        let el = t.elapsed();
        lat.sort();
        println!(
            "{} calls, {} parallel: {:.0}/s, p50 {:?} p99 {:?}",
            lat.len(),
            par,
            lat.len() as f64 / el.as_secs_f64(),
            lat[lat.len() / 2],
            lat[lat.len() * 99 / 100]
        );
        anyhow::Ok(())
    })
}
