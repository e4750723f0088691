//! [`RolloutSettings`]: what `sidekick rollout …` reads, validated alone like `sidekick slots`.

use super::super::rollout::{RolloutSettings, validate as policy};
use super::{ConfigError, Input, Origins, SlotsSettings, Validated, check::Check, swap};
use crate::etcd::EtcdOptions;

impl Validated for RolloutSettings {
    fn validate(input: Input, origins: &Origins) -> Result<RolloutSettings, ConfigError> {
        let rollout = policy(&input.rollout, origins)?;
        let swap = swap(&Check { origins }, input.swap.clone())?;
        Ok(RolloutSettings {
            slots: SlotsSettings::validate(input, origins)?,
            policy: rollout,
            swap_bounds: swap.drain + swap.start_timeout + swap.verify_timeout,
        })
    }

    fn etcd(&self) -> &EtcdOptions {
        &self.slots.etcd
    }
}
