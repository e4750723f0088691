//! The report as aligned tables: one [`Section`] per part of [`StatusReport`], in display order.

use std::collections::BTreeMap;

use super::local;
use super::model::StatusReport;
use super::table::Section;
use crate::registry::record::InstanceRecord;

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
                    phase_cell(r),
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

    /// All sections, separated by blank lines; first, when any could not be read, which and why.
    pub fn render_table(&self) -> String {
        let mut sections = Vec::new();
        if !self.unreadable.is_empty() {
            let unreadable = Section {
                title: "NOT READ (the sections below that they name are empty)",
                headers: &["SECTION", "ERROR"],
                rows: self
                    .unreadable
                    .iter()
                    .map(|u| vec![u.section.clone(), u.error.clone()])
                    .collect(),
            };
            sections.push(unreadable.render());
        }
        sections.extend(self.sections().iter().map(Section::render));
        sections.join("\n")
    }
}

/// The phase, with the step and target version during an update: `swapping (draining to 3.0.0)`.
fn phase_cell(record: &InstanceRecord) -> String {
    match (&record.target, &record.step) {
        (Some(target), Some(step)) => format!("{} ({step} to {target})", record.phase),
        (Some(target), None) => format!("{} (to {target})", record.phase),
        _ => record.phase.clone(),
    }
}

fn ttl_cell(ttl_left: Option<i64>) -> String {
    ttl_left.map_or("-".into(), |t| format!("{t}s"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::status::model::InstanceStatus;

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
            target: None,
            step: None,
            policy: None,
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
