//! `sidekick status`: what etcd says about the fleet (which versions run where, each instance's
//! phase and last check), registrations (under the configured layout), update slots and halts,
//! and what the sidekicks on this host say over their control sockets ([`local`]), as aligned
//! tables or JSON.
//!
//! The report is a list of sections, each gathered on its own and rendered as one table; a new
//! section is a field in [`StatusReport`], a gather step in [`gather`] and one entry in
//! [`StatusReport::sections`].

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use etcd_client::{Client, GetOptions};
use serde::Serialize;

use crate::config::{ConfigSources, StatusSettings};
use crate::registry::KeyLayout;
use crate::registry::duplicate::{self, DuplicateRecord};
use crate::registry::record::{self, InstanceRecord};
use crate::slot::etcd::SLOT_PREFIX;
use crate::slot::{SlotError, SlotValue, halt};

pub mod local;
mod table;
pub use table::{Section, printable};

/// Everything `status` shows.
#[derive(Debug, Default, Serialize)]
pub struct StatusReport {
    /// The instances' own records (the fleet view), by group and instance.
    pub instances: Vec<InstanceStatus>,
    pub registrations: Vec<RegistrationStatus>,
    pub slot_groups: Vec<SlotGroupStatus>,
    /// Limits stored with `sidekick slots set-max`, by group.
    pub slot_limits: Vec<SlotLimitStatus>,
    /// Instances kept out of a registration another live instance holds.
    pub duplicates: Vec<DuplicateRecord>,
    pub halts: Vec<HaltStatus>,
    /// The sidekicks on this host, as they answer on their control sockets.
    pub local: Vec<local::LocalDaemon>,
}

/// One instance's record of itself.
#[derive(Debug, Serialize)]
pub struct InstanceStatus {
    pub group: String,
    pub instance: String,
    #[serde(flatten)]
    pub record: InstanceRecord,
}

/// A group's limit stored in etcd (authoritative over `slot.max`).
#[derive(Debug, Serialize)]
pub struct SlotLimitStatus {
    pub group: String,
    pub max: u32,
}

/// One registration found under the configured layout's prefix.
#[derive(Debug, Serialize)]
pub struct RegistrationStatus {
    pub service: String,
    pub instance: String,
    pub host: String,
    pub port: u16,
    /// Seconds left on the registration's lease; `None` for a key with no lease.
    pub ttl_left: Option<i64>,
}

/// One slot group and its holders.
#[derive(Debug, Serialize)]
pub struct SlotGroupStatus {
    pub group: String,
    pub holders: Vec<HolderStatus>,
}

/// One held slot.
#[derive(Debug, Serialize)]
pub struct HolderStatus {
    pub slot: String,
    pub holder: String,
    pub instance: String,
    pub version: String,
    pub since: String,
    /// The holder's hostname, when its value names one.
    pub host: Option<String>,
    /// Seconds left on the holder's lease; `None` for a key with no lease (not ours).
    pub ttl_left: Option<i64>,
}

/// One halted group.
#[derive(Debug, Serialize)]
pub struct HaltStatus {
    pub group: String,
    pub version: String,
    pub reason: String,
    pub instance: String,
    pub since: String,
}

