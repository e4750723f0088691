//! A deterministic simulation of one update group (issue 16, "Proof"): 3–5 sidekicks with the
//! real machine ([`crate::agent::machine`]) against an in-memory world whose etcd, units and
//! update service follow the real systems' rules ([`world`]), under a random schedule of faults
//! drawn from a seed. After every step the group's invariants ([`Violation`]) are checked; a
//! failure prints its seed and a replayable trace (`SIM_SEED=<seed> cargo test --lib sim::
//! -- --nocapture`). Seeds that once failed stay in [`REGRESSIONS`].
//!
//! The sidekick itself is a model of the driver loop around the real machine ([`sidekick`]); the
//! time is virtual, so thousands of runs take seconds. Each seed also draws the group's rollout
//! policy (issue 17, [`rollout`]: canaries, bake, promotion, windows, min-healthy, monitor), which the
//! simulated sidekicks apply through the real pure gates; `SIM_NO_POLICY=1` replays a seed with
//! none, as the seeds of [`REGRESSIONS`] were found. A survey of which invariants break:
//! `SIM_SEEDS=5000 cargo test --lib agent::sim::tests::survey -- --ignored --nocapture`.

mod rollout;
mod sidekick;
mod world;

use std::collections::{BTreeMap, HashMap};

use rollout::{Account, Drawn, RolloutStore};

use sidekick::{Current, Disk, PROBE_EVERY, Proc, RPC};
use world::{Behaviour, Etcd, Ms, Nebraska, Unit};

use crate::agent::machine::state::{Observation, Phase};
use crate::agent::machine::swap::{Report, Stage, SwapObservation};
use crate::rollout::policy::Promote;
use crate::systemd::ActiveState;

/// The invariants of issue 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Violation {
    /// More than `max` instances with a restart job queued or the unit out because of a swap.
    OverMax,
    /// A unit restart job queued without a slot held at that moment.
    RestartWithoutSlot,
    /// A slot newly taken for a version after it failed on another instance (and that instance
    /// had the time to halt the group).
    SwapToFailedVersion,
    /// A granted offer that never ended in a terminal 3/x.
    GrantNotEnded,
    /// The sidekick started a unit an operator stopped.
    StartedStoppedUnit,
    /// The registration asked for while the unit is not active or its probe has not passed
    /// `rise` times in this run.
    RegisteredUnhealthy,
    /// Faults stopped, but a slot stays held or a journal left, or the group did not settle.
    LeftoverAtEnd,
    /// A version that works was halted or denylisted (blamed for a fault not its own).
    BlamedGoodVersion,
    /// A slot newly taken to start a swap to a version while more instances than `canary` are
    /// in or through a swap to it (not given up) and its wave is not through: `canary` instances
    /// passed min-healthy, then `canary_bake`, then `rollout promote` when `promote = "manual"`.
    CanaryOverrun,
    /// A slot newly taken to start a swap while no window is open (windows set).
    SlotOutsideWindow,
    /// A slot taken again for a swap under way (recovery's [`Stage::Reacquiring`]: to restart,
    /// verify or roll back a unit the swap already touched) held back by the rollout's slot gate
    /// (the failure budget, canaries, a window, a pause): the swap can neither finish nor roll
    /// back, and its grant stays open. Its runs' end-of-run consequences ([`Violation::LeftoverAtEnd`],
    /// [`Violation::GrantNotEnded`]) count with it.
    ReacquireHeldByPolicy,
    /// `sidekick rollout promote <version>` refused while instances wait for a slot for that
    /// version (`promote = "manual"`); its runs' end-of-run consequences count with it.
    PromotionRefused,
    /// A swap waits for a slot for a version whose failure budget is spent, a hold nothing
    /// lifts (`rollout resume` lifts a halt and a pause): its grant stays open for good; its
    /// runs' end-of-run consequences count with it.
    WaitsOnSpentBudget,
    /// A canary wave waits on a canary with no result that no swap can record any more (the
    /// release's write was lost, or the process that took the slot is gone): it waits for good;
    /// its runs' end-of-run consequences count with it.
    CanaryResultLost,
    /// A version whose unit failed inside `rollout.monitor` (after its release): the swap ended
    /// with the group never halted on it, or the instance's drop-in still on it.
    MonitorFailureMissed,
}

