//! `shardfs share create|list|revoke`: public links to files and directories, made and ended through the
//! master (which serves them on its HTTP address, see the master's `web::share`).

use crate::admin::{call_as, Remote};
use crate::cli::{ShareCmd, UserCred};
use anyhow::{bail, Context};
use shardfs_common::proto::{Caller, MasterRequest, MasterResponse, ShareAction, ShareInfo};
use std::sync::Arc;
use std::time::Duration;

/// The master to ask and the caller to ask for.
pub(crate) fn remote_as(master: &str, who: UserCred) -> anyhow::Result<(Remote, Caller)> {
    let cred = crate::credential_path(master, who.credentials, "client.cred")?;
    let to = Remote {
        addr: crate::master_addr(master)?,
        cred: Arc::new(cred),
    };
    // SAFETY: getuid/getgid only read the process's ids.
    let (me, my_group) = unsafe { (libc::getuid(), libc::getgid()) };
    let caller = Caller {
        uid: who.uid.unwrap_or(me),
        gid: who.gid.unwrap_or(my_group),
        groups: Vec::new(),
    };
    Ok((to, caller))
}

fn ask(to: &Remote, caller: Caller, action: ShareAction) -> anyhow::Result<Vec<ShareInfo>> {
    let req = MasterRequest::Share(action);
    let answer = call_as(to, caller, req, Duration::from_secs(15))
        .with_context(|| format!("share links through the master at {}", to.addr))?;
    match answer {
        MasterResponse::Shares(s) => Ok(s),
        other => bail!("unexpected answer from the master: {other:?}"),
    }
}

/// The password of a new link (see `shardfs share create --help`).
fn read_password() -> anyhow::Result<String> {
    let p = match std::env::var("SHARDFS_SHARE_PASSWORD") {
        Ok(p) => p,
        Err(_) if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
            rpassword::prompt_password("password for the link: ")?
        }
        Err(_) => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim_end_matches(['\n', '\r']).to_string()
        }
    };
    if p.is_empty() {
        bail!("an empty password protects nothing");
    }
    Ok(p)
}

fn date(secs: u64) -> String {
    shardfs_common::proto::civil_date(secs as i64)
}

pub fn run(cmd: ShareCmd) -> anyhow::Result<()> {
    match cmd {
        ShareCmd::Create {
            master,
            path,
            expires,
            password,
            who,
        } => {
            let (to, caller) = remote_as(&master, who)?;
            let password = match password {
                true => Some(read_password()?),
                false => None,
            };
            let create = ShareAction::Create {
                path,
                expires_secs: expires,
                password,
            };
            let made = ask(&to, caller, create)?;
            let Some(s) = made.first() else {
                bail!("the master made no link");
            };
            println!("{}", s.url.as_deref().unwrap_or_default());
            eprintln!(
                "link {} to {}, until {} (UTC)",
                s.id,
                s.path,
                date(s.expires)
            );
        }
        ShareCmd::List { master, json, who } => {
            let (to, caller) = remote_as(&master, who)?;
            for s in ask(&to, caller, ShareAction::List)? {
                if json {
                    println!("{}", serde_json::to_string(&s)?);
                } else {
                    println!(
                        "{}  {}  uid {} via {}  until {}{}",
                        s.id,
                        s.path,
                        s.uid,
                        s.credential,
                        date(s.expires),
                        if s.password { "  (password)" } else { "" }
                    );
                }
            }
        }
        ShareCmd::Revoke { master, id, who } => {
            let (to, caller) = remote_as(&master, who)?;
            let gone = ask(&to, caller, ShareAction::Revoke { id })?;
            for s in gone {
                println!("revoked {} ({})", s.id, s.path);
            }
        }
    }
    Ok(())
}