impl StatusReport {
    /// The report as tables, in display order.
    pub fn sections(&self) -> Vec<Section> {
        // The rollout at a glance: how many registered instances run each version, per group.
        let mut versions: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
        for i in &self.instances {
            versions
                .entry((i.group.as_str(), i.record.version.as_str()))
                .or_default()
                .push(i.instance.as_str());
        }
        let versions = versions
            .into_iter()
            .map(|((group, version), names)| {
                vec![
                    group.to_string(),
                    version.to_string(),
                    names.len().to_string(),
                    names.join(","),
                ]
            })
            .collect();
        let instances = self
            .instances
            .iter()
            .map(|i| {
                let r = &i.record;
                vec![
                    i.group.clone(),
                    i.instance.clone(),
                    r.version.clone(),
                    r.phase.clone(),
                    r.since.clone(),
                    r.last_check.clone().unwrap_or_else(|| "-".into()),
                    r.result.clone().unwrap_or_else(|| "-".into()),
                    r.host.clone(),
                ]
            })
            .collect();
        let holders = self
            .slot_groups
            .iter()
            .flat_map(|g| {
                g.holders.iter().map(|h| {
                    vec![
                        g.group.clone(),
                        h.slot.clone(),
                        h.instance.clone(),
                        h.version.clone(),
                        h.since.clone(),
                        ttl_cell(h.ttl_left),
                        h.host.clone().unwrap_or_else(|| "-".into()),
                        h.holder.clone(),
                    ]
                })
            })
            .collect();
        let halts = self
            .halts
            .iter()
            .map(|h| {
                vec![
                    h.group.clone(),
                    h.version.clone(),
                    h.instance.clone(),
                    h.since.clone(),
                    h.reason.clone(),
                ]
            })
            .collect();
        let registrations = self
            .registrations
            .iter()
            .map(|r| {
                vec![
                    r.service.clone(),
                    r.instance.clone(),
                    r.host.clone(),
                    r.port.to_string(),
                    ttl_cell(r.ttl_left),
                ]
            })
            .collect();
        vec![
            Section {
                title: "VERSIONS",
                headers: &["GROUP", "VERSION", "COUNT", "INSTANCES"],
                rows: versions,
            },
            Section {
                title: "INSTANCES",
                headers: &[
                    "GROUP",
                    "INSTANCE",
                    "VERSION",
                    "PHASE",
                    "SINCE",
                    "LAST CHECK",
                    "RESULT",
                    "HOST",
                ],
                rows: instances,
            },
            Section {
                title: "REGISTRATIONS",
                headers: &["SERVICE", "INSTANCE", "HOST", "PORT", "TTL"],
                rows: registrations,
            },
            Section {
                title: "UPDATE SLOTS",
                headers: &[
                    "GROUP", "SLOT", "INSTANCE", "VERSION", "SINCE", "TTL", "HOST", "HOLDER",
                ],
                rows: holders,
            },
            Section {
                title: "SLOT LIMITS (stored)",
                headers: &["GROUP", "MAX"],
                rows: self
                    .slot_limits
                    .iter()
                    .map(|l| vec![l.group.clone(), l.max.to_string()])
                    .collect(),
            },
            Section {
                title: "DUPLICATE INSTANCES",
                headers: &["KEY", "HELD BY", "KEPT OUT", "SINCE"],
                rows: self
                    .duplicates
                    .iter()
                    .map(|d| {
                        vec![
                            d.key.clone(),
                            d.held_by.clone(),
                            d.host.clone(),
                            d.since.clone(),
                        ]
                    })
                    .collect(),
            },
            Section {
                title: "HALTS",
                headers: &["GROUP", "VERSION", "INSTANCE", "SINCE", "REASON"],
                rows: halts,
            },
            local::section(&self.local),
        ]
    }

    /// All sections, separated by blank lines.
    pub fn render_table(&self) -> String {
        let sections: Vec<String> = self.sections().iter().map(Section::render).collect();
        sections.join("\n")
    }
}

fn ttl_cell(ttl_left: Option<i64>) -> String {
    ttl_left.map_or("-".into(), |t| format!("{t}s"))
}

/// Seconds left on each lease, asked once per lease.
#[derive(Default)]
struct LeaseTtls(BTreeMap<i64, i64>);

impl LeaseTtls {
    async fn of(&mut self, client: &mut Client, lease: i64) -> Result<Option<i64>, SlotError> {
        if lease == 0 {
            return Ok(None);
        }
        if let Some(ttl) = self.0.get(&lease) {
            return Ok(Some(*ttl));
        }
        let ttl = client.lease_time_to_live(lease, None).await?.ttl();
        self.0.insert(lease, ttl);
        Ok(Some(ttl))
    }
}

/// Reads every registration of `layout`, with its lease's TTL.
pub async fn registrations(
    client: &mut Client,
    layout: &KeyLayout,
) -> Result<Vec<RegistrationStatus>, SlotError> {
    let resp = client
        .get(layout.list_prefix(), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut ttls = LeaseTtls::default();
    let mut found = Vec::new();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        let value = String::from_utf8_lossy(kv.value());
        let Some(listed) = layout.parse(&key, &value) else {
            continue;
        };
        found.push(RegistrationStatus {
            service: listed.service,
            instance: listed.instance,
            host: listed.host,
            port: listed.port,
            ttl_left: ttls.of(client, kv.lease()).await?,
        });
    }
    Ok(found)
}

/// Reads every slot group under `/sidekick/slots/` with its holders' lease TTLs.
pub async fn slot_groups(client: &mut Client) -> Result<Vec<SlotGroupStatus>, SlotError> {
    let resp = client
        .get(SLOT_PREFIX, Some(GetOptions::new().with_prefix()))
        .await?;
    let mut groups: BTreeMap<String, Vec<HolderStatus>> = BTreeMap::new();
    let mut ttls = LeaseTtls::default();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        let Some((group, slot)) = key
            .strip_prefix(SLOT_PREFIX)
            .and_then(|rest| rest.rsplit_once('/'))
        else {
            continue;
        };
        let value: SlotValue = serde_json::from_slice(kv.value()).unwrap_or_else(|_| SlotValue {
            holder: String::from_utf8_lossy(kv.value()).into_owned(),
            instance: "?".into(),
            version: "?".into(),
            since: String::new(),
            host: None,
        });
        let ttl_left = ttls.of(client, kv.lease()).await?;
        groups
            .entry(group.to_string())
            .or_default()
            .push(HolderStatus {
                slot: slot.to_string(),
                holder: value.holder,
                instance: value.instance,
                version: value.version,
                since: value.since,
                host: value.host.map(|h| h.hostname),
                ttl_left,
            });
    }
    Ok(groups
        .into_iter()
        .map(|(group, holders)| SlotGroupStatus { group, holders })
        .collect())
}