/// Invariants the code is known not to keep yet: their violations are counted and printed, not
/// failed on. Empty: every invariant holds on every seed (12,000 surveyed). The last three to
/// go, and the fixes (see the seeds in [`REGRESSIONS`]):
/// - `SwapToFailedVersion`: a grant taken while the unit could not take it, or given back
///   without a 3/x, was offered again by Nebraska after `slots resume` (Nebraska answers a
///   granted instance with the same package): no check is sent while the unit is not active
///   and registered, an offer that comes back unusable is given back (3/0
///   `NOT_SERVING`), and a recovered swap that finds the group halted on its own version
///   rolls back instead of restarting onto it or verifying it;
/// - `GrantNotEnded`: an offer to an unregistered instance left granted (the same fix), and a
///   second stop before recovery's 3/0 was sent (the 3/0 is now recorded with Releasing);
/// - `StartedStoppedUnit`: a unit stopped while the sidekick was down, or while the slot was
///   taken again, was restarted by recovery's rollback: systemd's `ActiveState` and `Job` read
///   at start (`inactive` with no job queued is a stop, not a restart job's transient) and the
///   unit's state as the slot is taken again put the previous drop-in back, no restart.
///
/// Issue 17's rollout policy, once in the simulation, found four more, each fixed:
/// - `ReacquireHeldByPolicy` (seed 84, no policy needed): recovery taking its slot back to roll
///   back from a version was held by that version's spent failure budget (or a wave, a window, a
///   pause) for good; a swap taking back the slot it held is no longer judged by the gate
///   (`AcquireSlot { again }`);
/// - `PromotionRefused` (seed 3): with `canary = 0` and manual promotion nothing recorded the
///   version before its first slot and `rollout promote` refused it; promote now records it;
///   and a swap waiting for an older version than the group's newest recorded rollout is
///   refused (`Hold::Superseded`, seed 63) instead of waiting on a promotion nobody gives;
/// - `WaitsOnSpentBudget` (seed 11): after `slots resume` a swap waited busy for good on the
///   budget its version spent; the budget is now answered as a halt (the grant given back);
/// - `CanaryResultLost` (seed 172): a canary result whose write failed, or whose process died,
///   was never written; a failed write is kept and sent again, and a serving instance settles
///   its own place with no result (passed on the version, failed when denylisted, else given
///   up), only a place another process claimed: by run id in the same boot of the same host,
///   else only when claimed before its process started (seed 77, and seed 447 once run ids
///   alone decided: a clone's is left alone).
///
/// Known, not held: seed 11376 (a 12,000-seed survey with drawn policies) breaks
/// `CanaryOverrun` the same way with and without run ids: a clone whose process restarted after
/// its twin on another host claimed a place gives that live place up, which time cannot tell
/// from an earlier process's place on a host the instance left.
///
/// Surveyed beyond `SEEDS` (6,000 seeds with drawn policies): seed 2393 (a unit that failed
/// after verification, before etcd confirmed its registration, left the swap waiting in
/// `Registering` for good, slot held: now judged as in min-healthy) and seed 5359 (the
/// invariant counted a clone's pass as a missed settle) are kept in [`POLICY_REGRESSIONS`].
///
/// `rollout.monitor`, once drawn (half the seeds with a policy, from a stream of its own so the
/// seeds above keep their draws), found three, each fixed and kept: seed 3 (the unit failed
/// while a slow 3/1 held the release: missed, as monitor began after it; now it halts at once
/// and rolls back after the release), seed 266 (an operator's stop during the release was taken
/// for a failure: only a state off `active` other than `inactive` is one), seed 5465
/// (`OverMax`: a sidekick killed in min-healthy came back after its slot lapsed, and another
/// instance's monitor rollback had taken it; recovery verified the new version with no slot:
/// it now takes its slot again first).
pub const NOT_YET_HELD: &[Violation] = &[];

/// Seeds that once found a violation, replayed first (whatever [`SEEDS`] becomes). On the main
/// before the issue-16 fixes: 3 (a recovered rollback restarts without a slot: defect 1), 7 (a
/// stranded instance never halts: defect 2), 181 (a unit stopped during verification is started
/// again and its good version halted: defect 4), 234 (a resumed Registering registers before
/// any probe: defect 6), 55 (a lost fence ends its grant with no 3/x: defect 7), 47 (a denylisted
/// offer is skipped with no 3/x: defect 8). On the first merge of the fixes: 18 (a resumed
/// verification waits for a unit change that never comes, then blames a good version), 550
/// (recovery's rollback starts a unit an operator stopped while the sidekick was down), 84 (a
/// grant from before a halt swaps to the failed version after `slots resume`), 299 (a crash
/// before Releasing's 3/x leaves the grant locked), 193 (a journal failure after 13/1 drops the
/// attempt with no 3/x). Emptying [`NOT_YET_HELD`]:
/// - 36: a grant taken while the unit was not serving is swapped to after `slots resume`;
/// - 544: an offer to an unhealthy, unregistered instance stays granted to the end;
/// - 508: a recovered verification goes on to a version the group halted on;
/// - 1502: a second crash before recovery's 3/0 leaves the grant open;
/// - 938: stopped while down after a failed restart: recovery's rollback (halt owed) starts it;
/// - 10238: stopped while the recovered swap waits for etcd: the rollback starts it;
/// - 2108: a recovered verification of a unit already running the version is no new swap.
pub const REGRESSIONS: &[u64] = &[
    3, 7, 181, 234, 55, 47, 18, 550, 84, 299, 193, 36, 544, 508, 1502, 938, 10238, 2108,
];

/// Seeds that once found a violation of the rollout policy's invariants (issue 17) beyond
/// [`SEEDS`], replayed with their drawn policies (the ones below it run anyway).
pub const POLICY_REGRESSIONS: &[u64] = &[2393, 5359, 5465];

/// Seeds run by `cargo test`.
pub const SEEDS: u64 = 2_000;

/// A failed version's halt may take this long to land before a new slot for it is a violation.
const HALT_GRACE: Ms = 5_000;

#[derive(Debug, Clone, Default)]
pub(super) struct Faults {
    pub journal_fails: u32,
    pub crash_after_journal: Option<u32>,
    pub halt_fails: bool,
    pub release_fails: bool,
    pub slow_events_until: Ms,
}

/// One instance: its host's unit and files, and its sidekick process when it runs.
#[derive(Debug, Clone)]
pub(super) struct Inst {
    pub holder: String,
    pub host: String,
    pub unit: Unit,
    pub disk: Disk,
    pub proc: Option<Proc>,
    pub gens: u32,
    pub faults: Faults,
    pub restart_at: Option<Ms>,
    pub operator_start_at: Option<Ms>,
    pub cut_until: Ms,
    /// Cut from etcd until `cut_until`, not yet healed.
    pub is_cut: bool,
    pub last_cut_end: Ms,
}

