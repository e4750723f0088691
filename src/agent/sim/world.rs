//! The simulated world's outside systems, each following the real one's rules: etcd's slots
//! (leases on a virtual clock, [`crate::slot::etcd`]'s acquire, release and fence rules, the halt
//! marker), the app units (systemd restart jobs that take time, fail or are canceled), and the
//! update service (Nebraska's grant and event rules, `shared/reference/omaha-nebraska.md` §5.4–5.7).

use std::collections::BTreeMap;

use crate::omaha::Event;
use crate::slot::{Acquisition, Holding};
use crate::systemd::ActiveState;

/// Virtual milliseconds.
pub type Ms = u64;

/// The simulated sidekicks' `swap.drain`, `swap.verify_timeout` and `swap.start_timeout`.
pub const DRAIN: Ms = 2_000;
pub const VERIFY_TIMEOUT: Ms = 15_000;
pub const START_TIMEOUT: Ms = 5_000;

/// How a version behaves once started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Good,
    /// Starts, but its probe never passes: fails verification.
    Unhealthy,
    /// Fails to start and breaks the host so that the old version does not start either (until
    /// an operator fixes the host): strands the instance.
    Strand,
    /// Starts and passes its probes, then exits `after` its start (the unit reads `failed`):
    /// fails late, during verification or min-healthy.
    Late {
        after: Ms,
    },
}

impl Behaviour {
    /// Whether its probe passes while its process runs.
    pub fn serves(self) -> bool {
        matches!(self, Behaviour::Good | Behaviour::Late { .. })
    }
}

// ---------------------------------------------------------------------------------------------
// etcd

#[derive(Debug, Clone)]
struct Lease {
    /// The process keeping it alive, while it can reach etcd.
    keeper: (usize, u32),
    kept: bool,
    /// Its client let go of it (a failed release): nothing keeps it alive again.
    orphaned: bool,
    /// When it lapses once no longer kept.
    expires: Ms,
}

/// A slot key's value and lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotKey {
    pub holder: String,
    pub host: String,
    pub lease: u64,
    pub version: String,
}

/// One holder's client-side state ([`crate::slot::EtcdSlots`]' `HolderState`): lost with the process.
#[derive(Debug, Clone, Default)]
pub struct SlotClient {
    pub lease: Option<u64>,
    pub key: Option<u32>,
}

/// The etcd slot group: keys `/sidekick/slots/<group>/<n>`, leases and the halt marker.
#[derive(Debug, Clone)]
pub struct Etcd {
    pub ttl: Ms,
    pub max: u32,
    leases: BTreeMap<u64, Lease>,
    pub slots: BTreeMap<u32, SlotKey>,
    pub halt: Option<(String, String)>,
    next_lease: u64,
    /// Deletes under the group so far: what `wait_for_change` watches for.
    pub deletions: u64,
}

impl Etcd {
    pub fn new(ttl: Ms, max: u32) -> Etcd {
        Etcd {
            ttl,
            max,
            leases: BTreeMap::new(),
            slots: BTreeMap::new(),
            halt: None,
            next_lease: 1,
            deletions: 0,
        }
    }