/// Gathers every section of the report from etcd.
pub async fn gather(client: &mut Client, layout: &KeyLayout) -> Result<StatusReport, SlotError> {
    let halts = halt::list(client)
        .await?
        .into_iter()
        .map(|(group, m)| HaltStatus {
            group,
            version: m.version,
            reason: m.reason,
            instance: m.instance,
            since: m.since,
        })
        .collect();
    let slot_limits = crate::slot::limit::list(client)
        .await?
        .into_iter()
        .map(|(group, max)| SlotLimitStatus { group, max })
        .collect();
    let instances = record::list(client)
        .await?
        .into_iter()
        .map(|(group, instance, record)| InstanceStatus {
            group,
            instance,
            record,
        })
        .collect();
    Ok(StatusReport {
        instances,
        registrations: registrations(client, layout).await?,
        slot_groups: slot_groups(client).await?,
        slot_limits,
        duplicates: duplicate::list(client).await?,
        halts,
        local: Vec::new(),
    })
}

/// `sidekick status [--json]`; the local daemons' control sockets are looked for under
/// `runtime_dir`.
pub async fn run(sources: &ConfigSources, json: bool, runtime_dir: &Path) -> ExitCode {
    let settings = match super::load_settings::<StatusSettings>(sources) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let layout = KeyLayout::from_settings(&settings.registration);
    // The local daemons answer whether or not etcd does: with etcd down they are what is left
    // to see, so they are shown (and the exit code says the fleet view failed).
    let fleet = match super::connect(&settings.etcd).await {
        Ok(mut client) => gather(&mut client, &layout).await.map_err(|err| {
            eprintln!("sidekick: failed to read status from etcd: {err}");
        }),
        Err(_) => Err(()),
    };
    let local = local::gather(runtime_dir).await;
    let (report, code) = match fleet {
        Ok(report) => (StatusReport { local, ..report }, ExitCode::SUCCESS),
        Err(()) if local.is_empty() => return ExitCode::FAILURE,
        Err(()) => {
            let only_local = StatusReport {
                local,
                ..StatusReport::default()
            };
            if !json {
                eprintln!("sidekick: etcd did not answer; showing only the daemons on this host");
                print!("{}", local::section(&only_local.local).render());
                return ExitCode::FAILURE;
            }
            (only_local, ExitCode::FAILURE)
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                eprintln!("sidekick: failed to encode status: {err}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.render_table());
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_section_says_none() {
        let text = StatusReport::default().render_table();
        assert_eq!(
            text,
            "VERSIONS\n  (none)\n\nINSTANCES\n  (none)\n\nREGISTRATIONS\n  (none)\n\nUPDATE SLOTS\n  (none)\n\nSLOT LIMITS (stored)\n  (none)\n\nDUPLICATE INSTANCES\n  (none)\n\nHALTS\n  (none)\n\nLOCAL DAEMONS\n  (none)\n"
        );
    }

    #[test]
    fn versions_count_the_instances_running_each_version_per_group() {
        let record = |version: &str| InstanceRecord {
            version: version.into(),
            phase: "serving".into(),
            since: "2026-01-01T00:00:00Z".into(),
            last_check: None,
            result: Some("no-update".into()),
            host: "10.0.0.5".into(),
        };
        let instance = |name: &str, version: &str| InstanceStatus {
            group: "app/stable".into(),
            instance: name.into(),
            record: record(version),
        };
        let report = StatusReport {
            instances: vec![
                instance("web-1", "2.0.0"),
                instance("web-2", "1.0.0"),
                instance("web-3", "2.0.0"),
            ],
            ..StatusReport::default()
        };
        let text = report.render_table();
        let line = |version: &str| {
            text.lines()
                .find(|l| l.contains("app/stable") && l.contains(version) && l.contains(','))
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
        };
        assert_eq!(
            line("2.0.0"),
            Some(vec!["app/stable", "2.0.0", "2", "web-1,web-3"]),
            "{text}"
        );
        assert!(text.contains("web-2"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["instances"][1]["version"], "1.0.0");
        assert_eq!(json["instances"][1]["instance"], "web-2");
    }
}