#[derive(Debug, Clone)]
enum Fault {
    Crash {
        i: usize,
        down: Ms,
    },
    Sigterm {
        i: usize,
        down: Ms,
    },
    LeaseLoss(usize),
    Cut {
        i: usize,
        span: Ms,
    },
    EtcdDown {
        span: Ms,
    },
    HaltFailsOnce(usize),
    ReleaseFailsOnce(usize),
    JournalFails {
        i: usize,
        n: u32,
    },
    CrashAfterJournal {
        i: usize,
        n: u32,
    },
    OperatorStop {
        i: usize,
        start_after: Option<Ms>,
    },
    OperatorRestart(usize),
    SlowEvents {
        i: usize,
        span: Ms,
    },
    Publish {
        version: String,
        behaviour: Behaviour,
    },
    /// `sidekick rollout promote` (the newest version).
    Promote,
}

#[derive(Debug, Clone, Copy)]
enum Item {
    Fault,
    Round,
    Start(usize),
    OperatorStart(usize),
    Heal(usize),
    Job(usize),
    Pending(usize),
    Paused(usize),
    Call(usize),
    Sync(usize),
    Probe(usize),
    Verify(usize),
    PassOut(usize),
    PassBack(usize),
    Retry(usize),
    MinHealthy(usize),
    Monitor(usize),
    Die(usize),
}

/// The simulated group.
pub struct Sim {
    now: Ms,
    rng: fastrand::Rng,
    etcd: Etcd,
    nebraska: Nebraska,
    inst: Vec<Inst>,
    behaviours: HashMap<String, Behaviour>,
    faults: Vec<(Ms, Fault)>,
    quiet_at: Ms,
    end_at: Ms,
    next_round: Ms,
    settled_rounds: u32,
    next_major: u64,
    tracing: bool,
    trace: Vec<String>,
    violations: Vec<(Violation, Ms, String)>,
    /// Versions that failed (halt-worthy), when, where, and in which process.
    failed: BTreeMap<String, (Ms, usize, u32)>,
    steps: u64,
    /// The group's rollout in etcd.
    rollout: RolloutStore,
    /// The seed's rollout policy.
    drawn: Drawn,
    /// The sim's own account of the policy.
    account: Account,
    /// Versions a sidekick halted the group on (the marker set).
    halted_versions: std::collections::BTreeSet<String>,
    /// Per instance, the version whose unit failed while its swap watched it in monitor, and
    /// when: checked once the swap is over ([`Violation::MonitorFailureMissed`]).
    monitor_failures: BTreeMap<usize, (String, Ms)>,
}

fn behaviour(rng: &mut fastrand::Rng, bad: bool) -> Behaviour {
    match (bad, rng.u8(0..4)) {
        (true, 0) => Behaviour::Strand,
        (true, 1) => Behaviour::Unhealthy,
        _ => Behaviour::Good,
    }
}

/// A version that is not [`Behaviour::Good`] may fail late instead, when min-healthy is
/// modelled: it dies inside verification or min-healthy (`after` its start).
fn late(prng: &mut fastrand::Rng, drawn: &Drawn, b: Behaviour, bad: bool) -> Behaviour {
    let min_healthy = drawn.policy.min_healthy.as_millis() as Ms;
    match (b, bad, min_healthy > 0 && prng.bool()) {
        (Behaviour::Good, true, true) => Behaviour::Late {
            after: prng.u64(500..min_healthy + 1_000),
        },
        _ => b,
    }
}

/// A version that fails may die inside monitor instead, when the seed's policy watches (its
/// own stream, so the other draws of a seed stay as they were): after its start, past
/// verification and min-healthy, within `monitor`.
fn late_in_monitor(mrng: &mut fastrand::Rng, drawn: &Drawn, b: Behaviour, bad: bool) -> Behaviour {
    let min_healthy = drawn.policy.min_healthy.as_millis() as Ms;
    let monitor = drawn.policy.monitor.as_millis() as Ms;
    match (bad, monitor > 0 && mrng.u8(0..3) != 0) {
        (true, true) => Behaviour::Late {
            after: mrng.u64(min_healthy + 2_000..min_healthy + monitor + 5_000),
        },
        _ => b,
    }
}

