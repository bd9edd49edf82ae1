//! Who may connect: the owner, members with a role, join codes and join
//! requests, and the rate limit on failed attempts. One thread owns the
//! state and `access.db` (tokens and codes stored as SHA-256 hashes only);
//! callers send it closures, as they do the VM actor.
//!
//! The owner's token is written to `<data dir>/owner-token` (mode 0600) for
//! local UIs; `ensemble serve` also prints a one-time login code that a
//! browser exchanges for it. Changes to a member (role, name, removal) reach
//! that member's open connections through a `watch` and every VM through a
//! broadcast, so they take effect at once.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ensemble_protocol::people::participant_id;
use ensemble_protocol::{ErrorBody, ErrorCode, JoinRequest, Role};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, oneshot, watch};

use crate::log::now_ms;

/// Failed credentials one address may present per [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 10;

/// The window over which failures are counted.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Join requests waiting at once, in all and per address: enough for a team
/// joining together, few enough that nobody can flood the owner.
const MAX_PENDING_REQUESTS: usize = 32;
const MAX_PENDING_PER_ADDRESS: usize = 3;

/// Longest display name kept.
const MAX_NAME_CHARS: usize = 64;

/// Longest and default life of a join code.
pub const MAX_CODE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_CODE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Member changes queued per VM. Changes are rare (an owner's clicks); a VM
/// that still lagged would show stale names until the next change, while
/// input is always checked against each connection's own, current member.
const CHANGES_CAPACITY: usize = 64;

/// Distinct, readable on dark and light backgrounds; assigned by id.
const COLORS: &[&str] = &[
    "#e5534b", "#57ab5a", "#539bf5", "#c69026", "#b083f0", "#39c5cf", "#f69d50", "#e275ad",
    "#8ddb8c", "#6cb6ff", "#dcbdfb", "#96d0ff",
];

/// Join codes are read aloud and typed: no 0/O or 1/I.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const CODE_LEN: usize = 12;

/// A participant of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub color: String,
    pub role: Role,
}

impl Member {
    pub fn wire_id(&self) -> String {
        participant_id(self.id)
    }
}

/// A member's new state (`None`: removed), for VMs.
#[derive(Debug, Clone)]
pub struct MemberChange {
    pub id: u64,
    pub member: Option<Member>,
}

/// What `hello` presented.
#[derive(Debug, Clone)]
pub enum Credential {
    Token(String),
    JoinCode(String),
    LoginCode(String),
    RequestJoin,
    None,
}

/// The certificate a connection over TLS presented (a peer host on the LAN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPeer {
    /// SHA-256 of its certificate, 64 hex digits.
    pub fingerprint: String,
    /// The verification code of this TLS session.
    pub code: String,
}

/// The VM a `hello` names, for the check that a member was invited to it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its canonical key.
    pub key: String,
    /// Whether the host has the VM already (only the owner creates VMs).
    pub exists: bool,
}

/// A connection let in.
pub struct Admitted {
    pub member: Member,
    /// A token issued just now, for the client to keep.
    pub issued: Option<String>,
    /// The member's state from now on (`None` once removed).
    pub watch: watch::Receiver<Option<Member>>,
}

/// The owner's answer to a join request.
pub type Decision = Result<Admitted, ErrorBody>;

pub enum Admission {
    Admitted(Admitted),
    /// A join request now waits for the owner.
    Pending {
        request_id: u64,
        decision: oneshot::Receiver<Decision>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("access database {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot write the owner token to {path}: {source}")]
    OwnerToken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no randomness from the OS: {0}")]
    Random(String),
}

type Job = Box<dyn FnOnce(&mut State) + Send>;

/// A handle on the access thread; cheap to clone.
#[derive(Clone)]
pub struct Access {
    jobs: std::sync::mpsc::Sender<Job>,
    changes: broadcast::Sender<MemberChange>,
    owner_token: std::sync::Arc<str>,
    login_code: std::sync::Arc<str>,
    owner_name: std::sync::Arc<str>,
}

struct Pending {
    name: String,
    /// The VM the request was made in (canonical key): approval invites
    /// the new member to it.
    vm: String,
    address: IpAddr,
    /// Over TLS (a peer host): who asks, and the code both people compare.
    tls: Option<TlsPeer>,
    since_ms: u64,
    reply: oneshot::Sender<Decision>,
}

struct State {
    conn: Connection,
    members: HashMap<u64, (Member, String)>,
    /// member id → the certificate fingerprint its token is bound to (a
    /// member who joined from another host over TLS).
    bound: HashMap<u64, String>,
    /// token hash → member id
    by_token: HashMap<String, u64>,
    /// member id → the VMs (canonical keys) the owner invited them to. The
    /// owner is in none: the owner opens and creates every VM.
    vms: HashMap<u64, HashSet<String>>,
    watchers: HashMap<u64, watch::Sender<Option<Member>>>,
    changes: broadcast::Sender<MemberChange>,
    /// Plain, for the one-time login exchange.
    owner_token: String,
    login_code: Option<String>,
    requests: HashMap<u64, Pending>,
    next_request: u64,
    failures: HashMap<IpAddr, (Instant, u32)>,
}

