//! Who is in a VM and who drives it: participants' presence and the control
//! lock. One task per VM owns both and handles one request at a time; each
//! change is appended to the log (and durable) before the next request is
//! looked at, so the log's order is the order of the changes and there is
//! exactly one holder at any time. The holder is also published on a
//! `watch`, so gating an input action costs no round trip.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ensemble_protocol::people::participant_id;
use ensemble_protocol::{ErrorBody, ErrorCode, Holder, Participant, Role};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::access::{Member, MemberChange};
use crate::log::{now_ms, Log, NewEvent};

/// Default time a holder who disconnects keeps control.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Requests waiting for the control task; each is handled in microseconds
/// plus one log commit.
const CONTROL_QUEUE: usize = 64;

/// The holder, by member id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lock {
    Nobody,
    Person(u64),
    Agent { session_id: String, supervisor: u64 },
}

impl Lock {
    pub fn to_wire(&self) -> Option<Holder> {
        match self {
            Lock::Nobody => None,
            Lock::Person(id) => Some(Holder::Person {
                participant_id: participant_id(*id),
            }),
            Lock::Agent {
                session_id,
                supervisor,
            } => Some(Holder::Agent {
                session_id: session_id.clone(),
                supervisor: participant_id(*supervisor),
            }),
        }
    }

    fn json(&self) -> Value {
        json!(self.to_wire())
    }
}

/// What a change of holder asks the caller to do next.
#[derive(Debug, Default)]
pub struct Effects {
    /// The agent of this session was holding control: cancel its turn.
    pub cancel_session: Option<String>,
}

/// Input actions the supervisor of a running agent may still send.
const SUPERVISOR_INPUTS: &[&str] = &["respondPermission", "cancelPrompt"];

/// A handle on a VM's control task; cheap to clone.
#[derive(Clone)]
pub struct Control {
    tx: mpsc::Sender<Request>,
    lock: watch::Receiver<Lock>,
}

type Reply<T> = oneshot::Sender<Result<T, ErrorBody>>;

/// What a new connection's `welcome` carries: the participants, the holder
/// and who asked for control, and the log's head they are as of. Every
/// participant and control event at or below `head` is reflected in them,
/// none above.
#[derive(Debug)]
pub struct Snapshot {
    pub participants: Vec<Participant>,
    pub lock: Lock,
    /// Participants waiting for an answer to `requestControl`, by id.
    pub requests: Vec<String>,
    pub head: u64,
}

enum Request {
    Connect {
        member: Member,
        reply: Reply<Snapshot>,
    },
    Disconnect {
        id: u64,
    },
    Take {
        by: Member,
        reply: Reply<Effects>,
    },
    Ask {
        by: Member,
        reply: Reply<Effects>,
    },
    Grant {
        by: Member,
        to: u64,
        reply: Reply<Effects>,
    },
    Deny {
        by: Member,
        to: u64,
        reply: Reply<Effects>,
    },
    Release {
        by: Member,
        reply: Reply<Effects>,
    },
    HandToAgent {
        by: Member,
        session_id: String,
        reply: Reply<Option<u64>>,
    },
    TurnEnded {
        session_id: String,
    },
    List {
        reply: Reply<Snapshot>,
    },
}

impl Control {
    pub fn start(log: Log, changes: broadcast::Receiver<MemberChange>, grace: Duration) -> Control {
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        let (lock_tx, lock) = watch::channel(Lock::Nobody);
        let task = Task {
            log,
            grace,
            lock: lock_tx,
            people: BTreeMap::new(),
            asking: BTreeSet::new(),
            deadline: None,
            took_over: None,
        };
        tokio::spawn(task.run(rx, changes));
        Control { tx, lock }
    }

    /// The holder now.
    pub fn lock(&self) -> Lock {
        self.lock.borrow().clone()
    }