impl Sim {
    /// The group, its fault schedule and its rollout policy for `seed`; with `policy` false, no
    /// rollout policy (`min_healthy = 0s`, no canary, no window): the runs as before issue 17.
    /// The policy comes from its own random stream, so the faults of a seed are the same
    /// either way.
    pub fn new(seed: u64, policy: bool) -> Sim {
        let mut prng = fastrand::Rng::with_seed(seed ^ 0x005e_ed0f_9011_c1e5);
        let with_policy = policy && prng.u8(0..5) != 0;
        let mut drawn = match with_policy {
            true => rollout::draw_policy(&mut prng),
            false => Drawn::none(),
        };
        // `monitor` from a stream of its own: the seeds found before it keep their draws.
        let mut mrng = fastrand::Rng::with_seed(seed ^ 0x0071_0a17_0e5e_ed17);
        if with_policy && mrng.bool() {
            drawn.policy.monitor = std::time::Duration::from_millis(mrng.u64(2_000..40_000));
        }
        let mut rng = fastrand::Rng::with_seed(seed);
        let n = rng.usize(3..=5);
        let max = rng.u32(1..=2);
        let ttl = 10_000;
        let clone = rng.u8(0..5) == 0;
        let inst = (0..n)
            .map(|i| {
                let holder = match (clone, i) {
                    (true, i) if i == n - 1 => "holder-0".to_string(),
                    _ => format!("holder-{i}"),
                };
                Inst {
                    holder,
                    host: format!("host-{i}"),
                    unit: Unit::new("1.0.0"),
                    disk: Disk::default(),
                    proc: None,
                    gens: 0,
                    faults: Faults::default(),
                    restart_at: Some(rng.u64(0..2_000)),
                    operator_start_at: None,
                    cut_until: 0,
                    is_cut: false,
                    last_cut_end: 0,
                }
            })
            .collect();
        let mut faults = Vec::new();
        let manual = drawn.policy.promote == Promote::Manual;
        let b2 = late(&mut prng, &drawn, behaviour(&mut rng, true), true);
        let b2 = late_in_monitor(&mut mrng, &drawn, b2, true);
        let at = rng.u64(0..20_000);
        faults.push((
            at,
            Fault::Publish {
                version: "2.0.0".into(),
                behaviour: b2,
            },
        ));
        if manual {
            faults.push((at + prng.u64(5_000..120_000), Fault::Promote));
        }
        if rng.bool() {
            let bad = rng.bool();
            let b3 = late(&mut prng, &drawn, behaviour(&mut rng, bad), bad);
            let b3 = late_in_monitor(&mut mrng, &drawn, b3, bad);
            let at = rng.u64(60_000..150_000);
            faults.push((
                at,
                Fault::Publish {
                    version: "3.0.0".into(),
                    behaviour: b3,
                },
            ));
            if manual {
                faults.push((at + prng.u64(5_000..80_000), Fault::Promote));
            }
        }
        let quiet_at = 240_000;
        for _ in 0..rng.usize(2..=10) {
            let at = rng.u64(0..200_000);
            let i = rng.usize(0..n);
            let down = match rng.bool() {
                true => rng.u64(500..ttl / 2),
                false => rng.u64(ttl + 1_000..3 * ttl),
            };
            let fault = match rng.u8(0..13) {
                0 => Fault::Crash { i, down },
                1 => Fault::Sigterm { i, down },
                2 => Fault::LeaseLoss(i),
                3 => Fault::Cut {
                    i,
                    span: rng.u64(1_000..2 * ttl),
                },
                4 => Fault::EtcdDown {
                    span: rng.u64(1_000..2 * ttl),
                },
                5 => Fault::HaltFailsOnce(i),
                6 => Fault::ReleaseFailsOnce(i),
                7 => Fault::JournalFails {
                    i,
                    n: rng.u32(1..=3),
                },
                8 | 9 => Fault::CrashAfterJournal {
                    i,
                    n: rng.u32(1..=12),
                },
                10 => Fault::OperatorStop {
                    i,
                    start_after: rng.bool().then(|| rng.u64(1_000..30_000)),
                },
                11 => Fault::OperatorRestart(i),
                _ => Fault::SlowEvents {
                    i,
                    span: rng.u64(5_000..60_000),
                },
            };
            faults.push((at, fault));
        }
        faults.sort_by_key(|(at, _)| *at);
        let rollout = RolloutStore {
            stored_policy: drawn.stored.then(|| drawn.policy.clone()),
            ..RolloutStore::default()
        };
        let mut behaviours = HashMap::new();
        behaviours.insert("1.0.0".to_string(), Behaviour::Good);
        Sim {
            now: 0,
            rng,
            etcd: Etcd::new(ttl, max),
            nebraska: Nebraska::new("1.0.0", n, max as usize),
            inst,
            behaviours,
            faults,
            quiet_at,
            end_at: quiet_at + 1_200_000,
            next_round: quiet_at,
            settled_rounds: 0,
            next_major: 4,
            tracing: false,
            trace: Vec::new(),
            violations: Vec::new(),
            failed: BTreeMap::new(),
            steps: 0,
            rollout,
            drawn,
            account: Account::default(),
            halted_versions: Default::default(),
            monitor_failures: BTreeMap::new(),
        }
    }

    fn cut(&self, i: usize) -> bool {
        self.now < self.inst[i].cut_until
    }

    /// Runs to the end; the violations found.
    pub fn run(mut self) -> (Vec<(Violation, Ms, String)>, Vec<String>) {
        while let Some((at, item)) = self.next_item() {
            if at > self.end_at {
                break;
            }
            self.now = self.now.max(at);
            self.steps += 1;
            self.fire(item);
            self.check();
            if self.settled_rounds >= 2 || self.steps > 2_000_000 {
                break;
            }
            // A run stuck on a known violation stays stuck: its end is not waited for.
            let stuck = self
                .violations
                .iter()
                .any(|(v, ..)| NOT_YET_HELD.contains(v));
            if stuck && self.now >= self.quiet_at + 60_000 {
                break;
            }
        }
        self.finish();
        (self.violations, self.trace)
    }

