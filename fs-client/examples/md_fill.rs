//! Fill a cluster's namespace with empty files straight through the master protocol, for
//! measuring the master at scale (its memory and RocksDB size per file, and the mount's rates
//! in a big namespace): `md_fill MASTER_ADDR CREDENTIAL N [PARALLEL]` makes `/fill/dK/fI`,
//! 100,000 files per directory, and prints the rate.
use shardfs_common::proto::{FileKind, MasterRequest, MasterResponse, Timespec};
use shardfs_common::ROOT_INO;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PER_DIR: u64 = 100_000;

fn create(parent: u64, name: String, kind: FileKind) -> MasterRequest {
    MasterRequest::Create {
        parent,
        name: name.into_bytes(),
        kind,
        mode: if kind == FileKind::Dir { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        rdev: 0,
        now: Timespec::now(),
        session: 0,
    }
}

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        a.len() >= 4,
        "usage: md_fill MASTER_ADDR CREDENTIAL N [PARALLEL]"
    );
    let addr = a[1].parse()?;
    let cred = shardfs_common::pki::Credential::load(std::path::Path::new(&a[2]))?;
    let n: u64 = a[3].parse()?;
    let par: u64 = a.get(4).map_or(Ok(32), |s| s.parse())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mc = Arc::new(shardfs_client::master::MasterClient::new(
            addr,
            &cred,
            Duration::from_secs(5),
            Duration::from_secs(30),
        )?);
        let new_dir = |parent: u64, name: String| {
            let mc = mc.clone();
            async move {
                match mc.call(create(parent, name, FileKind::Dir)).await? {
                    MasterResponse::Changed { attr: Some(a), .. } => anyhow::Ok(a.ino),
                    other => anyhow::bail!("unexpected answer: {other:?}"),
                }
            }
        };
        let top = new_dir(ROOT_INO, "fill".into()).await?;
        let mut dirs = Vec::new();
        for d in 0..n.div_ceil(PER_DIR) {
            dirs.push(new_dir(top, format!("d{d}")).await?);
        }
        let dirs = Arc::new(dirs);
        let t = Instant::now();
        let mut tasks = Vec::new();
        for p in 0..par {
            let (mc, dirs) = (mc.clone(), dirs.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = p;
                while i < n {
                    let parent = dirs[(i / PER_DIR) as usize];
                    mc.call(create(parent, format!("f{i}"), FileKind::File))
                        .await?;
                    i += par;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let el = t.elapsed().as_secs_f64();
        println!("{n} files in {el:.1} s: {:.0}/s", n as f64 / el);
        anyhow::Ok(())
    })
}
