//! The cluster's certificate authority, the credentials it signs, and who a peer is.
//!
//! A cluster has one CA, made by the master when the cluster is created and kept in its data
//! directory. Every master, node, mount and admin tool holds a *credential*: a private key that
//! never left its host, a certificate the CA signed for it, and the CA's certificate. The
//! certificate names the holder's role and id in a URI subject-alternative name
//! (`shardfs:ROLE:ID`); masters and nodes also carry the DNS name `shardfs`, which is what
//! makes a certificate usable as a server's, so a client or admin credential can never pose as
//! a server. Every connection is mutual TLS checked against the cluster CA, so once the
//! handshake is done [`peer_identity`] says who is at the other end.

use crate::error::{Error, Result};
use crate::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// The DNS name every server certificate carries and every client checks.
pub const SERVER_NAME: &str = "shardfs";
const URI_SCHEME: &str = "shardfs:";

/// What a credential may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// The master of the cluster (one credential, made with the CA).
    Master,
    /// A storage node; its id is the node's id.
    Node,
    /// A mount: namespace and file data, within the uids its credential allows.
    Client,
    /// Operators: status, scrub, repair, drain, tokens, credentials; may also mount as root.
    Admin,
    /// A host joining with a token, in its self-signed certificate (`shardfs:join:HASH`, HASH
    /// the token secret's hash); never issued by the CA, only ever served the join exchange.
    Joiner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Node => "node",
            Role::Client => "client",
            Role::Admin => "admin",
            Role::Joiner => "join",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "master" => Role::Master,
            "node" => Role::Node,
            "client" => Role::Client,
            "admin" => Role::Admin,
            "join" => Role::Joiner,
            _ => return None,
        })
    }

    /// Masters and nodes accept connections.
    pub fn is_server(self) -> bool {
        matches!(self, Role::Master | Role::Node)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who holds a certificate: its role and the credential's id (`node-<node id>`, `client-7`,
/// `admin-1`, `master`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub role: Role,
    pub id: String,
}

impl Identity {
    pub fn new(role: Role, id: impl Into<String>) -> Self {
        Identity {
            role,
            id: id.into(),
        }
    }

    /// The identity of a storage node's credential.
    pub fn node(id: NodeId) -> Self {
        Identity::new(Role::Node, format!("node-{id}"))
    }

    /// The node id a node credential was issued for.
    pub fn node_id(&self) -> Option<NodeId> {
        match self.role {
            Role::Node => self.id.strip_prefix("node-")?.parse().ok(),
            _ => None,
        }
    }

    fn uri(&self) -> String {
        format!("{URI_SCHEME}{}:{}", self.role, self.id)
    }

    /// The identity a certificate names (the certificate must already be verified).
    pub fn of_cert(cert: &CertificateDer<'_>) -> Result<Identity> {
        let parsed = webpki::EndEntityCert::try_from(cert)
            .map_err(|e| Error::Config(format!("unreadable certificate: {e}")))?;
        let mut found = None;
        for uri in parsed.valid_uri_names() {
            if let Some((role, id)) = uri
                .strip_prefix(URI_SCHEME)
                .and_then(|rest| rest.split_once(':'))
            {
                if let (Some(role), true) = (Role::parse(role), valid_id(id)) {
                    if found.is_some() {
                        return Err(Error::Config("certificate names two identities".into()));
                    }
                    found = Some(Identity::new(role, id));
                }
            }
        }
        found.ok_or_else(|| Error::Config("certificate names no ShardFS identity".into()))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role, self.id)
    }
}

/// Credential ids are short and printable: letters, digits, '-' and '.'.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Who is at the other end of an established connection, from its verified certificate
/// (`None`: the peer showed no certificate, which only the master's join exchange allows).
pub fn peer_identity(conn: &quinn::Connection) -> Option<Identity> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    Identity::of_cert(certs.first()?).ok()
}

/// SHA-256 of a certificate, as printed and as carried in join tokens.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, cert);
    d.as_ref().try_into().expect("32-byte digest")
}

/// A public key sent by a host that joins: the raw P-256 point (65 bytes, uncompressed).
struct JoinerKey<'a>(&'a [u8]);