    fn next_item(&self) -> Option<(Ms, Item)> {
        let mut best: Option<(Ms, Item)> = None;
        let mut offer = |at: Ms, item: Item| {
            if best.is_none_or(|(t, _)| at < t) {
                best = Some((at, item));
            }
        };
        let now = self.now;
        for (i, inst) in self.inst.iter().enumerate() {
            let Some(p) = &inst.proc else {
                if let Some(at) = inst.restart_at {
                    offer(at, Item::Start(i));
                }
                continue;
            };
            if !p.pending.is_empty() {
                offer(now, Item::Pending(i));
            }
        }
        if let Some((at, _)) = self.faults.first() {
            offer(*at, Item::Fault);
        }
        if now >= self.quiet_at || self.faults.is_empty() {
            offer(self.next_round.max(self.quiet_at), Item::Round);
        }
        for (i, inst) in self.inst.iter().enumerate() {
            if let Some(at) = inst.operator_start_at {
                offer(at, Item::OperatorStart(i));
            }
            if inst.is_cut {
                offer(inst.cut_until, Item::Heal(i));
            }
            if let Some(job) = &inst.unit.job {
                offer(job.done_at, Item::Job(i));
            }
            if let Some(at) = inst.unit.dies_at {
                offer(at, Item::Die(i));
            }
            let Some(p) = &inst.proc else { continue };
            match &p.current {
                Some(Current::Pause {
                    until,
                    wake,
                    seen,
                    seen_rollout,
                    ..
                }) => {
                    let changed =
                        *seen != self.etcd.deletions || *seen_rollout != self.rollout.revision;
                    let woken = *wake && changed;
                    offer(if woken { now } else { *until }, Item::Paused(i));
                }
                Some(Current::Call { until, .. }) => offer(*until, Item::Call(i)),
                _ => {}
            }
            if let Some(at) = p.sync_at {
                offer(at, Item::Sync(i));
            }
            if p.agent.probing() {
                offer(p.next_probe, Item::Probe(i));
            }
            if let Some(at) = p.verify_at {
                offer(at, Item::Verify(i));
            }
            if let Some(at) = p.min_healthy_at {
                offer(at, Item::MinHealthy(i));
            }
            if let Some(at) = p.monitor_at {
                offer(at, Item::Monitor(i));
            }
            if let Some(at) = p.passing {
                offer(at, Item::PassBack(i));
            } else if let (Some(at), true) = (p.next_pass, Sim::can_pass(p)) {
                offer(at, Item::PassOut(i));
            }
            if let Some((_, at)) = &p.unrecorded {
                offer(*at, Item::Retry(i));
            }
        }
        best
    }

    fn fire(&mut self, item: Item) {
        let now = self.now;
        match item {
            Item::Fault => {
                let (_, fault) = self.faults.remove(0);
                self.log(usize::MAX, || format!("fault {fault:?}"));
                self.fault(fault);
            }
            Item::Round => self.round(),
            Item::Start(i) => {
                self.inst[i].restart_at = None;
                self.start(i);
            }
            Item::OperatorStart(i) => {
                self.inst[i].operator_start_at = None;
                self.operator_start(i);
            }
            Item::Heal(i) => self.heal(i),
            Item::Job(i) => self.job_done(i),
            Item::Pending(i) => {
                let p = self.inst[i].proc.as_mut().unwrap();
                let observation = p.pending.pop_front().unwrap();
                let _ = self.turn(i, observation);
            }
            Item::Paused(i) => self.paused(i),
            Item::Call(i) => {
                let p = self.inst[i].proc.as_mut().unwrap();
                if let Some(Current::Call { action, .. }) = p.current.clone() {
                    self.finish_call(i, action);
                }
            }
            Item::Sync(i) => self.synced(i),
            Item::Probe(i) => {
                let unit = &self.inst[i].unit;
                let passed = unit.state.is_active()
                    && !unit.broken
                    && self.behaviour(&unit.process).serves();
                let p = self.inst[i].proc.as_mut().unwrap();
                p.next_probe = now + PROBE_EVERY;
                let _ = self.turn(i, Observation::Probe { passed });
            }
            Item::Verify(i) => {
                self.inst[i].proc.as_mut().unwrap().verify_at = None;
                let _ = self.turn(i, Observation::Swap(SwapObservation::VerifyDeadline));
            }
            Item::PassOut(i) => {
                let p = self.inst[i].proc.as_mut().unwrap();
                p.passing = Some(now + 50);
                // `driver/pass.rs`: the pass checks only when the agent would take an offer.
                p.pass_serving = p.agent.takes_offer();
            }
            Item::PassBack(i) => self.pass_done(i),
            Item::Retry(i) => {
                let p = self.inst[i].proc.as_mut().unwrap();
                if let Some((held, _)) = p.unrecorded.take() {
                    let _ = self.act(i, held);
                }
            }
            Item::MinHealthy(i) => {
                let p = self.inst[i].proc.as_mut().unwrap();
                p.min_healthy_at = None;
                let monitor = !p.rollout.monitor().is_zero();
                let elapsed = Observation::Swap(SwapObservation::MinHealthyElapsed { monitor });
                let _ = self.turn(i, elapsed);
            }
            Item::Monitor(i) => {
                self.inst[i].proc.as_mut().unwrap().monitor_at = None;
                let _ = self.turn(i, Observation::Swap(SwapObservation::MonitorElapsed));
            }
            Item::Die(i) => self.process_died(i),
        }
    }

