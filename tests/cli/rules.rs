//! Each rule of the README's configuration table, refused by `check-config` with exit 2 and the
//! file, line and key of the offending value.

use super::{assert_refused, assert_rejected, config_with};

const UNIT: &str = "[instance]\nunit = \"web@1.service\"\n";

#[test]
fn etcd_username_and_password_file_are_both_or_neither() {
    let text = format!(
        "{UNIT}[registration]\nport = 80\n[update]\nenabled = false\n[etcd]\nusername = \"root\"\n"
    );
    assert_rejected(
        &text,
        8,
        "etcd.username",
        "needs etcd.password_file as well",
    );
    let text = format!(
        "{UNIT}[registration]\nport = 80\n[update]\nenabled = false\n[etcd]\npassword_file = \"/p\"\n"
    );
    assert_rejected(
        &text,
        8,
        "etcd.password_file",
        "needs etcd.username as well",
    );
}

#[test]
fn etcd_cert_file_and_key_file_are_both_or_neither() {
    let (text, line) = config_with("etcd.cert_file", "\"/c.pem\"");
    assert_rejected(&text, line, "etcd.cert_file", "needs etcd.key_file as well");
    let (text, line) = config_with("etcd.key_file", "\"/k.pem\"");
    assert_rejected(&text, line, "etcd.key_file", "needs etcd.cert_file as well");
}

#[test]
fn https_etcd_endpoints_trust_the_system_roots_without_a_ca_file_and_a_ca_file_needs_https() {
    let (text, _) = config_with("etcd.endpoints", "[\"https://127.0.0.1:2379\"]");
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("web.toml");
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidekick"))
        .args(["check-config", "--config", file.to_str().unwrap()])
        .env("SIDEKICK_CONFIG_ROOT", root.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "https:// without etcd.ca_file uses the system roots: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = format!(
        "{UNIT}[registration]\nport = 80\n[update]\nenabled = false\n[etcd]\n\
         endpoints = [\"http://127.0.0.1:2379\"]\nca_file = \"/ca.pem\"\n"
    );
    assert_rejected(&text, 8, "etcd.endpoints", "must be https://");
}

#[test]
fn registration_port_is_required_when_registration_is_enabled_and_the_error_says_how_to_fix_it() {
    let text = format!("{UNIT}[update]\nenabled = false\n");
    // A missing key has no line: the error names the key alone.
    assert_refused(
        &text,
        "key `registration.port`: required while registration.enabled is true: set \
         registration.port to the port the app listens on, or registration.enabled = false \
         for updates only",
    );
}

#[test]
fn skydns_layout_needs_a_domain() {
    let (text, _) = config_with("registration.layout", "\"skydns\"");
    assert_refused(
        &text,
        "key `registration.domain`: required by the skydns layout",
    );
}

#[test]
fn update_server_and_app_id_are_required_when_updates_are_enabled_with_a_registration_only_hint() {
    // A registration-only configuration that forgot `update.enabled = false`.
    let text = format!("{UNIT}[registration]\nport = 8080\n");
    assert_refused(
        &text,
        "key `update.server`: required while update.enabled is true: set update.server (the \
         Omaha endpoint, e.g. \"https://nebraska.example.com/v1/update/\") and update.app_id, \
         or update.enabled = false for registration only",
    );
    let text = format!("{text}[update]\nserver = \"http://127.0.0.1:1/v1/update/\"\n");
    assert_refused(
        &text,
        "key `update.app_id`: required while update.enabled is true: set update.app_id (the \
         app's id in the update service), or update.enabled = false for registration only",
    );
}

#[test]
fn fleetlock_backend_needs_fleetlock_url_and_a_protocol_group() {
    let (text, line) = config_with("slot.backend", "\"fleetlock\"");
    assert_refused(
        &text,
        "key `slot.fleetlock_url`: required by the fleetlock backend: set it to the FleetLock \
         server's base URL, e.g. \"http://fleetlock.example.com:3333/\", or choose another \
         slot.backend",
    );
    let text = format!("{text}fleetlock_url = \"http://127.0.0.1:1/\"\ngroup = \"web/stable\"\n");
    assert_rejected(&text, line + 2, "slot.group", "is not a FleetLock group");
}

#[test]
fn health_url_is_an_http_url_for_http_checks_and_host_port_for_tcp() {
    let (text, line) = config_with("health.url", "\"127.0.0.1:80\"");
    assert_rejected(
        &text,
        line,
        "health.url",
        "must be an http:// or https:// URL",
    );
    let text = format!(
        "{UNIT}[registration]\nport = 80\n[update]\nenabled = false\n[health]\ncheck = \"tcp\"\n\
         url = \"http://127.0.0.1:80/\"\n"
    );
    assert_rejected(&text, 9, "health.url", "must be host:port for a tcp check");
    let text = format!("{UNIT}[registration]\nenabled = false\n[update]\nenabled = false\n");
    assert_refused(
        &text,
        "key `health.url`: required for a http check when registration.port is unset: set \
         health.url, or health.check = \"none\"",
    );
}

#[test]
fn instance_unit_is_a_service_instance_and_not_the_sidekicks_own_unit() {
    for (unit, why) in [
        ("web@1.servce", "is not a service"),
        ("web@1.socket", "is not a service"),
        (
            "web@.service",
            "is a template: name an instance of it, e.g. `web@1.service`",
        ),
        ("sidekick@web@1.service", "more than one `@`"),
        ("sidekick@web-1.service", "the sidekick's own unit"),
    ] {
        let text = format!(
            "[instance]\nunit = \"{unit}\"\n[registration]\nport = 80\n[update]\nenabled = false\n"
        );
        assert_rejected(&text, 2, "instance.unit", why);
    }
}

#[test]
fn update_image_knows_only_its_placeholders() {
    let (text, line) = config_with("update.image", "\"{codebase}:{tag}\"");
    assert_rejected(&text, line, "update.image", "unknown placeholder `tag`");
}

#[test]
fn registration_host_domain_and_scheme_are_checked() {
    let (text, line) = config_with("registration.host", "\"10.0.0.5:80\"");
    let why = "is neither an IP address nor a host name";
    assert_rejected(&text, line, "registration.host", why);
    let (text, line) = config_with("registration.domain", "\"web_1.example\"");
    assert_rejected(&text, line, "registration.domain", "is not a DNS name");
    let (text, line) = config_with("registration.scheme", "\"ftp\"");
    assert_rejected(
        &text,
        line,
        "registration.scheme",
        "must be \"http\" or \"https\"",
    );
}

#[test]
fn paths_are_absolute_and_prepull_and_metrics_are_well_formed() {
    let (text, line) = config_with("daemon.state_dir", "\"var/lib/sidekick\"");
    assert_rejected(&text, line, "daemon.state_dir", "must be an absolute path");
    let (text, line) = config_with("swap.dropin_dir", "\"etc/systemd/system\"");
    assert_rejected(&text, line, "swap.dropin_dir", "must be an absolute path");
    let (text, line) = config_with("swap.prepull", "[\"docker\", \"pull\", \"{img}\"]");
    assert_rejected(&text, line, "swap.prepull", "unknown placeholder `img`");
    let (text, line) = config_with("daemon.metrics", "\"localhost\"");
    assert_rejected(
        &text,
        line,
        "daemon.metrics",
        "must be an address like 127.0.0.1:9527",
    );
}
