//! A process that takes one update slot and holds it until it is killed: the crash victim of the
//! slot tests (`tests/slots.rs`), which kill it with SIGKILL and watch the slot free itself.
//!
//! Usage: `slot_holder ENDPOINT GROUP HOLDER TTL_SECS`; prints `ACQUIRED` once it holds the slot.

use std::num::NonZeroU32;
use std::time::Duration;

use anyhow::{Context, bail};
use sidekick::slot::{Acquisition, EtcdSlots, SlotHolder, SlotLock};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, group, holder, ttl] = args.as_slice() else {
        bail!("usage: slot_holder ENDPOINT GROUP HOLDER TTL_SECS");
    };
    let ttl = Duration::from_secs(ttl.parse().context("TTL_SECS must be a number")?);
    let client = etcd_client::Client::connect([endpoint.as_str()], None).await?;
    let who = SlotHolder {
        holder: holder.clone(),
        instance: format!("web-{holder}"),
    };
    let slots = EtcdSlots::new(client, group.as_str(), NonZeroU32::MIN, ttl, who);
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
