//! `shardfs keys`: the cluster's data keys — list, rotate, rekey (with a progress bar), drop.

use crate::admin::{client, runtime, Progress, Remote};
use anyhow::bail;
use shardfs_common::proto::{KeyAction, MasterRequest, MasterResponse};
use std::time::{Duration, Instant};

pub enum Ask {
    List,
    Rotate,
    Rekey { wait: bool, timeout: u64 },
    Drop(u32),
}

/// (current epoch, (epoch, blocks) each, files marked).
async fn ask(
    mc: &shardfs_client::master::MasterClient,
    a: KeyAction,
) -> anyhow::Result<(u32, Vec<(u32, u64)>, u64)> {
    match mc.call(MasterRequest::Keys(a)).await? {
        MasterResponse::Keys {
            current,
            epochs,
            marked,
        } => Ok((current, epochs, marked)),
        other => bail!("unexpected answer from the master: {other:?}"),
    }
}

fn print(current: u32, epochs: &[(u32, u64)]) {
    println!("{:>6} {:>10}", "epoch", "blocks");
    for (e, n) in epochs {
        let mark = if *e == current { "  (current)" } else { "" };
        println!("{e:>6} {n:>10}{mark}");
    }
}

pub fn run(to: &Remote, what: Ask) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mc = client(to, Duration::from_secs(30))?;
        let r = async {
            match what {
                Ask::List => {
                    let (c, e, _) = ask(&mc, KeyAction::List).await?;
                    print(c, &e);
                }
                Ask::Rotate => {
                    let (c, e, _) = ask(&mc, KeyAction::Rotate).await?;
                    println!("new data is written under epoch {c}");
                    print(c, &e);
                }
                Ask::Drop(epoch) => {
                    let (c, e, _) = ask(&mc, KeyAction::Drop(epoch)).await?;
                    println!("the key of epoch {epoch} is dropped");
                    print(c, &e);
                }
                Ask::Rekey { wait, timeout } => {
                    let (c, _, marked) = ask(&mc, KeyAction::Rekey).await?;
                    println!("{marked} files to rewrite under epoch {c}");
                    if wait {
                        let deadline = Instant::now() + Duration::from_secs(timeout);
                        let mut bar = Progress::new("rekey", "blocks");
                        loop {
                            let (c, e, _) = ask(&mc, KeyAction::List).await?;
                            let old: u64 = e.iter().filter(|(x, _)| *x != c).map(|(_, n)| n).sum();
                            bar.draw(old, "blocks under older keys");
                            if old == 0 {
                                bar.finish();
                                print(c, &e);
                                break;
                            }
                            if Instant::now() >= deadline {
                                bail!("rekey not finished after {timeout} s: {old} blocks left");
                            }
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            }
            anyhow::Ok(())
        }
        .await;
        mc.close();
        r
    })
}