    /// May `me` send the input action `action` now?
    pub fn check_input(&self, me: &Member, action: &str) -> Result<(), ErrorBody> {
        if me.role == Role::Viewer {
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                format!(
                    "viewers cannot send input ({action}); ask the owner for the collaborator role"
                ),
            ));
        }
        let lock = self.lock();
        let allowed = match &lock {
            Lock::Person(id) => *id == me.id,
            Lock::Agent { supervisor, .. } => {
                *supervisor == me.id && SUPERVISOR_INPUTS.contains(&action)
            }
            Lock::Nobody => false,
        };
        if allowed {
            return Ok(());
        }
        Err(not_in_control(&lock, action))
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, ErrorBody> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// A connection of `member` opened the VM: the participants and holder
    /// for its `welcome`, with the head they are as of.
    pub async fn connect(&self, member: Member) -> Result<Snapshot, ErrorBody> {
        self.ask(|reply| Request::Connect { member, reply }).await
    }

    pub async fn disconnect(&self, id: u64) {
        let _ = self.tx.send(Request::Disconnect { id }).await;
    }

    pub async fn take(&self, by: Member) -> Result<Effects, ErrorBody> {
        self.ask(|reply| Request::Take { by, reply }).await
    }

    pub async fn request(&self, by: Member) -> Result<Effects, ErrorBody> {
        self.ask(|reply| Request::Ask { by, reply }).await
    }

    pub async fn grant(&self, by: Member, to: u64) -> Result<Effects, ErrorBody> {
        self.ask(|reply| Request::Grant { by, to, reply }).await
    }

    pub async fn deny(&self, by: Member, to: u64) -> Result<Effects, ErrorBody> {
        self.ask(|reply| Request::Deny { by, to, reply }).await
    }

    pub async fn release(&self, by: Member) -> Result<Effects, ErrorBody> {
        self.ask(|reply| Request::Release { by, reply }).await
    }

    /// Makes the agent of `session_id` the holder for one turn. Answers the
    /// seq from which the caller's own work since taking over from that
    /// agent is in the log, if they did.
    pub async fn hand_to_agent(
        &self,
        by: Member,
        session_id: String,
    ) -> Result<Option<u64>, ErrorBody> {
        self.ask(|reply| Request::HandToAgent {
            by,
            session_id,
            reply,
        })
        .await
    }

    /// The agent's turn ended: control goes back to its supervisor.
    pub async fn turn_ended(&self, session_id: String) {
        let _ = self.tx.send(Request::TurnEnded { session_id }).await;
    }

    pub async fn list(&self) -> Result<Snapshot, ErrorBody> {
        self.ask(|reply| Request::List { reply }).await
    }
}

fn closed() -> ErrorBody {
    ErrorBody::new(ErrorCode::Unavailable, "the VM is closed")
}

fn not_in_control(lock: &Lock, action: &str) -> ErrorBody {
    let who = match lock {
        Lock::Nobody => "nobody holds control; takeControl first".to_owned(),
        Lock::Person(id) => format!(
            "{} holds control; requestControl and wait for them to grant it",
            participant_id(*id)
        ),
        Lock::Agent {
            session_id,
            supervisor,
        } => format!(
            "the agent of session {session_id} holds control for its turn, supervised by {}; takeControl to take over",
            participant_id(*supervisor)
        ),
    };
    ErrorBody::new(
        ErrorCode::NotInControl,
        format!("{action} needs control: {who}"),
    )
    .with_data(json!({ "holder": lock.to_wire() }))
}

fn forbidden(message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(ErrorCode::Forbidden, message)
}

struct Person {
    member: Member,
    connections: usize,
    last_seen: u64,
}

impl Person {
    fn wire(&self) -> Participant {
        Participant {
            id: self.member.wire_id(),
            name: self.member.name.clone(),
            color: self.member.color.clone(),
            role: self.member.role,
            connected: self.connections > 0,
            last_seen: self.last_seen,
        }
    }
}

struct Task {
    log: Log,
    grace: Duration,
    lock: watch::Sender<Lock>,
    people: BTreeMap<u64, Person>,
    /// Who asked for control and has not been answered.
    asking: BTreeSet<u64>,
    /// When a disconnected holder loses control.
    deadline: Option<Instant>,
    /// (person, session, seq): the person took over from that session's
    /// agent at `seq`.
    took_over: Option<(u64, String, u64)>,
}