    fn fault(&mut self, fault: Fault) {
        let now = self.now;
        match fault {
            Fault::Crash { i, down } => {
                if self.inst[i].proc.is_some() {
                    self.crash(i);
                    self.inst[i].restart_at = Some(now + down);
                }
            }
            Fault::Sigterm { i, down } => {
                if self.inst[i].proc.is_some() {
                    self.sigterm(i);
                    self.inst[i].restart_at = Some(now + down);
                }
            }
            Fault::LeaseLoss(i) => {
                for lease in self.etcd.leases_of(i) {
                    self.etcd.revoke(lease);
                }
            }
            Fault::Cut { i, span } => self.cut_off(i, span),
            Fault::EtcdDown { span } => {
                for i in 0..self.inst.len() {
                    self.cut_off(i, span);
                }
            }
            Fault::HaltFailsOnce(i) => self.inst[i].faults.halt_fails = true,
            Fault::ReleaseFailsOnce(i) => self.inst[i].faults.release_fails = true,
            Fault::JournalFails { i, n } => self.inst[i].faults.journal_fails = n,
            Fault::CrashAfterJournal { i, n } => {
                self.inst[i].faults.crash_after_journal = Some(n);
                if self.inst[i].restart_at.is_none() {
                    let down = self.rng.u64(500..30_000);
                    self.inst[i].restart_at = Some(now + down);
                }
            }
            Fault::OperatorStop { i, start_after } => {
                self.operator_stop(i);
                self.inst[i].operator_start_at = start_after.map(|d| now + d);
            }
            Fault::OperatorRestart(i) => {
                if !self.inst[i].unit.operator_stopped && self.inst[i].unit.job.is_none() {
                    self.operator_stop(i);
                    self.operator_start(i);
                }
            }
            Fault::SlowEvents { i, span } => self.inst[i].faults.slow_events_until = now + span,
            Fault::Publish { version, behaviour } => {
                self.behaviours.insert(version.clone(), behaviour);
                self.nebraska.channel = version;
            }
            Fault::Promote => {
                self.promote();
            }
        }
    }

    fn cut_off(&mut self, i: usize, span: Ms) {
        let now = self.now;
        if !self.inst[i].is_cut {
            self.etcd.stop_keeping(i, now);
        }
        self.inst[i].is_cut = true;
        self.inst[i].cut_until = self.inst[i].cut_until.max(now + span);
        if let Some(p) = self.inst[i].proc.as_mut() {
            p.sync_at = None;
        }
    }

    fn heal(&mut self, i: usize) {
        self.inst[i].is_cut = false;
        self.inst[i].last_cut_end = self.now;
        self.etcd.purge(self.now);
        if let Some(p) = self.inst[i].proc.as_mut() {
            self.etcd.resume_keeping((i, p.life));
            if p.wanted != p.published {
                p.sync_at = Some(self.now + RPC);
            }
        }
    }

    /// `systemctl stop`: a queued restart job is canceled.
    fn operator_stop(&mut self, i: usize) {
        self.inst[i].unit.operator_stopped = true;
        let job = self.inst[i].unit.job.take();
        self.set_unit(i, ActiveState::Inactive);
        if let Some(job) = job {
            self.job_result(i, job.by_sidekick, Err("job canceled".into()));
        }
    }

    fn operator_start(&mut self, i: usize) {
        let unit = &mut self.inst[i].unit;
        if unit.job.is_some() {
            return;
        }
        unit.operator_stopped = false;
        unit.loaded = unit.file.clone();
        let (broken, loaded) = (unit.broken, unit.loaded.clone());
        let starts = !broken && self.behaviour(&loaded) != Behaviour::Strand;
        match starts {
            true => {
                self.inst[i].unit.process = loaded;
                self.set_unit(i, ActiveState::Active);
                self.started_process(i);
            }
            false => self.set_unit(i, ActiveState::Failed),
        }
    }

    /// Faults are over: the operator fixes what the runbook says, until the group settles.
    fn round(&mut self) {
        let now = self.now;
        self.next_round = now + 20_000;
        if !self.faults.is_empty() {
            return;
        }
        let mut settled = true;
        for i in 0..self.inst.len() {
            self.inst[i].faults = Faults::default();
            if self.inst[i].is_cut {
                self.inst[i].cut_until = now;
                self.heal(i);
            }
            if self.inst[i].unit.broken {
                self.inst[i].unit.broken = false;
                settled = false;
            }
            let unit = &self.inst[i].unit;
            if unit.job.is_none() && !unit.state.is_active() {
                self.operator_start(i);
                settled = false;
            }
            let stranded = matches!(
                self.inst[i].proc.as_ref().and_then(|p| p.stage()),
                Some(Stage::Stranded { .. })
            );
            if stranded {
                self.sigterm(i);
                self.inst[i].restart_at = Some(now + 1_000);
            }
            if self.inst[i].proc.is_none() && self.inst[i].restart_at.is_none() {
                self.inst[i].restart_at = Some(now + 1_000);
            }
            let inst = &self.inst[i];
            let serving = inst.proc.as_ref().is_some_and(|p| {
                p.agent.phase == Phase::Serving && p.pending.is_empty() && !p.slow
            });
            settled &= serving && inst.disk.journal.is_none() && inst.unit.job.is_none();
        }
        if self.drawn.policy.promote == Promote::Manual && self.promote() {
            settled = false;
        }
        if self.etcd.halt.is_some() {
            // The runbook: publish a fixed version, then `slots resume`.
            let version = format!("{}.0.0", self.next_major);
            self.next_major += 1;
            self.behaviours.insert(version.clone(), Behaviour::Good);
            self.nebraska.channel = version;
            self.etcd.halt = None;
            settled = false;
        }
        self.etcd.purge(now);
        settled &= self.etcd.slots.is_empty();
        settled &= self.nebraska.grants.iter().all(|g| g.ended.is_some());
        self.settled_rounds = if settled { self.settled_rounds + 1 } else { 0 };
    }