impl Access {
    /// Opens `access.db` in `dir`, creating the owner (and its token file)
    /// on first use, and a fresh one-time login code.
    pub fn open(dir: &Path) -> Result<Access, AccessError> {
        let path = dir.join("access.db");
        let db = |source| AccessError::Db {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(db)?;
        restrict(&path);
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS members(
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 name TEXT NOT NULL,
                 role TEXT NOT NULL,
                 token_hash TEXT UNIQUE,
                 created_ms INTEGER NOT NULL,
                 removed_ms INTEGER,
                 fingerprint TEXT);
             CREATE TABLE IF NOT EXISTS join_codes(
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 code_hash TEXT NOT NULL UNIQUE,
                 role TEXT NOT NULL,
                 created_ms INTEGER NOT NULL,
                 expires_ms INTEGER NOT NULL,
                 revoked_ms INTEGER,
                 uses INTEGER NOT NULL DEFAULT 0);",
        )
        .map_err(db)?;
        let scoped = conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'member_vms'",
                [],
                |_| Ok(()),
            )
            .optional()
            .map_err(db)?
            .is_some();
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS member_vms(
                 member_id INTEGER NOT NULL,
                 vm_key TEXT NOT NULL,
                 PRIMARY KEY(member_id, vm_key));",
        )
        .map_err(db)?;
        // Codes from before access was scoped per VM have no VM: see `admit`.
        let _ = conn.execute("ALTER TABLE join_codes ADD COLUMN vm_key TEXT", []);
        if !scoped {
            // Members from before access was scoped per VM could open every
            // VM: they keep the VMs that existed then, and nothing newer.
            grant_existing_vms(&conn, &dir.join("ensemble.db")).map_err(db)?;
        }
        // Databases from before LAN sharing lack the column; adding it twice
        // fails harmlessly.
        let _ = conn.execute("ALTER TABLE members ADD COLUMN fingerprint TEXT", []);
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        let mut state = State {
            conn,
            members: HashMap::new(),
            bound: HashMap::new(),
            by_token: HashMap::new(),
            vms: HashMap::new(),
            watchers: HashMap::new(),
            changes: changes.clone(),
            owner_token: String::new(),
            login_code: Some(random_token()?),
            requests: HashMap::new(),
            next_request: 1,
            failures: HashMap::new(),
        };
        state.load().map_err(db)?;
        state.owner_token = state.ensure_owner(&dir.join("owner-token"))?;
        let owner_token = std::sync::Arc::from(state.owner_token.as_str());
        let login_code = std::sync::Arc::from(state.login_code.clone().unwrap_or_default());
        let owner_name = state
            .members
            .values()
            .find(|(m, _)| m.role == Role::Owner)
            .map(|(m, _)| m.name.as_str())
            .unwrap_or("Owner");
        let owner_name = std::sync::Arc::from(owner_name);
        let (jobs, jobs_rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("ensemble-access".into())
            .spawn(move || {
                while let Ok(job) = jobs_rx.recv() {
                    job(&mut state);
                }
            })
            .map_err(|e| AccessError::Random(e.to_string()))?;
        Ok(Access {
            jobs,
            changes,
            owner_token,
            login_code,
            owner_name,
        })
    }

    /// The owner's display name as the host started (what LAN sharing
    /// announces unless told otherwise).
    pub fn owner_name(&self) -> &str {
        &self.owner_name
    }

    /// The owner's token, for a UI started by the same user (the desktop app).
    pub fn owner_token(&self) -> &str {
        &self.owner_token
    }

    /// The one-time code for the owner URL `ensemble serve` prints.
    pub fn login_code(&self) -> &str {
        &self.login_code
    }

    /// Member changes, for a VM's participant list.
    pub fn changes(&self) -> broadcast::Receiver<MemberChange> {
        self.changes.subscribe()
    }

    async fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> R + Send + 'static,
    ) -> Result<R, ErrorBody> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |state| {
            let _ = tx.send(f(state));
        });
        let gone = || ErrorBody::new(ErrorCode::Unavailable, "the host is shutting down");
        self.jobs.send(job).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    /// Checks what `hello` presented, and that a member may open `target`
    /// (the VM the `hello` names; `None` where no VM of this host is
    /// opened, as on the relay).
    pub async fn admit(
        &self,
        credential: Credential,
        name: Option<String>,
        address: IpAddr,
        tls: Option<TlsPeer>,
        target: Option<Target>,
    ) -> Result<Admission, ErrorBody> {
        self.with(move |s| s.admit(credential, name, address, tls, target))
            .await?
    }

    /// The VMs (canonical keys) member `id` was invited to; empty for the
    /// owner, who may open every VM.
    pub async fn member_vms(&self, id: u64) -> Result<Vec<String>, ErrorBody> {
        self.with(move |s| {
            let mut keys: Vec<String> = s
                .vms
                .get(&id)
                .map(|k| k.iter().cloned().collect())
                .unwrap_or_default();
            keys.sort();
            keys
        })
        .await
    }

    /// A requester left before the owner decided.
    pub async fn withdraw(&self, request_id: u64) {
        let _ = self
            .with(move |s| {
                s.requests.remove(&request_id);
            })
            .await;
    }

    pub async fn list_requests(&self) -> Result<Vec<JoinRequest>, ErrorBody> {
        self.with(|s| {
            let mut out: Vec<JoinRequest> = s
                .requests
                .iter()
                .filter(|(_, r)| !r.reply.is_closed())
                .map(|(id, r)| JoinRequest {
                    request_id: request_wire_id(*id),
                    name: r.name.clone(),
                    since: r.since_ms,
                    code: r.tls.as_ref().map(|t| t.code.clone()),
                    fingerprint: r.tls.as_ref().map(|t| t.fingerprint.clone()),
                })
                .collect();
            out.sort_by_key(|r| r.since);
            out
        })
        .await
    }

    /// Approves (with a role) or denies a join request; answers the member
    /// approved, if any.
    pub async fn decide(
        &self,
        request_id: u64,
        role: Option<Role>,
    ) -> Result<Option<Member>, ErrorBody> {
        self.with(move |s| s.decide(request_id, role)).await?
    }

    /// A join code that invites to the VM `vm` (canonical key).
    pub async fn create_code(
        &self,
        role: Role,
        ttl: Duration,
        vm: String,
    ) -> Result<JoinCodeInfo, ErrorBody> {
        self.with(move |s| s.create_code(role, ttl, vm)).await?
    }

    pub async fn list_codes(&self) -> Result<Vec<JoinCodeInfo>, ErrorBody> {
        self.with(|s| s.list_codes()).await?
    }

    pub async fn revoke_code(&self, id: u64) -> Result<(), ErrorBody> {
        self.with(move |s| s.revoke_code(id)).await?
    }

    pub async fn set_role(&self, id: u64, role: Role) -> Result<Member, ErrorBody> {
        self.with(move |s| s.set_role(id, role)).await?
    }

    pub async fn remove(&self, id: u64) -> Result<(), ErrorBody> {
        self.with(move |s| s.remove(id)).await?
    }

    pub async fn update_profile(
        &self,
        id: u64,
        name: Option<String>,
        color: Option<String>,
    ) -> Result<Member, ErrorBody> {
        self.with(move |s| s.update_profile(id, name, color))
            .await?
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinCodeInfo {
    pub code_id: String,
    /// Only in `createJoinCode`'s answer: the host keeps a hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub role: Role,
    /// The VM the code invites to (absent for a code made before access
    /// was scoped per VM: it invites to the VM its `hello` names).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<serde_json::Value>,
    pub expires_at: u64,
    pub revoked: bool,
    pub uses: u64,
}

/// A canonical key as the JSON array it is.
fn key_value(canonical: &str) -> Option<serde_json::Value> {
    serde_json::from_str(canonical).ok()
}

fn forbidden(message: String) -> ErrorBody {
    ErrorBody::new(ErrorCode::Forbidden, message)
}

/// Members of a database from before access was scoped per VM are invited
/// to every VM the host had then (what they could open before).
fn grant_existing_vms(conn: &Connection, registry: &Path) -> Result<(), rusqlite::Error> {
    if !registry.exists() {
        return Ok(());
    }
    let keys: Vec<String> = {
        let reg =
            Connection::open_with_flags(registry, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let mut stmt = match reg.prepare("SELECT key FROM vms") {
            Ok(stmt) => stmt,
            // No VM table yet: no VM to keep.
            Err(_) => return Ok(()),
        };
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for key in keys {
        conn.execute(
            "INSERT OR IGNORE INTO member_vms(member_id, vm_key)
             SELECT id, ?1 FROM members WHERE role != 'owner' AND removed_ms IS NULL",
            [key],
        )?;
    }
    Ok(())
}

pub fn request_wire_id(id: u64) -> String {
    format!("j{id}")
}

pub fn parse_request_id(s: &str) -> Option<u64> {
    s.strip_prefix('j')?.parse().ok()
}

pub fn code_wire_id(id: u64) -> String {
    format!("c{id}")
}

pub fn parse_code_id(s: &str) -> Option<u64> {
    s.strip_prefix('c')?.parse().ok()
}

fn unauthorized(message: &str) -> ErrorBody {
    ErrorBody::new(ErrorCode::Unauthorized, message)
}

fn internal(e: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(ErrorCode::Internal, format!("access storage: {e}"))
}

fn not_found(what: String) -> ErrorBody {
    ErrorBody::new(ErrorCode::NotFound, what)
}

fn hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_bytes<const N: usize>() -> Result<[u8; N], AccessError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| AccessError::Random(e.to_string()))?;
    Ok(buf)
}

/// 256 random bits, URL-safe.
fn random_token() -> Result<String, AccessError> {
    use base64::Engine;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))
}

