//! The group's rollout policy and state (issue 17): the policy (`[rollout]`, or the one stored at
//! `/sidekick/policy/<group>`, which is authoritative), update windows, the per-version state at
//! `/sidekick/rollouts/<group>/<version>` and the pause at `/sidekick/paused/<group>`. Every
//! decision is a pure function of that state ([`decide`]); the instances themselves write the
//! state with compare-and-swap ([`store`]), so there is no leader and nothing to keep alive.

pub mod agent;
pub mod decide;
pub mod gate;
pub mod policy;
pub mod state;
pub mod store;
pub mod window;

pub use policy::{PolicyError, PolicyText, Promote, RolloutPolicy, Window, ZoneName};
