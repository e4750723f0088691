//! A process that takes one update slot and holds it until it is killed: the crash victim of the
//! slot tests (`tests/slots.rs`), which kill it with SIGKILL and watch the slot free itself.
//!
//! Usage: `slot_holder ENDPOINT GROUP HOLDER TTL_SECS [LEDGER]`; prints `ACQUIRED` once it holds
//! the slot. With `LEDGER`, the lease is recorded there as the daemon records it in its state
//! directory (`<state_dir>/<instance>/slot-leases`).

use std::num::NonZeroU32;
use std::time::Duration;

use anyhow::{Context, bail};
use sidekick::slot::ledger::LeaseLedger;
use sidekick::slot::{Acquisition, EtcdSlots, SlotHolder, SlotLock};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (endpoint, group, holder, ttl, ledger) = match args.as_slice() {
        [endpoint, group, holder, ttl] => (endpoint, group, holder, ttl, None),
        [endpoint, group, holder, ttl, ledger] => (endpoint, group, holder, ttl, Some(ledger)),
        _ => bail!("usage: slot_holder ENDPOINT GROUP HOLDER TTL_SECS [LEDGER]"),
    };
    let ttl = Duration::from_secs(ttl.parse().context("TTL_SECS must be a number")?);
    let client = etcd_client::Client::connect([endpoint.as_str()], None).await?;
    let who = SlotHolder {
        holder: holder.clone(),
        instance: format!("web-{holder}"),
    };
    let mut slots = EtcdSlots::new(client, group.as_str(), NonZeroU32::MIN, ttl, who);
    if let Some(path) = ledger {
        slots = slots.with_ledger(LeaseLedger::at(path));
    }
    match slots
        .acquire_within("2.0.0", Duration::from_secs(30))
        .await?
    {
        Acquisition::Acquired => println!("ACQUIRED"),
        other => bail!("could not take the slot: {other:?}"),
    }
    std::future::pending::<()>().await;
    Ok(())
}