/// 12 characters of a 32-letter alphabet (60 bits), shown as `XXXX-XXXX-XXXX`.
fn random_code() -> Result<String, AccessError> {
    let bytes = random_bytes::<CODE_LEN>()?;
    let letters: Vec<char> = bytes
        .iter()
        .map(|b| CODE_ALPHABET[usize::from(*b) % CODE_ALPHABET.len()] as char)
        .collect();
    Ok(letters
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-"))
}

/// How people type a code: any case, with or without dashes and spaces.
fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn clean_name(name: Option<String>) -> Option<String> {
    let name: String = name?
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect();
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

fn color_for(id: u64) -> String {
    let i = usize::try_from(id.saturating_sub(1)).unwrap_or(0) % COLORS.len();
    COLORS[i].to_owned()
}

fn parse_role(s: &str) -> Role {
    match s {
        "owner" => Role::Owner,
        "collaborator" => Role::Collaborator,
        _ => Role::Viewer,
    }
}

/// Best effort: the file holds secrets (or their hashes) of this user only.
fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

impl State {
    fn load(&mut self) -> Result<(), rusqlite::Error> {
        let mut stmt = self.conn.prepare(
            "SELECT id, name, role, token_hash, fingerprint FROM members WHERE removed_ms IS NULL",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, u64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })?;
        let mut loaded = Vec::new();
        for row in rows {
            loaded.push(row?);
        }
        drop(stmt);
        for (id, name, role, token_hash, fingerprint) in loaded {
            if let Some(fp) = fingerprint {
                self.bound.insert(id, fp);
            }
            let member = Member {
                id,
                color: color_for(id),
                name,
                role: parse_role(&role),
            };
            let token_hash = token_hash.unwrap_or_default();
            if !token_hash.is_empty() {
                self.by_token.insert(token_hash.clone(), id);
            }
            self.members.insert(id, (member, token_hash));
        }
        let mut stmt = self
            .conn
            .prepare("SELECT member_id, vm_key FROM member_vms")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, u64>(0)?, r.get::<_, String>(1)?)))?;
        let mut vms: HashMap<u64, HashSet<String>> = HashMap::new();
        for row in rows {
            let (id, key) = row?;
            vms.entry(id).or_default().insert(key);
        }
        drop(stmt);
        self.vms = vms;
        Ok(())
    }

    /// Invites member `id` to the VM `key` (canonical).
    fn invite(&mut self, id: u64, key: &str) -> Result<(), ErrorBody> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO member_vms(member_id, vm_key) VALUES (?1, ?2)",
                params![id, key],
            )
            .map_err(internal)?;
        self.vms.entry(id).or_default().insert(key.to_owned());
        Ok(())
    }

    /// A member (not the owner) opens only the VMs they were invited to;
    /// only the owner creates VMs.
    fn check_scope(&self, id: u64, target: Option<&Target>) -> Result<(), ErrorBody> {
        let Some(target) = target else { return Ok(()) };
        let owner = self
            .members
            .get(&id)
            .is_some_and(|(m, _)| m.role == Role::Owner);
        let invited = target.exists
            && self
                .vms
                .get(&id)
                .is_some_and(|keys| keys.contains(&target.key));
        if owner || invited {
            return Ok(());
        }
        Err(forbidden(format!(
            "you were not invited to the VM {}: a member opens only the VMs the owner invited them to, and only the owner creates VMs",
            target.key
        )))
    }

    /// The owner's token: the one in `file` if it still matches, else a new
    /// one (first start, or the file was deleted to rotate it).
    fn ensure_owner(&mut self, file: &Path) -> Result<String, AccessError> {
        let db = |source| AccessError::Db {
            path: file.with_file_name("access.db"),
            source,
        };
        let owner = self
            .members
            .values()
            .find(|(m, _)| m.role == Role::Owner)
            .map(|(m, h)| (m.id, h.clone()));
        if let Some((_, hash_now)) = &owner {
            if let Ok(text) = std::fs::read_to_string(file) {
                let token = text.trim().to_owned();
                if !token.is_empty() && hash(&token) == *hash_now {
                    return Ok(token);
                }
            }
        }
        let token = random_token()?;
        let token_hash = hash(&token);
        let id = match owner {
            Some((id, old)) => {
                self.conn
                    .execute(
                        "UPDATE members SET token_hash = ?1 WHERE id = ?2",
                        params![token_hash, id],
                    )
                    .map_err(db)?;
                self.by_token.remove(&old);
                id
            }
            None => {
                let name = std::env::var("USER")
                    .ok()
                    .and_then(|u| clean_name(Some(u)))
                    .unwrap_or_else(|| "Owner".to_owned());
                self.conn
                    .execute(
                        "INSERT INTO members(name, role, token_hash, created_ms) VALUES (?1, 'owner', ?2, ?3)",
                        params![name, token_hash, now_ms() as i64],
                    )
                    .map_err(db)?;
                let id = self.conn.last_insert_rowid() as u64;
                self.members.insert(
                    id,
                    (
                        Member {
                            id,
                            color: color_for(id),
                            name,
                            role: Role::Owner,
                        },
                        String::new(),
                    ),
                );
                id
            }
        };
        if let Some(entry) = self.members.get_mut(&id) {
            entry.1 = token_hash.clone();
        }
        self.by_token.insert(token_hash, id);
        write_secret(file, &token).map_err(|source| AccessError::OwnerToken {
            path: file.to_owned(),
            source,
        })?;
        Ok(token)
    }

    fn admitted(&mut self, id: u64, issued: Option<String>) -> Result<Admission, ErrorBody> {
        let member = self
            .members
            .get(&id)
            .map(|(m, _)| m.clone())
            .ok_or_else(|| unauthorized("this member was removed"))?;
        let watch = self
            .watchers
            .entry(id)
            .or_insert_with(|| watch::channel(Some(member.clone())).0)
            .subscribe();
        Ok(Admission::Admitted(Admitted {
            member,
            issued,
            watch,
        }))
    }

    fn failed(&mut self, address: IpAddr, message: &str) -> ErrorBody {
        let now = Instant::now();
        let entry = self.failures.entry(address).or_insert((now, 0));
        if now.duration_since(entry.0) > FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        unauthorized(message)
    }

    fn rate_limited(&mut self, address: IpAddr) -> bool {
        let now = Instant::now();
        self.failures
            .retain(|_, (start, _)| now.duration_since(*start) <= FAILURE_WINDOW);
        self.failures
            .get(&address)
            .is_some_and(|(_, n)| *n >= MAX_FAILURES)
    }

    /// A token or login code that would be accepted as it is.
    fn valid(&self, credential: &Credential) -> bool {
        match credential {
            Credential::Token(token) => self.by_token.contains_key(&hash(token)),
            Credential::LoginCode(code) => self.login_code.as_deref() == Some(code.as_str()),
            _ => false,
        }
    }

    fn admit(
        &mut self,
        credential: Credential,
        name: Option<String>,
        address: IpAddr,
        tls: Option<TlsPeer>,
        target: Option<Target>,
    ) -> Result<Admission, ErrorBody> {
        // Failures are limited per address, but a valid credential always
        // works: every local client shares 127.0.0.1, and the owner must not
        // be locked out by someone else's failed guesses.
        if self.rate_limited(address) && !self.valid(&credential) {
            return Err(ErrorBody::new(
                ErrorCode::RateLimited,
                format!("too many failed attempts from {address}; wait a minute and try again"),
            ));
        }
        match credential {
            Credential::Token(token) => match self.by_token.get(&hash(&token)).copied() {
                Some(id) => {
                    // A token issued to another host works only from that
                    // host's certificate: a copied token is not enough.
                    if let Some(fp) = self.bound.get(&id) {
                        if tls.as_ref().map(|t| &t.fingerprint) != Some(fp) {
                            return Err(self.failed(
                                address,
                                "this token belongs to another Ensemble install (its certificate does not match); join again from this one",
                            ));
                        }
                    }
                    self.check_scope(id, target.as_ref())?;
                    self.admitted(id, None)
                }
                None => Err(self.failed(address, "unknown or revoked token; ask the owner for a join code")),
            },
            Credential::LoginCode(code) => {
                if self.login_code.as_deref() == Some(code.as_str()) {
                    self.login_code = None;
                    let owner = self
                        .members
                        .values()
                        .find(|(m, _)| m.role == Role::Owner)
                        .map(|(m, _)| m.id)
                        .ok_or_else(|| internal("no owner"))?;
                    let token = self.owner_token.clone();
                    self.admitted(owner, Some(token))
                } else {
                    Err(self.failed(
                        address,
                        "this login code is unknown or was already used; restart the host for a new owner URL",
                    ))
                }
            }
            Credential::JoinCode(code) => {
                let code_hash = hash(&normalize_code(&code));
                let row: Option<(u64, String, Option<String>)> = self
                    .conn
                    .query_row(
                        "SELECT id, role, vm_key FROM join_codes
                         WHERE code_hash = ?1 AND revoked_ms IS NULL AND expires_ms > ?2",
                        params![code_hash, now_ms() as i64],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()
                    .map_err(internal)?;
                let Some((code_id, role, code_vm)) = row else {
                    return Err(self.failed(address, "join code unknown, expired or revoked; ask the owner for a new one"));
                };
                // A code invites to the VM it was made in; checked before it
                // is used, so a wrong key costs the code nothing. A code from
                // before access was scoped per VM has none and invites to the
                // VM named, if it exists.
                let vm = match (code_vm, &target) {
                    (Some(code_vm), Some(t)) if code_vm != t.key => {
                        return Err(forbidden(format!(
                            "this join code invites you to the VM {code_vm}, not {}; open that key",
                            t.key
                        )))
                    }
                    (Some(code_vm), _) => Some(code_vm),
                    (None, Some(t)) if t.exists => Some(t.key.clone()),
                    (None, Some(t)) => {
                        return Err(forbidden(format!(
                            "there is no VM {}, and only the owner creates VMs",
                            t.key
                        )))
                    }
                    (None, None) => None,
                };
                self.conn
                    .execute(
                        "UPDATE join_codes SET uses = uses + 1 WHERE id = ?1",
                        [code_id],
                    )
                    .map_err(internal)?;
                let (member, token) = self.new_member(name, parse_role(&role))?;
                if let Some(tls) = &tls {
                    self.bind(member.id, &tls.fingerprint)?;
                }
                if let Some(vm) = vm {
                    self.invite(member.id, &vm)?;
                }
                self.admitted(member.id, Some(token))
            }
            Credential::RequestJoin => {
                // A request is made in a VM, which must exist: only the
                // owner creates VMs. Probing for keys counts as a failure.
                let vm = match target {
                    Some(t) if t.exists => t.key,
                    Some(t) => {
                        let message = format!(
                            "there is no VM {}, and only the owner creates VMs; ask the owner for the right link",
                            t.key
                        );
                        self.failed(address, "");
                        return Err(forbidden(message));
                    }
                    None => {
                        return Err(unauthorized("a join request is made in a VM of this host"))
                    }
                };
                self.requests.retain(|_, r| !r.reply.is_closed());
                let from_here = self
                    .requests
                    .values()
                    .filter(|r| r.address == address)
                    .count();
                if self.requests.len() >= MAX_PENDING_REQUESTS
                    || from_here >= MAX_PENDING_PER_ADDRESS
                {
                    return Err(ErrorBody::new(
                        ErrorCode::RateLimited,
                        "too many join requests are waiting; try again once the owner has answered",
                    ));
                }
                let request_id = self.next_request;
                self.next_request += 1;
                let (reply, decision) = oneshot::channel();
                self.requests.insert(
                    request_id,
                    Pending {
                        name: clean_name(name).unwrap_or_else(|| "Guest".to_owned()),
                        vm,
                        address,
                        tls,
                        since_ms: now_ms(),
                        reply,
                    },
                );
                Ok(Admission::Pending {
                    request_id,
                    decision,
                })
            }
            Credential::None => Err(unauthorized(
                "this host needs a token: open the owner URL, use a join code, or send a join request",
            )),
        }
    }

    fn new_member(
        &mut self,
        name: Option<String>,
        role: Role,
    ) -> Result<(Member, String), ErrorBody> {
        let token = random_token().map_err(internal)?;
        let token_hash = hash(&token);
        let name = clean_name(name);
        self.conn
            .execute(
                "INSERT INTO members(name, role, token_hash, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![
                    name.clone().unwrap_or_default(),
                    role.as_str(),
                    token_hash,
                    now_ms() as i64
                ],
            )
            .map_err(internal)?;
        let id = self.conn.last_insert_rowid() as u64;
        let name = match name {
            Some(name) => name,
            None => {
                let name = format!("Guest {id}");
                self.conn
                    .execute(
                        "UPDATE members SET name = ?1 WHERE id = ?2",
                        params![name, id],
                    )
                    .map_err(internal)?;
                name
            }
        };
        let member = Member {
            id,
            color: color_for(id),
            name,
            role,
        };
        self.members
            .insert(id, (member.clone(), token_hash.clone()));
        self.by_token.insert(token_hash, id);
        Ok((member, token))
    }

    /// Binds a member's token to the certificate it joined with.
    fn bind(&mut self, id: u64, fingerprint: &str) -> Result<(), ErrorBody> {
        self.conn
            .execute(
                "UPDATE members SET fingerprint = ?1 WHERE id = ?2",
                params![fingerprint, id],
            )
            .map_err(internal)?;
        self.bound.insert(id, fingerprint.to_owned());
        Ok(())
    }

    fn decide(&mut self, request_id: u64, role: Option<Role>) -> Result<Option<Member>, ErrorBody> {
        let request = self
            .requests
            .remove(&request_id)
            .filter(|r| !r.reply.is_closed())
            .ok_or_else(|| {
                not_found(format!(
                    "no join request {} is waiting (it was answered or withdrawn)",
                    request_wire_id(request_id)
                ))
            })?;
        let Some(role) = role else {
            let _ = request.reply.send(Err(ErrorBody::new(
                ErrorCode::JoinDenied,
                "the owner denied your request to join",
            )));
            return Ok(None);
        };
        let (member, token) = self.new_member(Some(request.name), role)?;
        if let Some(tls) = &request.tls {
            self.bind(member.id, &tls.fingerprint)?;
        }
        self.invite(member.id, &request.vm)?;
        let Admission::Admitted(admitted) = self.admitted(member.id, Some(token))? else {
            return Err(internal("admission"));
        };
        // A requester that left just now: the member exists but nobody holds
        // its token, which is harmless; the owner can remove it.
        let _ = request.reply.send(Ok(admitted));
        Ok(Some(member))
    }

    fn create_code(
        &mut self,
        role: Role,
        ttl: Duration,
        vm: String,
    ) -> Result<JoinCodeInfo, ErrorBody> {
        let code = random_code().map_err(internal)?;
        let now = now_ms();
        let expires_at = now + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX / 2);
        self.conn
            .execute(
                "INSERT INTO join_codes(code_hash, role, created_ms, expires_ms, vm_key) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![hash(&normalize_code(&code)), role.as_str(), now as i64, expires_at as i64, vm],
            )
            .map_err(internal)?;
        Ok(JoinCodeInfo {
            code_id: code_wire_id(self.conn.last_insert_rowid() as u64),
            code: Some(code),
            role,
            key: key_value(&vm),
            expires_at,
            revoked: false,
            uses: 0,
        })
    }

    fn list_codes(&mut self) -> Result<Vec<JoinCodeInfo>, ErrorBody> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, role, expires_ms, revoked_ms IS NOT NULL, uses, vm_key FROM join_codes ORDER BY id")
            .map_err(internal)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(JoinCodeInfo {
                    code_id: code_wire_id(r.get(0)?),
                    code: None,
                    role: parse_role(&r.get::<_, String>(1)?),
                    key: r
                        .get::<_, Option<String>>(5)?
                        .as_deref()
                        .and_then(key_value),
                    expires_at: r.get(2)?,
                    revoked: r.get(3)?,
                    uses: r.get(4)?,
                })
            })
            .map_err(internal)?;
        rows.collect::<Result<_, _>>().map_err(internal)
    }

    fn revoke_code(&mut self, id: u64) -> Result<(), ErrorBody> {
        let changed = self
            .conn
            .execute(
                "UPDATE join_codes SET revoked_ms = ?1 WHERE id = ?2 AND revoked_ms IS NULL",
                params![now_ms() as i64, id],
            )
            .map_err(internal)?;
        if changed == 0 {
            return Err(not_found(format!(
                "no join code {} (or it is already revoked)",
                code_wire_id(id)
            )));
        }
        Ok(())
    }

    fn member_mut(&mut self, id: u64) -> Result<&mut Member, ErrorBody> {
        self.members
            .get_mut(&id)
            .map(|(m, _)| m)
            .ok_or_else(|| not_found(format!("no participant {}", participant_id(id))))
    }

    fn publish(&mut self, id: u64, member: Option<Member>) {
        if let Some(w) = self.watchers.get(&id) {
            let _ = w.send(member.clone());
        }
        let _ = self.changes.send(MemberChange { id, member });
    }

    fn set_role(&mut self, id: u64, role: Role) -> Result<Member, ErrorBody> {
        if self.member_mut(id)?.role == Role::Owner || role == Role::Owner {
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                "the owner's role cannot change, and there is only one owner",
            ));
        }
        self.conn
            .execute(
                "UPDATE members SET role = ?1 WHERE id = ?2",
                params![role.as_str(), id],
            )
            .map_err(internal)?;
        let member = self.member_mut(id)?;
        member.role = role;
        let member = member.clone();
        self.publish(id, Some(member.clone()));
        Ok(member)
    }

    fn remove(&mut self, id: u64) -> Result<(), ErrorBody> {
        if self.member_mut(id)?.role == Role::Owner {
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                "the owner cannot be removed",
            ));
        }
        self.conn
            .execute(
                "UPDATE members SET removed_ms = ?1, token_hash = NULL WHERE id = ?2",
                params![now_ms() as i64, id],
            )
            .map_err(internal)?;
        if let Some((_, token_hash)) = self.members.remove(&id) {
            self.by_token.remove(&token_hash);
        }
        self.vms.remove(&id);
        self.publish(id, None);
        self.watchers.remove(&id);
        Ok(())
    }

    fn update_profile(
        &mut self,
        id: u64,
        name: Option<String>,
        color: Option<String>,
    ) -> Result<Member, ErrorBody> {
        let name = match name {
            Some(n) => Some(clean_name(Some(n)).ok_or_else(|| {
                ErrorBody::new(ErrorCode::InvalidArgs, "a name needs a visible character")
            })?),
            None => None,
        };
        if let Some(c) = &color {
            let ok = c.len() == 7
                && c.starts_with('#')
                && c[1..].chars().all(|ch| ch.is_ascii_hexdigit());
            if !ok {
                return Err(ErrorBody::new(ErrorCode::InvalidArgs, "color is #rrggbb"));
            }
        }
        if let Some(n) = &name {
            self.conn
                .execute("UPDATE members SET name = ?1 WHERE id = ?2", params![n, id])
                .map_err(internal)?;
        }
        let member = self.member_mut(id)?;
        if let Some(n) = name {
            member.name = n;
        }
        if let Some(c) = color {
            member.color = c.to_ascii_lowercase();
        }
        let member = member.clone();
        self.publish(id, Some(member.clone()));
        Ok(member)
    }
}