    /// Leases that lapsed by `now` go, with the keys bound to them.
    pub fn purge(&mut self, now: Ms) {
        let lapsed: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| !l.kept && now >= l.expires)
            .map(|(id, _)| *id)
            .collect();
        for id in lapsed {
            self.revoke(id);
        }
    }

    fn alive(&self, lease: u64) -> bool {
        self.leases.contains_key(&lease)
    }

    /// The keeper stops keeping its leases alive (died, or cut from etcd): they lapse one TTL
    /// after the last keepalive.
    pub fn stop_keeping(&mut self, agent: usize, now: Ms) {
        for lease in self.leases.values_mut() {
            if lease.keeper.0 == agent && lease.kept {
                lease.kept = false;
                lease.expires = now + self.ttl;
            }
        }
    }

    /// The keeper `(agent, gen)` reaches etcd again: the leases it still has are kept again.
    pub fn resume_keeping(&mut self, keeper: (usize, u32)) {
        for lease in self.leases.values_mut() {
            if lease.keeper == keeper && !lease.orphaned {
                lease.kept = true;
            }
        }
    }

    /// One lease is no longer kept (its client forgot it): it lapses one TTL later.
    pub fn stop_keeping_lease(&mut self, id: u64, now: Ms) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.orphaned = true;
            if lease.kept {
                lease.kept = false;
                lease.expires = now + self.ttl;
            }
        }
    }

    pub fn revoke(&mut self, id: u64) {
        if self.leases.remove(&id).is_some() {
            let before = self.slots.len();
            self.slots.retain(|_, k| k.lease != id);
            if self.slots.len() != before {
                self.deletions += 1;
            }
        }
    }

    /// Every lease `agent` keeps (a lease-loss fault revokes them).
    pub fn leases_of(&self, agent: usize) -> Vec<u64> {
        self.leases
            .iter()
            .filter(|(_, l)| l.keeper.0 == agent)
            .map(|(id, _)| *id)
            .collect()
    }

    fn grant(&mut self, keeper: (usize, u32)) -> u64 {
        let id = self.next_lease;
        self.next_lease += 1;
        let lease = Lease {
            keeper,
            kept: true,
            orphaned: false,
            expires: 0,
        };
        self.leases.insert(id, lease);
        id
    }

    fn live_lease(&mut self, client: &mut SlotClient, keeper: (usize, u32)) -> u64 {
        match client.lease {
            Some(id) if self.alive(id) => id,
            _ => {
                let id = self.grant(keeper);
                client.lease = Some(id);
                id
            }
        }
    }

    /// `EtcdSlots::acquire` (no queue: the swap makes single attempts): a key of this holder id
    /// is kept (re-bound to our lease, also in a halted group) unless another host wrote it
    /// (a clone: busy); then the halt; then a free index below the limit.
    /// `away`: a rollback after a monitor failure passes a halt on `version` itself
    /// (`EtcdSlots::acquire_within_ungated`).
    pub fn acquire(
        &mut self,
        client: &mut SlotClient,
        keeper: (usize, u32),
        (holder, host): (&str, &str),
        version: &str,
        away: bool,
    ) -> Acquisition {
        let outcome = self.try_acquire(client, keeper, holder, host, version, away);
        if client.key.is_none()
            && !matches!(outcome, Acquisition::Acquired)
            && let Some(lease) = client.lease.take()
        {
            self.revoke(lease);
        }
        outcome
    }

    fn try_acquire(
        &mut self,
        client: &mut SlotClient,
        keeper: (usize, u32),
        holder: &str,
        host: &str,
        version: &str,
        away: bool,
    ) -> Acquisition {
        let mine = self
            .slots
            .iter()
            .find(|(_, k)| k.holder == holder)
            .map(|(n, k)| (*n, k.clone()));
        if let Some((index, key)) = mine {
            if client
                .lease
                .is_some_and(|l| self.alive(l) && l == key.lease)
            {
                client.key = Some(index);
                return Acquisition::Acquired;
            }
            if key.host != host {
                return Acquisition::Busy {
                    detail: format!("duplicate holder: slot {index} is held on {}", key.host),
                };
            }
            let lease = self.live_lease(client, keeper);
            self.slots.insert(
                index,
                SlotKey {
                    lease,
                    version: version.into(),
                    ..key
                },
            );
            client.key = Some(index);
            return Acquisition::Acquired;
        }
        client.key = None;
        if let Some((halted, reason)) = &self.halt
            && !(away && halted == version)
        {
            let version = halted;
            return Acquisition::Halted {
                version: version.clone(),
                reason: reason.clone(),
            };
        }
        let held = self.slots.len();
        let free = (0..self.max).find(|n| !self.slots.contains_key(n));
        let (Some(index), true) = (free, held < self.max as usize) else {
            return Acquisition::Busy {
                detail: format!("{held} of {} slots held", self.max),
            };
        };
        let lease = self.live_lease(client, keeper);
        let key = SlotKey {
            holder: holder.into(),
            host: host.into(),
            lease,
            version: version.into(),
        };
        self.slots.insert(index, key);
        client.key = Some(index);
        Acquisition::Acquired
    }

    /// `EtcdSlots::held`: the lease known lost, or the key read back (ours iff on our lease and
    /// naming our holder id).
    pub fn held(&self, client: &SlotClient, holder: &str) -> Holding {
        let (Some(lease), Some(index)) = (client.lease, client.key) else {
            return Holding::NotHeld;
        };
        if !self.alive(lease) {
            return Holding::Lost {
                reason: "lease lapsed".into(),
            };
        }
        match self.slots.get(&index) {
            Some(k) if k.lease == lease && k.holder == holder => Holding::Held,
            _ => Holding::Lost {
                reason: format!("slot {index} removed or re-bound"),
            },
        }
    }

    /// `EtcdSlots::release`: only our own key (the one held, compared on its lease; holding
    /// none, this holder id's keys on this host), then the lease revoked.
    pub fn release(&mut self, client: &mut SlotClient, holder: &str, host: &str) {
        let held = client.key.zip(client.lease);
        let own: Vec<(u32, SlotKey)> = self
            .slots
            .iter()
            .filter(|(_, k)| k.holder == holder && k.host == host)
            .map(|(n, k)| (*n, k.clone()))
            .collect();
        for (index, key) in own {
            let lease = match held {
                Some((k, _)) if k != index => continue,
                Some((_, lease)) => lease,
                None => key.lease,
            };
            if key.lease == lease {
                self.slots.remove(&index);
                self.deletions += 1;
            }
        }
        client.key = None;
        if let Some(lease) = client.lease.take() {
            self.revoke(lease);
        }
    }

    /// `EtcdSlots::release_stale`: this holder id's keys on this host, and their leases.
    pub fn release_stale(&mut self, client: &mut SlotClient, holder: &str, host: &str) -> usize {
        let own: Vec<(u32, u64)> = self
            .slots
            .iter()
            .filter(|(_, k)| k.holder == holder && k.host == host)
            .map(|(n, k)| (*n, k.lease))
            .collect();
        for (index, lease) in &own {
            self.slots.remove(index);
            self.deletions += 1;
            if client.key == Some(*index) {
                client.key = None;
            }
            if client.lease == Some(*lease) {
                client.lease = None;
            }
            self.revoke(*lease);
        }
        own.len()
    }

    /// Whether `holder` on `host` holds a slot on a live lease right now.
    pub fn holds(&self, holder: &str, host: &str) -> bool {
        self.slots
            .values()
            .any(|k| k.holder == holder && k.host == host && self.alive(k.lease))
    }
}