impl rcgen::PublicKeyData for JoinerKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }
    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// Checks a joiner's public key: an uncompressed point on P-256 (ring validates the point
/// when it is used in a key agreement, which is what the throw-away agreement here is for).
pub fn check_public_key(raw: &[u8]) -> Result<()> {
    use ring::agreement;
    let rng = ring::rand::SystemRandom::new();
    let ok = raw.len() == 65
        && raw[0] == 4
        && agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)
            .ok()
            .and_then(|mine| {
                agreement::agree_ephemeral(
                    mine,
                    &agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, raw),
                    |_| (),
                )
                .ok()
            })
            .is_some();
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("not a P-256 public key"))
    }
}

fn rc(e: rcgen::Error) -> Error {
    Error::Config(format!("certificate: {e}"))
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn at(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// How long an issued credential is valid; rotation is a new join and a revoke of the old one.
pub const CREDENTIAL_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
const CA_LIFETIME: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// The cluster's certificate authority (held by the master only).
pub struct Ca {
    key: KeyPair,
    /// The CA certificate as rcgen needs it to sign; its name and key are those of `der`.
    signer: rcgen::Certificate,
    /// The CA certificate everyone trusts (as first written).
    der: CertificateDer<'static>,
}

impl Ca {
    /// The CA's distinguished name follows from its key, so a CA loaded from disk signs with the
    /// same issuer name as the certificate it first wrote.
    fn params(key: &KeyPair, now: i64) -> Result<CertificateParams> {
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
        let tag = hex::encode(&fingerprint(&CertificateDer::from(key.public_key_der()))[..8]);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("ShardFS cluster CA {tag}"));
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = at(now - 3600);
        p.not_after = at(now + CA_LIFETIME.as_secs() as i64);
        Ok(p)
    }

    pub fn create() -> Result<Ca> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rc)?;
        let signer = Ca::params(&key, unix_secs(SystemTime::now()))?
            .self_signed(&key)
            .map_err(rc)?;
        let der = signer.der().clone();
        Ok(Ca { key, signer, der })
    }

    /// Load the CA kept in `dir` (`ca.key`, `ca.crt`), or make one there if there is none.
    /// Returns whether it was made now.
    pub fn open_or_create(dir: &Path) -> Result<(Ca, bool)> {
        let (kp, cp) = (dir.join("ca.key"), dir.join("ca.crt"));
        if !kp.exists() {
            let ca = Ca::create()?;
            write_private(&kp, ca.key.serialize_pem().as_bytes())?;
            write_private(&cp, pem_cert(&ca.der).as_bytes())?;
            return Ok((ca, true));
        }
        let key = KeyPair::from_pem(&read_text(&kp)?).map_err(rc)?;
        let der = pem_blocks(&read_text(&cp)?, "CERTIFICATE")
            .into_iter()
            .next()
            .map(CertificateDer::from)
            .ok_or_else(|| Error::Config(format!("{} holds no certificate", cp.display())))?;
        let signer = Ca::params(&key, unix_secs(SystemTime::now()))?
            .self_signed(&key)
            .map_err(rc)?;
        Ok((Ca { key, signer, der }, false))
    }

    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// Sign a certificate for `who`'s public key (raw P-256 point).
    pub fn issue(&self, who: &Identity, public_key: &[u8]) -> Result<CertificateDer<'static>> {
        check_public_key(public_key)?;
        if !valid_id(&who.id) {
            return Err(Error::invalid(format!(
                "{:?} is not a credential id",
                who.id
            )));
        }
        let now = unix_secs(SystemTime::now());
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("shardfs {who}"));
        p.distinguished_name = dn;
        let uri = rcgen::Ia5String::try_from(who.uri()).map_err(rc)?;
        p.subject_alt_names = vec![SanType::URI(uri)];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if who.role.is_server() {
            let dns = rcgen::Ia5String::try_from(SERVER_NAME.to_string()).map_err(rc)?;
            p.subject_alt_names.push(SanType::DnsName(dns));
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&random::<16>()));
        p.not_before = at(now - 3600);
        p.not_after = at(now + CREDENTIAL_LIFETIME.as_secs() as i64);
        p.use_authority_key_identifier_extension = true;
        let cert = p
            .signed_by(&JoinerKey(public_key), &self.signer, &self.key)
            .map_err(rc)?;
        Ok(cert.der().clone())
    }

    /// A whole credential made here (the master's own, the first admin's).
    pub fn credential(&self, who: &Identity) -> Result<Credential> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rc)?;
        let cert = self.issue(who, key.public_key_raw())?;
        Credential::new(cert, &key, self.der.clone())
    }
}