/// Writes `secret` to `path` readable by this user only (created 0600, so
/// it is never readable by others even for a moment).
fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    ensemble_lan::write_private(path, format!("{secret}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const HERE: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const VM: &str = r#"["a"]"#;

    fn target(key: &str, exists: bool) -> Option<Target> {
        Some(Target {
            key: key.to_owned(),
            exists,
        })
    }

    fn admitted(a: Result<Admission, ErrorBody>) -> Admitted {
        match a {
            Ok(Admission::Admitted(a)) => a,
            Ok(Admission::Pending { .. }) => panic!("pending"),
            Err(e) => panic!("refused: {e:?}"),
        }
    }

    #[tokio::test]
    async fn the_owner_token_is_kept_hashed_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let access = Access::open(dir.path()).unwrap();
        let token = access.owner_token().to_owned();
        let file = dir.path().join("owner-token");
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let owner = admitted(
            access
                .admit(Credential::Token(token.clone()), None, HERE, None, None)
                .await,
        );
        assert_eq!(owner.member.role, Role::Owner);
        drop(access);
        let db = std::fs::read(dir.path().join("access.db")).unwrap();
        assert!(!db.windows(token.len()).any(|w| w == token.as_bytes()));
        // Same token after a restart; a new one if the file is deleted.
        let again = Access::open(dir.path()).unwrap();
        assert_eq!(again.owner_token(), token);
        drop(again);
        std::fs::remove_file(&file).unwrap();
        let rotated = Access::open(dir.path()).unwrap();
        assert_ne!(rotated.owner_token(), token);
        assert!(rotated
            .admit(Credential::Token(token), None, HERE, None, None)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_login_code_works_once() {
        let dir = tempfile::tempdir().unwrap();
        let access = Access::open(dir.path()).unwrap();
        let code = access.login_code().to_owned();
        let first = admitted(
            access
                .admit(Credential::LoginCode(code.clone()), None, HERE, None, None)
                .await,
        );
        assert_eq!(first.issued.as_deref(), Some(access.owner_token()));
        let Err(e) = access
            .admit(Credential::LoginCode(code), None, HERE, None, None)
            .await
        else {
            panic!("a login code worked twice");
        };
        assert_eq!(e.code, ErrorCode::Unauthorized);
    }

    #[tokio::test]
    async fn failures_are_rate_limited_per_address() {
        let dir = tempfile::tempdir().unwrap();
        let access = Access::open(dir.path()).unwrap();
        for _ in 0..MAX_FAILURES {
            let Err(e) = access
                .admit(Credential::Token("forged".into()), None, HERE, None, None)
                .await
            else {
                panic!("forged token accepted");
            };
            assert_eq!(e.code, ErrorCode::Unauthorized);
        }
        let Err(e) = access
            .admit(Credential::Token("forged".into()), None, HERE, None, None)
            .await
        else {
            panic!("forged token accepted");
        };
        assert_eq!(e.code, ErrorCode::RateLimited);
        // A valid token still works from the limited address (every local
        // client shares 127.0.0.1).
        let token = access.owner_token().to_owned();
        admitted(
            access
                .admit(Credential::Token(token.clone()), None, HERE, None, None)
                .await,
        );
        let elsewhere = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        admitted(
            access
                .admit(Credential::Token(token), None, elsewhere, None, None)
                .await,
        );
    }

    #[tokio::test]
    async fn join_codes_expire_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let access = Access::open(dir.path()).unwrap();
        let info = access
            .create_code(Role::Viewer, Duration::from_secs(60), VM.into())
            .await
            .unwrap();
        let code = info.code.clone().unwrap();
        let typed = code.to_lowercase().replace('-', " ");
        let guest = admitted(
            access
                .admit(
                    Credential::JoinCode(typed),
                    Some("Ann".into()),
                    HERE,
                    None,
                    None,
                )
                .await,
        );
        assert_eq!(guest.member.role, Role::Viewer);
        assert_eq!(guest.member.name, "Ann");
        let token = guest.issued.clone().unwrap();
        admitted(
            access
                .admit(Credential::Token(token.clone()), None, HERE, None, None)
                .await,
        );
        access
            .revoke_code(parse_code_id(&info.code_id).unwrap())
            .await
            .unwrap();
        assert!(access
            .admit(Credential::JoinCode(code), None, HERE, None, None)
            .await
            .is_err());
        let expired = access
            .create_code(Role::Collaborator, Duration::ZERO, VM.into())
            .await
            .unwrap();
        assert!(access
            .admit(
                Credential::JoinCode(expired.code.unwrap()),
                None,
                HERE,
                None,
                None
            )
            .await
            .is_err());
        // Removal revokes the member's token and tells its connections.
        let mut watch = guest.watch;
        access.remove(guest.member.id).await.unwrap();
        watch.changed().await.unwrap();
        assert!(watch.borrow().is_none());
        assert!(access
            .admit(Credential::Token(token), None, HERE, None, None)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn members_open_only_the_vms_they_were_invited_to() {
        let dir = tempfile::tempdir().unwrap();
        let access = Access::open(dir.path()).unwrap();
        let other = r#"["b"]"#;
        let code = access
            .create_code(Role::Collaborator, Duration::from_secs(60), VM.into())
            .await
            .unwrap()
            .code
            .unwrap();
        // A code made in one VM does not open another, and is not used up.
        let Err(e) = access
            .admit(
                Credential::JoinCode(code.clone()),
                None,
                HERE,
                None,
                target(other, true),
            )
            .await
        else {
            panic!("a code opened another VM");
        };
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert!(e.message.contains(VM), "{}", e.message);
        let guest = admitted(
            access
                .admit(
                    Credential::JoinCode(code),
                    None,
                    HERE,
                    None,
                    target(VM, true),
                )
                .await,
        );
        let token = guest.issued.unwrap();
        admitted(
            access
                .admit(
                    Credential::Token(token.clone()),
                    None,
                    HERE,
                    None,
                    target(VM, true),
                )
                .await,
        );
        for (key, exists) in [(other, true), (r#"["new"]"#, false)] {
            let Err(e) = access
                .admit(
                    Credential::Token(token.clone()),
                    None,
                    HERE,
                    None,
                    target(key, exists),
                )
                .await
            else {
                panic!("a member opened {key}");
            };
            assert_eq!(e.code, ErrorCode::Forbidden);
        }
        assert_eq!(access.member_vms(guest.member.id).await.unwrap(), vec![VM]);
        // The owner opens and creates any VM.
        let owner = access.owner_token().to_owned();
        admitted(
            access
                .admit(
                    Credential::Token(owner),
                    None,
                    HERE,
                    None,
                    target(r#"["new"]"#, false),
                )
                .await,
        );
        // A join request is made in an existing VM; approval invites to it.
        let Err(e) = access
            .admit(
                Credential::RequestJoin,
                None,
                HERE,
                None,
                target(r#"["new"]"#, false),
            )
            .await
        else {
            panic!("a join request for a VM that does not exist");
        };
        assert_eq!(e.code, ErrorCode::Forbidden);
        let Ok(Admission::Pending {
            request_id,
            decision,
        }) = access
            .admit(
                Credential::RequestJoin,
                Some("Rae".into()),
                HERE,
                None,
                target(other, true),
            )
            .await
        else {
            panic!("no pending request");
        };
        let rae = access
            .decide(request_id, Some(Role::Viewer))
            .await
            .unwrap()
            .unwrap();
        let rae_token = decision.await.unwrap().unwrap().issued.unwrap();
        assert_eq!(access.member_vms(rae.id).await.unwrap(), vec![other]);
        assert!(access
            .admit(
                Credential::Token(rae_token.clone()),
                None,
                HERE,
                None,
                target(VM, true)
            )
            .await
            .is_err());
        // Kept across a restart.
        drop(access);
        let again = Access::open(dir.path()).unwrap();
        admitted(
            again
                .admit(
                    Credential::Token(rae_token),
                    None,
                    HERE,
                    None,
                    target(other, true),
                )
                .await,
        );
        assert!(again
            .admit(
                Credential::Token(token),
                None,
                HERE,
                None,
                target(other, true)
            )
            .await
            .is_err());
    }
}