    // ---- invariants -------------------------------------------------------------------------

    /// After every step.
    fn check(&mut self) {
        let now = self.now;
        self.etcd.purge(now);
        let mut busy = Vec::new();
        for i in 0..self.inst.len() {
            let holds = self.etcd.holds(&self.inst[i].holder, &self.inst[i].host);
            let life = self.inst[i].proc.as_ref().map(|p| p.life);
            let unit_active = self.inst[i].unit.state.is_active();
            let job = self.inst[i]
                .unit
                .job
                .as_ref()
                .is_some_and(|j| j.by_sidekick);
            let Some(p) = self.inst[i].proc.as_mut() else {
                if job {
                    busy.push(i);
                }
                continue;
            };
            let stage = match &p.agent.phase {
                Phase::Updating(swap) => Some(swap.stage.clone()),
                _ => None,
            };
            let swapping_unit = matches!(
                stage,
                Some(
                    Stage::Restarting
                        | Stage::Verifying { .. }
                        | Stage::RollingBack { .. }
                        | Stage::VerifyingOld { .. }
                        | Stage::Stranded { .. }
                )
            );
            if stage.is_none() {
                p.slot_at_restart = false;
                p.lost_after_fence = false;
            }
            if swapping_unit && p.slot_at_restart && !holds {
                p.lost_after_fence = true;
            }
            if (swapping_unit && !p.lost_after_fence) || job {
                busy.push(i);
            }
            // A deregistration decided but held behind a failed journal write (`act.rs` fails
            // closed; seed 694: the unit dies in min-healthy as the journal fails) is asked for.
            let held_deregister = p.unrecorded.as_ref().is_some_and(|(held, _)| {
                held.iter()
                    .any(|a| matches!(a, crate::agent::machine::state::Action::Deregister))
            });
            let caught_up = p.pending.is_empty() && p.recovered.is_none() && !held_deregister;
            let unhealthy = caught_up && p.wanted && !(unit_active && p.healthy);
            let passes = p.passes;
            if unhealthy && !self.seen(Violation::RegisteredUnhealthy, i) {
                let detail = format!(
                    "#{i} asks to be registered: unit {}, probe passes {passes} in this run",
                    self.inst[i].unit.state
                );
                self.violation(Violation::RegisteredUnhealthy, detail);
            }
            let Some(p) = self.inst[i].proc.as_mut() else {
                continue;
            };
            let failing = match &stage {
                Some(Stage::RollingBack { failure } | Stage::Stranded { failure, .. })
                | Some(Stage::VerifyingOld { failure, .. }) => failure.halt,
                // A monitor failure is known from the moment its rollback waits for the slot.
                Some(Stage::Reacquiring { resume, .. }) => matches!(
                    resume.as_ref(),
                    Stage::RollingBack { failure } if failure.halt
                        && failure.code == crate::omaha::error_code::MONITOR_FAILED
                ),
                _ => false,
            };
            if failing
                && let Phase::Updating(swap) = &p.agent.phase
                && let Some(life) = life
            {
                let version = swap.plan.new.version.clone();
                let entry = self.failed.entry(version).or_insert((now, i, life));
                if entry.1 == i && entry.2 != life {
                    *entry = (now, i, life);
                }
            }
        }
        for i in 0..self.inst.len() {
            self.account_step(i);
            self.check_monitor_failure(i);
        }
        if busy.len() > self.etcd.max as usize && !self.seen(Violation::OverMax, usize::MAX) {
            let detail = format!("instances {busy:?} swapping at once, max {}", self.etcd.max);
            self.violation(Violation::OverMax, detail);
        }
    }

    fn seen(&self, v: Violation, _i: usize) -> bool {
        self.violations.iter().any(|(w, ..)| *w == v)
    }

    /// A restart job is queued by the sidekick of `i`.
    fn restart_started(&mut self, i: usize) {
        self.etcd.purge(self.now);
        let holds = self.etcd.holds(&self.inst[i].holder, &self.inst[i].host);
        // A slot lost after this swap's fenced restart (the lease lapsed while the unit was
        // restarted or verified): the swap goes on to its end, as the rule allows (logged and
        // counted, not fenced again). Any other restart needs the slot now.
        let mut continuing = false;
        if let Some(p) = self.inst[i].proc.as_mut() {
            continuing = p.slot_at_restart && !holds;
            p.lost_after_fence = continuing;
            p.slot_at_restart |= holds;
        }
        if continuing {
            self.log(i, || {
                "restart after the slot was lost past the fence".into()
            });
        } else if !holds {
            let detail = format!("#{i} restarts its unit holding no slot");
            self.violation(Violation::RestartWithoutSlot, detail);
        }
        if self.inst[i].unit.operator_stopped {
            let detail = format!("#{i} restarts a unit an operator stopped");
            self.violation(Violation::StartedStoppedUnit, detail);
        }
    }