/// The self-signed certificate a joining host shows in its handshake with the master: it names
/// the token (by its secret's hash), so a master refuses anyone without a live token at the
/// handshake, and it proves the joiner holds the key the credential will be issued for.
pub fn join_certificate(key: &KeyPair, secret: &[u8]) -> Result<CertificateDer<'static>> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
    let who = Identity::new(Role::Joiner, hex::encode(JoinToken::secret_hash(secret)));
    p.subject_alt_names = vec![SanType::URI(
        rcgen::Ia5String::try_from(who.uri()).map_err(rc)?,
    )];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(p.self_signed(key).map_err(rc)?.der().clone())
}

/// The token hash a join certificate names, if `cert` is one.
pub fn join_request(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let who = Identity::of_cert(cert).ok()?;
    if who.role != Role::Joiner {
        return None;
    }
    hex::decode(&who.id).ok()?.try_into().ok()
}

/// A key pair for a host about to join; the private half stays on this host.
pub fn new_key() -> Result<KeyPair> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rc)
}

/// What a master, node, mount or admin tool presents and trusts.
pub struct Credential {
    pub cert: CertificateDer<'static>,
    key_der: Vec<u8>,
    pub ca: CertificateDer<'static>,
    pub identity: Identity,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({})", self.identity)
    }
}

impl Credential {
    pub fn new(
        cert: CertificateDer<'static>,
        key: &KeyPair,
        ca: CertificateDer<'static>,
    ) -> Result<Self> {
        let identity = Identity::of_cert(&cert)?;
        Ok(Credential {
            cert,
            key_der: key.serialize_der(),
            ca,
            identity,
        })
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// The certificate chain to present: own certificate, then the CA's.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone(), self.ca.clone()]
    }

    /// The PEM text of a credential file: own certificate, the CA certificate, the private key.
    pub fn to_pem(&self) -> String {
        let key = pem::Pem::new("PRIVATE KEY", self.key_der.clone());
        format!(
            "# ShardFS credential: {} (keep private)\n{}{}{}",
            self.identity,
            pem_cert(&self.cert),
            pem_cert(&self.ca),
            pem::encode(&key)
        )
    }

    pub fn from_pem(text: &str) -> Result<Self> {
        let certs = pem_blocks(text, "CERTIFICATE");
        let keys = pem_blocks(text, "PRIVATE KEY");
        let (Some(cert), Some(ca), Some(key)) = (certs.first(), certs.get(1), keys.first()) else {
            return Err(Error::Config(
                "not a ShardFS credential (expected two certificates and a private key)".into(),
            ));
        };
        let cert = CertificateDer::from(cert.clone());
        let identity = Identity::of_cert(&cert)?;
        let pair = KeyPair::try_from(key.as_slice()).map_err(rc)?;
        if !cert_has_key(&cert, &pair) {
            return Err(Error::Config(
                "the credential's private key does not belong to its certificate".into(),
            ));
        }
        Ok(Credential {
            cert,
            key_der: key.clone(),
            ca: CertificateDer::from(ca.clone()),
            identity,
        })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Config(format!(
                    "no credential at {} (an admin makes one with `shardfs token create`, \
                     then join with --token)",
                    path.display()
                )))
            }
            Err(e) => {
                return Err(Error::Config(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        Credential::from_pem(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Write the credential to `path`, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_private(path, self.to_pem().as_bytes())
    }
}

fn cert_has_key(cert: &CertificateDer<'_>, key: &KeyPair) -> bool {
    webpki::EndEntityCert::try_from(cert)
        .map(|c| {
            let spki = c.subject_public_key_info();
            // The SPKI ends with the public key bit string.
            spki.as_ref().ends_with(key.public_key_raw())
        })
        .unwrap_or(false)
}

fn pem_cert(der: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

fn pem_blocks(text: &str, tag: &str) -> Vec<Vec<u8>> {
    pem::parse_many(text)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.tag() == tag)
        .map(|p| p.into_contents())
        .collect()
}

fn read_text(p: &Path) -> Result<String> {
    std::fs::read_to_string(p)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", p.display())))
}

/// Write a secret file atomically with mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| Error::Config(format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(bytes).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

pub fn random<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system randomness");
    b
}

/// A one-time join token: a secret the master keeps the hash of, and the fingerprint of the
/// cluster CA, so the joining host can check it talks to the right master before trusting it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    pub secret: [u8; 16],
    pub ca: [u8; 32],
}