// ---------------------------------------------------------------------------------------------
// Units

/// A restart job in systemd's queue.
#[derive(Debug, Clone)]
pub struct Job {
    pub done_at: Ms,
    /// Queued by the sidekick (not an operator).
    pub by_sidekick: bool,
}

/// One app unit on its host.
#[derive(Debug, Clone)]
pub struct Unit {
    pub state: ActiveState,
    /// The version in the drop-in file.
    pub file: String,
    /// The version systemd reports (loaded at the last `Reload()`).
    pub loaded: String,
    /// The version the running process is.
    pub process: String,
    pub job: Option<Job>,
    /// An operator ran `systemctl stop` and has not started it since.
    pub operator_stopped: bool,
    /// A stranding version broke the host: nothing starts until an operator fixes it.
    pub broken: bool,
    /// When the running process exits by itself ([`Behaviour::Late`]).
    pub dies_at: Option<Ms>,
}

impl Unit {
    pub fn new(version: &str) -> Unit {
        Unit {
            state: ActiveState::Active,
            file: version.into(),
            loaded: version.into(),
            process: version.into(),
            job: None,
            operator_stopped: false,
            broken: false,
            dies_at: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The update service

/// Nebraska's instance status (`types/instance.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Undefined,
    Granted,
    Error,
    Complete,
    Installed,
    Downloaded,
    Downloading,
    OnHold,
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub status: Status,
    pub last_update_version: Option<String>,
    pub in_progress: bool,
    pub granted_at: Ms,
    /// The open grant (index into [`Nebraska::grants`]).
    pub grant: Option<usize>,
}

/// One granted offer and how it ended.
#[derive(Debug, Clone)]
pub struct Grant {
    pub instance: usize,
    pub version: String,
    pub at: Ms,
    /// How it ended, once it did.
    pub ended: Option<String>,
}

/// What a check answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Update(String),
    NoUpdate,
    /// `error-*` statuses: on hold, rate limited, or locked by an unfinished grant.
    Refused(&'static str),
}

/// The update service with one group: its channel's version and the rollout policy (safe mode
/// off: `max_updates_per_period` per `period`, and as many unfinished at once).
#[derive(Debug, Clone)]
pub struct Nebraska {
    pub channel: String,
    pub max_per_period: usize,
    pub period: Ms,
    pub update_timeout: Ms,
    pub instances: Vec<Instance>,
    pub grants: Vec<Grant>,
}

fn older(a: &str, b: &str) -> bool {
    semver::Version::parse(a).ok() < semver::Version::parse(b).ok()
}

impl Nebraska {
    pub fn new(channel: &str, instances: usize, max_per_period: usize) -> Nebraska {
        let instance = Instance {
            status: Status::Undefined,
            last_update_version: None,
            in_progress: false,
            granted_at: 0,
            grant: None,
        };
        Nebraska {
            channel: channel.into(),
            max_per_period,
            period: 30_000,
            update_timeout: 600_000,
            instances: vec![instance; instances],
            grants: Vec::new(),
        }
    }

    fn end(&mut self, i: usize, how: String) {
        if let Some(g) = self.instances[i].grant.take() {
            self.grants[g].ended = Some(how);
        }
    }

    /// `GetUpdatePackage` for instance `i` reporting `version` (§5.4, §5.5).
    pub fn check(&mut self, i: usize, version: &str, now: Ms) -> Answer {
        use Status::*;
        let inst = &self.instances[i];
        if matches!(inst.status, Downloading | Downloaded | Installed) {
            return Answer::Refused("error-updateInProgressOnInstance");
        }
        if inst.status == Granted {
            match inst.last_update_version.clone() {
                Some(granted) if older(version, &granted) => return Answer::Update(granted),
                _ => {
                    self.instances[i].status = Complete;
                    self.instances[i].in_progress = false;
                    self.end(i, "completed by a check reporting the version".into());
                    return Answer::NoUpdate;
                }
            }
        }
        if !older(version, &self.channel) {
            return Answer::NoUpdate;
        }
        let recent = self
            .instances
            .iter()
            .filter(|x| x.last_update_version.is_some() && now < x.granted_at + self.period)
            .count();
        let in_progress = self
            .instances
            .iter()
            .filter(|x| x.in_progress && now <= x.granted_at + self.update_timeout)
            .count();
        if recent >= self.max_per_period {
            self.instances[i].status = OnHold;
            return Answer::Refused("error-maxUpdatesPerPeriodLimitReached");
        }
        if in_progress >= self.max_per_period {
            self.instances[i].status = OnHold;
            return Answer::Refused("error-maxConcurrentUpdatesLimitReached");
        }
        let inst = &mut self.instances[i];
        inst.status = Granted;
        inst.granted_at = now;
        inst.last_update_version = Some(self.channel.clone());
        inst.in_progress = true;
        inst.grant = Some(self.grants.len());
        self.grants.push(Grant {
            instance: i,
            version: self.channel.clone(),
            at: now,
            ended: None,
        });
        Answer::Update(self.channel.clone())
    }

    /// `RegisterEvent` (§5.7): dropped unless an update is in progress.
    pub fn event(&mut self, i: usize, event: Event) -> bool {
        use Status::*;
        if !self.instances[i].in_progress {
            return false;
        }
        let inst = &mut self.instances[i];
        match event {
            Event::PrepullStarted => inst.status = Downloading,
            Event::PrepullFinished => inst.status = Downloaded,
            Event::SwapStarted => inst.status = Installed,
            Event::UpdateComplete => {
                inst.status = Complete;
                inst.in_progress = false;
                self.end(i, "3/1".into());
            }
            Event::Failed { error_code } => {
                inst.status = Error;
                inst.in_progress = false;
                self.end(i, format!("3/0 errorcode {error_code}"));
            }
        }
        true
    }
}