impl Task {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Request>,
        changes: broadcast::Receiver<MemberChange>,
    ) {
        // `None` once the host's access thread is gone (shutting down).
        let mut changes = Some(changes);
        loop {
            let deadline = self.deadline;
            let change = async {
                match changes.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                request = rx.recv() => match request {
                    Some(request) => self.handle(request).await,
                    None => return,
                },
                change = change => match change {
                    Ok(change) => self.member_changed(change).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "member changes lagged");
                    }
                    Err(broadcast::error::RecvError::Closed) => changes = None,
                },
                _ = sleep_until(deadline) => {
                    self.deadline = None;
                    self.grace_over().await;
                }
            }
        }
    }

    fn current(&self) -> Lock {
        self.lock.borrow().clone()
    }

    /// Read between requests: this task logs every participant and control
    /// event, so none can fall between the listing and the head (a head
    /// read later could cover a change the listing lacks).
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            participants: self.people.values().map(Person::wire).collect(),
            lock: self.current(),
            requests: self.asking.iter().map(|id| participant_id(*id)).collect(),
            head: self.log.head(),
        }
    }

    fn connected(&self, id: u64) -> bool {
        self.people.get(&id).is_some_and(|p| p.connections > 0)
    }

    async fn append(&self, name: &str, data: Value) -> Result<u64, ErrorBody> {
        self.log
            .append(vec![NewEvent::Json {
                name: name.to_owned(),
                data: data.to_string(),
            }])
            .await
            .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))
    }

    /// Moves the lock, logs `controlChanged`, and arms or clears the grace
    /// timer for the new holder. Answers the event's seq.
    async fn change(&mut self, to: Lock, by: Option<u64>, reason: &str) -> Result<u64, ErrorBody> {
        let previous = self.current();
        let seq = self
            .append(
                "controlChanged",
                json!({
                    "holder": to.to_wire(),
                    "previous": previous.to_wire(),
                    "by": by.map(participant_id),
                    "reason": reason,
                }),
            )
            .await?;
        if let Lock::Person(id) = &to {
            self.asking.remove(id);
        }
        self.deadline = match &to {
            Lock::Person(id) if !self.connected(*id) => Some(Instant::now() + self.grace),
            _ => None,
        };
        if !matches!(to, Lock::Person(_)) {
            self.took_over = None;
        }
        self.lock.send_replace(to);
        Ok(seq)
    }

    async fn handle(&mut self, request: Request) {
        match request {
            Request::Connect { member, reply } => {
                let _ = reply.send(self.connect(member).await);
            }
            Request::Disconnect { id } => self.disconnect(id).await,
            Request::Take { by, reply } => {
                let _ = reply.send(self.take(by).await);
            }
            Request::Ask { by, reply } => {
                let _ = reply.send(self.ask(by).await);
            }
            Request::Grant { by, to, reply } => {
                let _ = reply.send(self.grant(by, to).await);
            }
            Request::Deny { by, to, reply } => {
                let _ = reply.send(self.deny(by, to).await);
            }
            Request::Release { by, reply } => {
                let _ = reply.send(self.release(by).await);
            }
            Request::HandToAgent {
                by,
                session_id,
                reply,
            } => {
                let _ = reply.send(self.hand_to_agent(by, session_id).await);
            }
            Request::TurnEnded { session_id } => self.turn_ended(session_id).await,
            Request::List { reply } => {
                let _ = reply.send(Ok(self.snapshot()));
            }
        }
    }

    async fn connect(&mut self, member: Member) -> Result<Snapshot, ErrorBody> {
        let now = now_ms();
        let id = member.id;
        let person = self.people.entry(id).or_insert(Person {
            member: member.clone(),
            connections: 0,
            last_seen: now,
        });
        person.member = member;
        person.connections += 1;
        person.last_seen = now;
        if person.connections == 1 {
            let participant = person.wire();
            self.append("participantJoined", json!({ "participant": participant }))
                .await?;
            if self.current() == Lock::Person(id) {
                // Back within the grace period.
                self.deadline = None;
            }
        }
        Ok(self.snapshot())
    }

    async fn disconnect(&mut self, id: u64) {
        let Some(person) = self.people.get_mut(&id) else {
            return;
        };
        person.connections = person.connections.saturating_sub(1);
        if person.connections > 0 {
            return;
        }
        person.last_seen = now_ms();
        let last_seen = person.last_seen;
        let _ = self
            .append(
                "participantLeft",
                json!({"participantId": participant_id(id), "lastSeen": last_seen}),
            )
            .await;
        if self.current() == Lock::Person(id) {
            self.deadline = Some(Instant::now() + self.grace);
        }
    }

    async fn grace_over(&mut self) {
        if let Lock::Person(id) = self.current() {
            if !self.connected(id) {
                let _ = self.change(Lock::Nobody, None, "disconnected").await;
            }
        }
    }

    fn may_hold(by: &Member) -> Result<(), ErrorBody> {
        if by.role == Role::Viewer {
            return Err(forbidden("viewers cannot hold control"));
        }
        Ok(())
    }

    async fn take(&mut self, by: Member) -> Result<Effects, ErrorBody> {
        Self::may_hold(&by)?;
        let lock = self.current();
        match &lock {
            Lock::Nobody => {
                self.change(Lock::Person(by.id), Some(by.id), "taken")
                    .await?;
                Ok(Effects::default())
            }
            Lock::Person(id) if *id == by.id => Ok(Effects::default()),
            Lock::Person(_) if by.role == Role::Owner => {
                self.change(Lock::Person(by.id), Some(by.id), "takenByOwner")
                    .await?;
                Ok(Effects::default())
            }
            Lock::Agent {
                session_id,
                supervisor,
            } if *supervisor == by.id || by.role == Role::Owner => {
                let seq = self
                    .change(Lock::Person(by.id), Some(by.id), "takenFromAgent")
                    .await?;
                self.took_over = Some((by.id, session_id.clone(), seq));
                Ok(Effects {
                    cancel_session: Some(session_id.clone()),
                })
            }
            _ => Err(not_in_control(&lock, "takeControl")),
        }
    }

    async fn ask(&mut self, by: Member) -> Result<Effects, ErrorBody> {
        Self::may_hold(&by)?;
        let lock = self.current();
        let holder = match &lock {
            // Nothing to ask for: take it.
            Lock::Nobody => return self.take(by).await,
            Lock::Person(id) if *id == by.id => return Ok(Effects::default()),
            Lock::Agent { supervisor, .. } if *supervisor == by.id => return self.take(by).await,
            Lock::Person(id) => *id,
            Lock::Agent { supervisor, .. } => *supervisor,
        };
        if self.asking.insert(by.id) {
            self.append(
                "controlRequested",
                json!({
                    "participantId": by.wire_id(),
                    "holder": lock.to_wire(),
                    "answeredBy": participant_id(holder),
                }),
            )
            .await?;
        }
        Ok(Effects::default())
    }

    /// The person who may answer requests: the holder, or the supervisor of
    /// the agent holding control.
    fn answers(&self, by: &Member) -> Result<Lock, ErrorBody> {
        let lock = self.current();
        let ok = match &lock {
            Lock::Person(id) => *id == by.id,
            Lock::Agent { supervisor, .. } => *supervisor == by.id,
            Lock::Nobody => false,
        };
        if ok {
            Ok(lock)
        } else {
            Err(not_in_control(&lock, "grantControl/denyControl"))
        }
    }

    async fn grant(&mut self, by: Member, to: u64) -> Result<Effects, ErrorBody> {
        let lock = self.answers(&by)?;
        let Some(target) = self.people.get(&to).map(|p| p.member.clone()) else {
            return Err(ErrorBody::new(
                ErrorCode::NotFound,
                format!("{} has not joined this VM", participant_id(to)),
            ));
        };
        if target.role == Role::Viewer {
            return Err(forbidden(format!(
                "{} is a viewer and cannot hold control",
                target.name
            )));
        }
        if lock == Lock::Person(to) {
            return Ok(Effects::default());
        }
        self.change(Lock::Person(to), Some(by.id), "granted")
            .await?;
        Ok(Effects {
            cancel_session: match lock {
                Lock::Agent { session_id, .. } => Some(session_id),
                _ => None,
            },
        })
    }

    async fn deny(&mut self, by: Member, to: u64) -> Result<Effects, ErrorBody> {
        self.answers(&by)?;
        if !self.asking.remove(&to) {
            return Err(ErrorBody::new(
                ErrorCode::NotFound,
                format!("{} has not asked for control", participant_id(to)),
            ));
        }
        self.append(
            "controlDenied",
            json!({"participantId": participant_id(to), "by": by.wire_id()}),
        )
        .await?;
        Ok(Effects::default())
    }

    async fn release(&mut self, by: Member) -> Result<Effects, ErrorBody> {
        let lock = self.current();
        if lock != Lock::Person(by.id) {
            return Err(not_in_control(&lock, "releaseControl"));
        }
        self.change(Lock::Nobody, Some(by.id), "released").await?;
        Ok(Effects::default())
    }

    async fn hand_to_agent(
        &mut self,
        by: Member,
        session_id: String,
    ) -> Result<Option<u64>, ErrorBody> {
        let lock = self.current();
        if lock != Lock::Person(by.id) {
            return Err(not_in_control(&lock, "handToAgent"));
        }
        let since = self
            .took_over
            .take()
            .filter(|(person, session, _)| *person == by.id && *session == session_id)
            .map(|(_, _, seq)| seq);
        self.change(
            Lock::Agent {
                session_id,
                supervisor: by.id,
            },
            Some(by.id),
            "handedToAgent",
        )
        .await?;
        Ok(since)
    }

    async fn turn_ended(&mut self, session_id: String) {
        if let Lock::Agent {
            session_id: holding,
            supervisor,
        } = self.current()
        {
            if holding == session_id {
                // A supervisor removed or made a viewer meanwhile cannot
                // take it back.
                let may = self
                    .people
                    .get(&supervisor)
                    .is_some_and(|p| p.member.role != Role::Viewer);
                let to = if may {
                    Lock::Person(supervisor)
                } else {
                    Lock::Nobody
                };
                let _ = self.change(to, None, "turnEnded").await;
            }
        }
    }

    async fn member_changed(&mut self, change: MemberChange) {
        let Some(person) = self.people.get_mut(&change.id) else {
            return;
        };
        let reason = match change.member {
            Some(member) => {
                person.member = member;
                let participant = person.wire();
                let _ = self
                    .append("participantUpdated", json!({ "participant": participant }))
                    .await;
                if participant.role != Role::Viewer {
                    return;
                }
                "roleChanged"
            }
            None => {
                self.people.remove(&change.id);
                let _ = self
                    .append(
                        "participantLeft",
                        json!({
                            "participantId": participant_id(change.id),
                            "lastSeen": now_ms(),
                            "reason": "removed",
                        }),
                    )
                    .await;
                "removed"
            }
        };
        self.asking.remove(&change.id);
        if self.current() == Lock::Person(change.id) {
            let _ = self.change(Lock::Nobody, None, reason).await;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The holder as `{holder}` JSON, for action answers.
pub fn holder_json(lock: &Lock) -> Value {
    json!({ "holder": lock.json() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Frame;

    fn member(id: u64, role: Role) -> Member {
        Member {
            id,
            name: format!("m{id}"),
            color: "#000000".into(),
            role,
        }
    }

    /// The holder the log says as of `head`: the last `controlChanged` at or
    /// below it.
    async fn logged_holder(log: &Log, head: u64) -> Value {
        let events = log
            .page(0, head, 100_000, Some(vec!["controlChanged".into()]))
            .await
            .expect("read the log");
        match events.last().map(|e| &e.frame) {
            Some(Frame::Text(bytes)) => {
                let frame: Value = serde_json::from_slice(bytes).expect("event frame");
                frame["data"]["holder"].clone()
            }
            _ => Value::Null,
        }
    }

    /// Connections keep opening while control changes hands: each snapshot
    /// is exactly the state as of its head, so a welcome built from it shows
    /// the holder that its log says.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_matches_the_log_at_its_head() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, _closed) = crate::log::open(&dir.path().join("log.db"), 1 << 20).expect("log");
        let (_changes_tx, changes) = broadcast::channel(8);
        let control = Control::start(log.clone(), changes, DEFAULT_GRACE);
        let driver = member(2, Role::Collaborator);
        control.connect(driver.clone()).await.expect("connect");
        let churn = {
            let control = control.clone();
            tokio::spawn(async move {
                for _ in 0..200 {
                    control.take(driver.clone()).await.expect("take");
                    control.release(driver.clone()).await.expect("release");
                }
            })
        };
        for _ in 0..200 {
            let snapshot = control
                .connect(member(3, Role::Viewer))
                .await
                .expect("connect");
            assert_eq!(
                logged_holder(&log, snapshot.head).await,
                json!(snapshot.lock.to_wire()),
                "snapshot at head {}",
                snapshot.head
            );
            control.disconnect(3).await;
        }
        churn.await.expect("churn task");
    }
}