const TOKEN_PREFIX: &str = "sfj1";

impl JoinToken {
    pub fn parse(s: &str) -> Result<JoinToken> {
        let bad = || Error::Config("not a ShardFS join token (sfj1.SECRET.CA-FINGERPRINT)".into());
        let mut parts = s.trim().split('.');
        if parts.next() != Some(TOKEN_PREFIX) {
            return Err(bad());
        }
        let secret = hex::decode(parts.next().ok_or_else(bad)?).map_err(|_| bad())?;
        let ca = hex::decode(parts.next().ok_or_else(bad)?).map_err(|_| bad())?;
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(JoinToken {
            secret: secret.try_into().map_err(|_| bad())?,
            ca: ca.try_into().map_err(|_| bad())?,
        })
    }

    /// What the master stores: a hash, so a copy of its database does not hold usable tokens.
    pub fn secret_hash(secret: &[u8]) -> [u8; 32] {
        *blake3::hash(secret).as_bytes()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}",
            hex::encode(self.secret),
            hex::encode(self.ca)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_their_holder_and_key() {
        let ca = Ca::create().unwrap();
        let who = Identity::node(NodeId(0xabc));
        let cred = ca.credential(&who).unwrap();
        assert_eq!(cred.identity, who);
        assert_eq!(cred.identity.node_id(), Some(NodeId(0xabc)));
        let back = Credential::from_pem(&cred.to_pem()).unwrap();
        assert_eq!(back.identity, who);
        assert_eq!(back.ca, *ca.cert());
        // A key of another credential does not pass as this one's.
        let other = ca
            .credential(&Identity::new(Role::Client, "client-1"))
            .unwrap();
        let mixed = format!(
            "{}{}{}",
            pem_cert(&cred.cert),
            pem_cert(&cred.ca),
            pem::encode(&pem::Pem::new("PRIVATE KEY", other.key_der.clone()))
        );
        assert!(Credential::from_pem(&mixed).is_err());
    }

    #[test]
    fn a_reloaded_ca_signs_certificates_that_chain_to_its_first_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (first, made) = Ca::open_or_create(dir.path()).unwrap();
        assert!(made);
        let (again, made) = Ca::open_or_create(dir.path()).unwrap();
        assert!(!made);
        assert_eq!(first.cert(), again.cert());
        let cred = again
            .credential(&Identity::new(Role::Admin, "admin-1"))
            .unwrap();
        let anchor = webpki::anchor_from_trusted_cert(first.cert()).unwrap();
        let ee = webpki::EndEntityCert::try_from(&cred.cert).unwrap();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            rustls::pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .unwrap();
    }

    #[test]
    fn public_keys_and_tokens_are_checked() {
        assert!(check_public_key(&[4u8; 65]).is_err());
        assert!(check_public_key(&[]).is_err());
        let key = new_key().unwrap();
        check_public_key(key.public_key_raw()).unwrap();
        let t = JoinToken {
            secret: [7; 16],
            ca: [9; 32],
        };
        assert_eq!(JoinToken::parse(&t.to_string()).unwrap(), t);
        for bad in ["", "sfj1", "sfj1.zz.00", "sfj2.00.00", &format!("{t}.x")] {
            assert!(JoinToken::parse(bad).is_err(), "{bad:?}");
        }
    }
}