    /// `i` took a slot it did not hold for `version`. A slot taken again to roll back from it
    /// (recovery's [`Stage::Reacquiring`] resuming a rollback) moves away from the version, not
    /// to it; one taken again to verify a unit that already runs it (its swap started before
    /// the failure, and it restarts nothing onto it) starts no swap either.
    fn newly_acquired(&mut self, i: usize, version: &str) {
        let not_a_start = matches!(
            self.inst[i].proc.as_ref().and_then(|p| p.stage()),
            Some(Stage::Reacquiring { resume, .. }) if matches!(
                **resume,
                Stage::RollingBack { .. }
                    | Stage::VerifyingOld { .. }
                    | Stage::Stranded { .. }
                    | Stage::Verifying { .. }
            )
        );
        if not_a_start {
            return;
        }
        // The rollout's gate judged a swap when it first took its slot; taking it back (a
        // recovered swap resuming toward the version) is no new start to it (README: a swap
        // that holds a slot always finishes, even past a window's close).
        let retaken = matches!(
            self.inst[i].proc.as_ref().and_then(|p| p.stage()),
            Some(Stage::Reacquiring { .. })
        );
        if !retaken {
            self.policy_take(i, version);
        }
        let Some(&(at, j, life)) = self.failed.get(version) else {
            return;
        };
        let failing_ran = self.inst[j].proc.as_ref().is_some_and(|p| p.life == life)
            && !self.cut(j)
            && self.inst[j].last_cut_end <= at;
        if j != i && self.now > at + HALT_GRACE && failing_ran {
            let stage = self.inst[i]
                .proc
                .as_ref()
                .map(|p| format!("{:?}", p.stage()));
            let detail = format!(
                "#{i} took a slot for {version}, which failed on #{j} at {at} (halt not set), in {stage:?}"
            );
            self.violation(Violation::SwapToFailedVersion, detail);
        }
    }

    /// The unit of `i` failed running `version`: a failure inside monitor when its swap to that
    /// version released after 3/1 and watches it (or is about to, its release under way).
    pub(super) fn note_monitor_failure(&mut self, i: usize, version: &str) {
        let Some(Phase::Updating(swap)) = self.inst[i].proc.as_ref().map(|p| &p.agent.phase) else {
            return;
        };
        let watched = match swap.stage {
            Stage::Monitoring { .. } => true,
            Stage::Releasing => swap.monitor && !swap.away && swap.report == Some(Report::Complete),
            _ => false,
        };
        if watched && swap.plan.new.version == version {
            self.log(i, || format!("{version} failed inside monitor"));
            self.monitor_failures
                .entry(i)
                .or_insert((version.to_string(), self.now));
        }
    }

    /// Once the swap of `i` is over (serving, no journal), a failure inside monitor must have
    /// halted the group on its version and left the drop-in off it (rolled back, or put back
    /// for an operator's stop).
    fn check_monitor_failure(&mut self, i: usize) {
        let over = self.inst[i].disk.journal.is_none()
            && self.inst[i]
                .proc
                .as_ref()
                .is_some_and(|p| p.agent.phase == Phase::Serving && p.pending.is_empty());
        if !over {
            return;
        }
        let Some((version, at)) = self.monitor_failures.remove(&i) else {
            return;
        };
        let halted = self.halted_versions.contains(&version);
        let file = self.inst[i].unit.file.clone();
        if !halted || file == version {
            let detail = format!(
                "#{i}'s {version} failed inside monitor at {at}; swap over with the group halted \
                 on it: {halted}, drop-in on {file}"
            );
            self.violation(Violation::MonitorFailureMissed, detail);
        }
    }

    /// `i` halted or denylisted `version`.
    fn blame(&mut self, i: usize, version: &str, what: &str) {
        if self.behaviour(version) == Behaviour::Good {
            let detail = format!("#{i} {what} {version}, which works");
            self.violation(Violation::BlamedGoodVersion, detail);
        }
    }

    /// Registration asked for: checked by [`Sim::check`] once the sidekick caught up.
    fn check_registration(&mut self, _i: usize) {}

    /// Once faults stopped and the group had time to settle.
    fn finish(&mut self) {
        self.etcd.purge(self.now);
        for (i, inst) in self.inst.iter().enumerate() {
            if let Some(journal) = &inst.disk.journal {
                let detail = format!("#{i} left a journal at {:?}", journal.stage);
                self.violations
                    .push((Violation::LeftoverAtEnd, self.now, detail));
            }
            if !inst
                .proc
                .as_ref()
                .is_some_and(|p| p.agent.phase == Phase::Serving)
            {
                let stage = inst.proc.as_ref().map(|p| format!("{:?}", p.stage()));
                let detail = format!("#{i} not serving at the end: {stage:?}");
                self.violations
                    .push((Violation::LeftoverAtEnd, self.now, detail));
            }
        }
        for (n, key) in &self.etcd.slots {
            let detail = format!("slot {n} still held at the end: {key:?}");
            self.violations
                .push((Violation::LeftoverAtEnd, self.now, detail));
        }
        for g in &self.nebraska.grants {
            if g.ended.is_none() {
                let detail = format!(
                    "grant of {} to #{} at {} never ended ({:?})",
                    g.version, g.instance, g.at, self.nebraska.instances[g.instance].status
                );
                self.violations
                    .push((Violation::GrantNotEnded, self.now, detail));
            }
        }
    }
}

/// Runs `seed` with its drawn rollout policy, or (`policy` false) with none; with `tracing`,
/// keeps the trace.
pub fn simulate_with(
    seed: u64,
    tracing: bool,
    policy: bool,
) -> (Vec<(Violation, Ms, String)>, Vec<String>) {
    let mut sim = Sim::new(seed, policy);
    sim.tracing = tracing;
    sim.run()
}

#[cfg(test)]
mod tests;
