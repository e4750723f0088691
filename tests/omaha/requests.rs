//! Request goldens for the check and each event, and a property over random valid inputs.

use super::*;

fn golden(name: &str) -> String {
    fixture(&format!("requests/{name}")).replace("@UPDATER@", UPDATER_VERSION)
}

#[test]
fn update_check_requests_match_their_goldens() {
    let app = golden_instance();
    let current = v("1.2.3");
    assert_eq!(
        update_check_request(&app, &current, InstallSource::Scheduler),
        golden("update-check.xml")
    );
    assert_eq!(
        update_check_request(&app, &current, InstallSource::OnDemand),
        golden("update-check-interactive.xml")
    );
}

#[test]
fn event_requests_match_their_goldens() {
    let app = golden_instance();
    let current = v("1.2.3");
    for (event, file) in [
        (Event::PrepullStarted, "event-13-1.xml"),
        (Event::PrepullFinished, "event-14-1.xml"),
        (Event::SwapStarted, "event-800-1.xml"),
        (Event::UpdateComplete, "event-3-1.xml"),
        (
            Event::Failed {
                error_code: error_code::OFFER_REFUSED,
            },
            "event-3-0.xml",
        ),
    ] {
        assert_eq!(event_request(&app, &current, event), golden(file), "{file}");
    }
}

fn attribute<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let start = xml.find(&format!(" {name}=\""))? + name.len() + 3;
    xml[start..].split('"').next()
}

fn any_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Event::PrepullStarted),
        Just(Event::PrepullFinished),
        Just(Event::SwapStarted),
        Just(Event::UpdateComplete),
        any::<u32>().prop_map(|error_code| Event::Failed { error_code }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_request_has_a_hex_machine_id_a_semver_version_and_no_3_2(
        host in "[0-9a-f]{32}",
        app_id in "[0-9a-zA-Z{}.-]{1,40}",
        name in "[a-z0-9@._-]{1,30}",
        track in "[a-z0-9-]{1,20}",
        arch in prop_oneof![Just("x64"), Just("arm"), Just("all")],
        (major, minor, patch) in (0u64..1000, 0u64..1000, 0u64..1000),
        pre in proptest::option::of("[a-z]{1,5}\\.[1-9][0-9]{0,2}"),
        interactive in any::<bool>(),
        event in any_event(),
    ) {
        let app = AppInstance {
            app_id,
            track,
            arch: arch.into(),
            machine_id: app_machine_id(&host, "app", &name).unwrap(),
            boot_id: "{965fb4c5-ad3e-4eb7-a4c2-ca0c0e31ec84}".into(),
            name: "web-1".into(),
        };
        let mut current = Version::new(major, minor, patch);
        if let Some(pre) = pre {
            current.pre = semver::Prerelease::new(&pre).unwrap();
        }
        let check = update_check_request(&app, &current, InstallSource::from_interactive(interactive));
        for request in [check, event_request(&app, &current, event)] {
            let machine_id = attribute(&request, "machineid").unwrap();
            prop_assert_eq!(machine_id.len(), 32);
            prop_assert!(machine_id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            let root = request.split("<request ").nth(1).unwrap_or_default();
            prop_assert_eq!(attribute(root, "version"), Some(UPDATER_VERSION));
            let app_version = request.split("<app ").nth(1).and_then(|a| attribute(a, "version")).unwrap();
            prop_assert_eq!(Version::parse(app_version).unwrap(), current.clone());
            prop_assert!(!request.contains("eventtype=\"3\" eventresult=\"2\""));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// From a random valid configuration file, through the real loader, to the requests sent.
    #[test]
    fn requests_built_from_random_valid_configs_obey_the_protocol_rules(
        host in "[0-9a-f]{32}",
        service in "[a-z][a-z0-9]{0,8}",
        index in 1u32..1000,
        app_id in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        braced in any::<bool>(),
        track in "[a-z][a-z0-9-]{0,12}",
        arch in prop_oneof![Just("x64"), Just("arm"), Just("all")],
        (major, minor, patch) in (0u64..100, 0u64..100, 0u64..100),
        event in any_event(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let app_id = if braced { format!("{{{app_id}}}") } else { app_id };
        let file = dir.path().join("sidekick.toml");
        std::fs::write(&file, format!(
            "[instance]\nunit = \"{service}@{index}.service\"\n[registration]\nport = 8080\n\
             [update]\nserver = \"http://127.0.0.1:1/v1/update/\"\napp_id = \"{app_id}\"\n\
             track = \"{track}\"\narch = \"{arch}\"\n"
        )).unwrap();
        let sources = sidekick::config::ConfigSources {
            root: dir.path().to_path_buf(),
            files: vec![file],
            unit: None,
        };
        let settings = sidekick::config::load(&sources).unwrap().settings;
        let update = &settings.update;
        let app = AppInstance {
            app_id: update.app_id.clone(),
            track: update.track.clone(),
            arch: update.arch.clone(),
            machine_id: app_machine_id(&host, &update.app_id, &settings.instance.unit).unwrap(),
            boot_id: "{965fb4c5-ad3e-4eb7-a4c2-ca0c0e31ec84}".into(),
            name: "web-1".into(),
        };
        let current = Version::new(major, minor, patch);
        let check = update_check_request(&app, &current, InstallSource::Scheduler);
        for request in [check, event_request(&app, &current, event)] {
            // Keep the space before the first attribute: `attribute` matches ` name="`.
            let app_element = request.split("<app").nth(1).unwrap_or_default();
            prop_assert_eq!(attribute(app_element, "appid"), Some(app_id.as_str()), "sent exactly as configured");
            prop_assert_eq!(attribute(app_element, "track"), Some(track.as_str()));
            let machine_id = attribute(app_element, "machineid").unwrap();
            prop_assert_eq!(machine_id.len(), 32);
            prop_assert!(machine_id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            let version = attribute(app_element, "version").unwrap();
            prop_assert_eq!(Version::parse(version).unwrap(), current.clone());
            prop_assert!(!request.contains("eventtype=\"3\" eventresult=\"2\""));
        }
    }
}
