//! Who may talk to the cluster: the CA, join tokens, the credentials issued, revocation, and
//! which role may send which request.
//!
//! The CA lives in the master's data directory (`ca.key`, `ca.crt`); the master's own
//! credential (`master.cred`) and a first admin credential (`admin.cred`) are made with it when
//! the cluster is created. Everything else joins with a one-time token: the joiner makes its key
//! pair, sends the public half with the token's secret, and gets a certificate back. Tokens are
//! kept as hashes (`J` records) and deleted when used; each issued credential is a `K` record
//! (role, host, created, revoked). A revoked credential is refused at its next connection
//! and request here, its live connections are closed, and nodes learn the revoked ids from
//! their heartbeat answers.

use crate::meta::Meta;
use crate::MasterError;
use serde::{Deserialize, Serialize};
use shardfs_common::cap::CapKey;
use shardfs_common::pki::{self, Ca, Credential, Identity, JoinToken, Role};
use shardfs_common::proto::{CredentialInfo, MasterRequest, Users};
use shardfs_common::wire::Peer;
use shardfs_common::{Error, ErrorCode, NodeId};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

const CRED: u8 = b'K';
const TOKEN: u8 = b'J';
/// The users a client credential may act as (only for credentials limited to some).
const USERS: u8 = b'U';
/// The same, for a token not used yet.
const TOKEN_USERS: u8 = b'V';

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CredentialRecord {
    role: Role,
    host: String,
    created: u64,
    revoked: bool,
    allow_root: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct TokenRecord {
    role: Role,
    expires: u64,
    allow_root: bool,
}

/// Connections one credential may have open to the master at once (a mount needs one).
const MAX_CONNECTIONS: usize = 64;

/// Longest a join token may be valid.
const MAX_TOKEN_TTL: u64 = 30 * 24 * 3600;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn denied(msg: impl Into<String>) -> MasterError {
    MasterError::Fs(Error::fs(ErrorCode::Permission, msg))
}

pub struct Authority {
    ca: Ca,
    /// The key of clients' capabilities for shard reads and writes (`cap.key`), which nodes
    /// learn when they register.
    pub cap_key: CapKey,
    /// The master's own credential (presented to every peer).
    pub own: Credential,
    records: Mutex<HashMap<String, CredentialRecord>>,
    revoked: RwLock<HashSet<String>>,
    last_seen: Mutex<HashMap<String, u64>>,
    /// Open connections per credential id, closed when it is revoked.
    live: Mutex<HashMap<String, Vec<quinn::Connection>>>,
    /// Unused join tokens by secret hash (a mirror of the `J` records); also read by the
    /// handshake's verifier. Tokens are taken under this lock (check, delete, issue).
    tokens: Arc<Mutex<HashMap<[u8; 32], TokenRecord>>>,
    /// The users each limited client credential (by id) or unused token (by secret hash, hex)
    /// may act as (mirrors of the `U` and `V` records); absent: any.
    users: RwLock<HashMap<String, Users>>,
    token_users: Mutex<HashMap<[u8; 32], Users>>,
}

impl Authority {
    /// Open the CA in `dir` (making it, the master's credential and a first admin credential
    /// if the cluster has none yet).
    pub fn open(dir: &Path, meta: &Meta) -> Result<Authority, MasterError> {
        let (ca, made) = Ca::open_or_create(dir)?;
        let own_path = dir.join("master.cred");
        let own = if own_path.exists() && !made {
            Credential::load(&own_path)?
        } else {
            let c = ca.credential(&Identity::new(Role::Master, "master"))?;
            c.save(&own_path)?;
            c
        };
        let mut records = HashMap::new();
        for (k, r) in meta.records::<CredentialRecord>(CRED)? {
            records.insert(String::from_utf8_lossy(&k).into_owned(), r);
        }
        let revoked = records
            .iter()
            .filter(|(_, r)| r.revoked)
            .map(|(id, _)| id.clone())
            .collect();
        let mut tokens = HashMap::new();
        for (k, t) in meta.records::<TokenRecord>(TOKEN)? {
            if let Ok(hash) = <[u8; 32]>::try_from(&k[..]) {
                tokens.insert(hash, t);
            }
        }
        let users: HashMap<String, Users> = meta
            .records::<Users>(USERS)?
            .into_iter()
            .map(|(k, u)| (String::from_utf8_lossy(&k).into_owned(), u))
            .collect();
        let token_users: HashMap<[u8; 32], Users> = meta
            .records::<Users>(TOKEN_USERS)?
            .into_iter()
            .filter_map(|(k, u)| Some((<[u8; 32]>::try_from(&k[..]).ok()?, u)))
            .collect();
        let cap_key = CapKey::open_or_create(&dir.join("cap.key"))?;
        let auth = Authority {
            ca,
            cap_key,
            own,
            records: Mutex::new(records),
            revoked: RwLock::new(revoked),
            last_seen: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            tokens: Arc::new(Mutex::new(tokens)),
            users: RwLock::new(users),
            token_users: Mutex::new(token_users),
        };
        let admin_path = dir.join("admin.cred");
        if made {
            let id = auth.next_id(Role::Admin);
            let cred = auth
                .ca
                .credential(&Identity::new(Role::Admin, id.clone()))?;
            auth.record(meta, &id, Role::Admin, "master", true)?;
            cred.save(&admin_path)?;
            info!(path = %admin_path.display(), %id, "cluster CA made; first admin credential written");
        }
        Ok(auth)
    }

    fn next_id(&self, role: Role) -> String {
        let records = self.records.lock().expect("credentials lock");
        let prefix = format!("{role}-");
        let n = records
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix)?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        format!("{prefix}{}", n + 1)
    }

    fn record(
        &self,
        meta: &Meta,
        id: &str,
        role: Role,
        host: &str,
        allow_root: bool,
    ) -> Result<(), MasterError> {
        let rec = CredentialRecord {
            role,
            host: host.to_string(),
            created: now(),
            revoked: false,
            allow_root,
        };
        meta.put_record(CRED, id.as_bytes(), &rec)?;
        self.records
            .lock()
            .expect("credentials lock")
            .insert(id.to_string(), rec);
        Ok(())
    }

    /// For the handshake: whether a join certificate names a live token.
    pub fn token_check(&self) -> shardfs_common::net::TokenCheck {
        let tokens = self.tokens.clone();
        Arc::new(move |hash: &[u8; 32]| {
            tokens
                .lock()
                .expect("tokens lock")
                .get(hash)
                .is_some_and(|t| t.expires >= now())
        })
    }

    pub fn is_revoked(&self, id: &str) -> bool {
        self.revoked.read().expect("revoked lock").contains(id)
    }

    pub fn revoked(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .revoked
            .read()
            .expect("revoked lock")
            .iter()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// The host a credential was issued to.
    pub fn host_of(&self, id: &str) -> Option<String> {
        self.records
            .lock()
            .expect("credentials lock")
            .get(id)
            .map(|r| r.host.clone())
    }

    /// The credential of the master's own web UI, made at each start and kept in memory only:
    /// a client that may act for any user, as it does for each signed-in web user (whom the
    /// sign-in link limits to what the credential that made it allows).
    pub fn web_credential(&self, meta: &Meta) -> Result<Credential, MasterError> {
        const ID: &str = "web";
        if self.is_revoked(ID) {
            return Err(denied("the web UI's credential (web) was revoked"));
        }
        let c = self.ca.credential(&Identity::new(Role::Client, ID))?;
        self.record(meta, ID, Role::Client, "the master's web UI", true)?;
        Ok(c)
    }

    /// Whether a client credential may act as root (not squashed).
    pub fn allows_root(&self, who: &Identity) -> bool {
        who.role == Role::Admin
            || self
                .records
                .lock()
                .expect("credentials lock")
                .get(&who.id)
                .is_some_and(|r| r.allow_root)
    }

    /// The users credential `who` may act as (admins: anyone).
    pub fn users(&self, who: &Identity) -> Users {
        if who.role == Role::Admin {
            return Users::default();
        }
        self.users
            .read()
            .expect("users lock")
            .get(&who.id)
            .cloned()
            .unwrap_or_default()
    }

    /// A new connection: a credential the cluster issued and did not revoke, or none (join).
    pub fn admit(&self, peer: &Peer, conn: &quinn::Connection) -> Result<(), String> {
        let Some(who) = &peer.who else {
            return Ok(());
        };
        if self.is_revoked(&who.id) {
            return Err(format!("credential {} was revoked", who.id));
        }
        if !matches!(who.role, Role::Master | Role::Joiner) {
            let records = self.records.lock().expect("credentials lock");
            match records.get(&who.id) {
                Some(r) if r.role == who.role => {}
                _ => return Err(format!("credential {} is unknown to this cluster", who.id)),
            }
        }
        self.last_seen
            .lock()
            .expect("last seen lock")
            .insert(who.id.clone(), now());
        let mut live = self.live.lock().expect("live lock");
        let conns = live.entry(who.id.clone()).or_default();
        conns.retain(|c| c.close_reason().is_none());
        if conns.len() >= MAX_CONNECTIONS && who.role != Role::Master {
            return Err(format!(
                "credential {} already has {MAX_CONNECTIONS} connections open",
                who.id
            ));
        }
        conns.push(conn.clone());
        Ok(())
    }

    /// Whether `peer` may send `req`; the reason if not.
    pub fn authorize(&self, req: &MasterRequest, peer: &Peer) -> Result<(), MasterError> {
        use MasterRequest as R;
        let Some(who) = &peer.who else {
            return match req {
                R::Join { .. } => Ok(()),
                _ => Err(denied(
                    "this request needs a credential of the cluster (join with a token first)",
                )),
            };
        };
        if self.is_revoked(&who.id) {
            return Err(denied(format!("credential {} was revoked", who.id)));
        }
        if who.role == Role::Joiner {
            return match req {
                R::Join { secret, .. } if hex::encode(JoinToken::secret_hash(secret)) == who.id => {
                    Ok(())
                }
                _ => Err(denied(
                    "a joining host may only send the join it showed the token of",
                )),
            };
        }
        let node_only = |id: NodeId| match who.node_id() {
            Some(own) if who.role == Role::Node && own == id => Ok(()),
            _ => Err(denied(format!(
                "only node {id} itself may send this ({who} may not)"
            ))),
        };
        let roles: &[Role] = match req {
            R::Cluster => return Ok(()),
            R::Join { .. } => &[],
            R::Register { id, .. } | R::Heartbeat { id, .. } => return node_only(*id),
            R::ShardsLost { node, .. } => return node_only(*node),
            R::NodeStats { id, .. } => return node_only(*id),
            R::Drain { .. }
            | R::Scrub
            | R::Repair
            | R::Health
            | R::Recent
            | R::Audit(_)
            | R::Keys(_)
            | R::CreateToken { .. }
            | R::Credentials
            | R::Revoke { .. } => &[Role::Admin],
            // Nodes decrypt to seal pieces into blocks and to verify descriptions.
            R::DataKeys => &[Role::Client, Role::Admin, Role::Node],
            // Mounts learn node addresses from `Nodes`.
            _ => &[Role::Client, Role::Admin],
        };
        if roles.contains(&who.role) {
            Ok(())
        } else {
            let needs = roles
                .first()
                .map_or("a joining host's".into(), |r| format!("a {r}"));
            Err(denied(format!(
                "{who} may not send this request (it needs {needs} credential)"
            )))
        }
    }

    /// Make a one-time join token.
    pub fn create_token(
        &self,
        meta: &Meta,
        role: Role,
        ttl_secs: u64,
        allow_root: bool,
        users: Users,
    ) -> Result<(String, u64), MasterError> {
        if !matches!(role, Role::Node | Role::Client | Role::Admin) {
            return Err(Error::invalid(format!("no token can make a {role} credential")).into());
        }
        users.uids.check()?;
        users.gids.check()?;
        if role != Role::Client && !users.is_any() {
            return Err(Error::invalid("only client credentials are limited to some users").into());
        }
        if ttl_secs == 0 || ttl_secs > MAX_TOKEN_TTL {
            return Err(Error::invalid(format!(
                "a token lives between 1 second and {MAX_TOKEN_TTL} seconds"
            ))
            .into());
        }
        let secret: [u8; 16] = pki::random();
        let expires = now() + ttl_secs;
        let hash = JoinToken::secret_hash(&secret);
        let rec = TokenRecord {
            role,
            expires,
            allow_root: allow_root && role == Role::Client,
        };
        let mut tokens = self.tokens.lock().expect("tokens lock");
        tokens.retain(|_, t| t.expires >= now());
        if tokens.len() >= 10_000 {
            return Err(Error::fs(ErrorCode::NoSpace, "too many unused join tokens").into());
        }
        if !users.is_any() {
            meta.put_record(TOKEN_USERS, &hash, &users)?;
            self.token_users
                .lock()
                .expect("token users lock")
                .insert(hash, users);
        }
        meta.put_record(TOKEN, &hash, &rec)?;
        tokens.insert(hash, rec);
        let token = JoinToken {
            secret,
            ca: pki::fingerprint(self.ca.cert()),
        };
        Ok((token.to_string(), expires))
    }

    /// Exchange a token for a certificate of the joiner's key.
    pub fn join(
        &self,
        meta: &Meta,
        secret: &[u8; 16],
        public_key: &[u8],
        host: &str,
        node: Option<NodeId>,
        peer: &Peer,
    ) -> Result<(Vec<u8>, Vec<u8>), MasterError> {
        pki::check_public_key(public_key)?;
        let host: String = host.chars().filter(|c| !c.is_control()).take(64).collect();
        let mut tokens = self.tokens.lock().expect("tokens lock");
        let hash = JoinToken::secret_hash(secret);
        let Some(tok) = tokens.get(&hash).cloned() else {
            warn!(%peer, "refused a join: unknown or already used token");
            return Err(denied("the join token is unknown or was already used"));
        };
        if tok.expires < now() {
            meta.delete_record(TOKEN, &hash)?;
            tokens.remove(&hash);
            warn!(%peer, "refused a join: expired token");
            return Err(denied("the join token has expired"));
        }
        let id = match (tok.role, node) {
            (Role::Node, Some(n)) => {
                let id = Identity::node(n).id;
                if self
                    .records
                    .lock()
                    .expect("credentials lock")
                    .contains_key(&id)
                {
                    warn!(%peer, %id, "refused a join: the node id already has a credential");
                    return Err(denied(format!(
                        "node {n} already has a credential (a node cannot join as another's id)"
                    )));
                }
                id
            }
            (Role::Node, None) => {
                return Err(Error::invalid("a node token must be used by a node").into())
            }
            (role, _) => self.next_id(role),
        };
        let who = Identity::new(tok.role, id.clone());
        let cert = self.ca.issue(&who, public_key)?;
        // The token is spent before the credential counts: a crash in between loses a token,
        // never lets one be used twice.
        meta.delete_record(TOKEN, &hash)?;
        tokens.remove(&hash);
        let users = self
            .token_users
            .lock()
            .expect("token users lock")
            .remove(&hash);
        if let Some(u) = users {
            meta.put_record(USERS, id.as_bytes(), &u)?;
            meta.delete_record(TOKEN_USERS, &hash)?;
            self.users
                .write()
                .expect("users lock")
                .insert(id.clone(), u);
        }
        self.record(meta, &id, tok.role, &host, tok.allow_root)?;
        info!(%who, %host, %peer, "credential issued");
        Ok((cert.to_vec(), self.ca.cert().to_vec()))
    }

    pub fn list(&self) -> Vec<CredentialInfo> {
        let seen = self.last_seen.lock().expect("last seen lock").clone();
        let users = self.users.read().expect("users lock").clone();
        let records = self.records.lock().expect("credentials lock");
        let mut v: Vec<CredentialInfo> = records
            .iter()
            .map(|(id, r)| CredentialInfo {
                id: id.clone(),
                role: r.role,
                host: r.host.clone(),
                created: r.created,
                last_seen: seen.get(id).copied().unwrap_or(0),
                revoked: r.revoked,
                allow_root: r.allow_root,
                users: users.get(id).cloned().unwrap_or_default(),
            })
            .collect();
        v.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        v
    }

    pub fn revoke(&self, meta: &Meta, id: &str, by: &Peer) -> Result<(), MasterError> {
        let rec = {
            let mut records = self.records.lock().expect("credentials lock");
            let Some(r) = records.get_mut(id) else {
                return Err(Error::not_found(format!("no credential {id:?}")).into());
            };
            if by.who.as_ref().is_some_and(|w| w.id == id) {
                return Err(Error::invalid("a credential cannot revoke itself").into());
            }
            r.revoked = true;
            r.clone()
        };
        meta.put_record(CRED, id.as_bytes(), &rec)?;
        self.revoked
            .write()
            .expect("revoked lock")
            .insert(id.to_string());
        let conns = self
            .live
            .lock()
            .expect("live lock")
            .remove(id)
            .unwrap_or_default();
        for c in &conns {
            c.close(shardfs_common::net::REVOKED, b"credential revoked");
        }
        info!(%id, by = %by, closed = conns.len(), "credential revoked");
        Ok(())
    }
}
