//! `sidekick etcd-role` on a real etcd with auth on: two tenants (web-1 in group web/stable, api-1
//! in group api/stable) get their generated roles; each registers, takes and gives back its
//! group's slot, halts and reads its limit; each is refused every write to the other's keys (and
//! to its own stored limit); the generated operator role stores limits and reads `status`.

use std::path::Path;

use etcd_client::ConnectOptions;
use sidekick::config::{EtcdAuth, EtcdOptions};
use sidekick::etcd::EtcdConnection;

use super::commands::sidekick;
use super::support::Need;
use super::*;

const ROOT: &str = "root:r00t-pw";

struct Tenant {
    instance: &'static str,
    service: &'static str,
    group: &'static str,
}

const WEB: Tenant = Tenant {
    instance: "web-1",
    service: "web",
    group: "web/stable",
};
const API: Tenant = Tenant {
    instance: "api-1",
    service: "api",
    group: "api/stable",
};

impl Tenant {
    fn role(&self) -> String {
        sidekick::commands::etcd_role::instance_role(self.group, self.instance)
    }

    /// The keys of this tenant a sidekick writes, by class.
    fn keys(&self) -> Vec<(&'static str, String)> {
        let escaped = self.group.replace('/', "%2F");
        vec![
            (
                "registration",
                format!("/services/{}/{}", self.service, self.instance),
            ),
            (
                "duplicate record",
                format!(
                    "/sidekick/duplicates/services/{}/{}",
                    self.service, self.instance
                ),
            ),
            (
                "instance record",
                format!("/sidekick/instances/{}/{}", self.group, self.instance),
            ),
            ("slot", format!("/sidekick/slots/{}/0", self.group)),
            (
                "queue",
                format!("/sidekick/queue/{escaped}/0000000000000001"),
            ),
            ("halt", format!("/sidekick/halt/{}", self.group)),
            ("stored limit", format!("/sidekick/limits/{}", self.group)),
            ("policy", format!("/sidekick/policy/{}", self.group)),
        ]
    }
}

/// Writes the tenant's (or the operator's) config with `username`, its password in a file.
fn config(
    dir: &Path,
    name: &str,
    endpoint: &str,
    username: &str,
    group: &str,
    unit: &str,
) -> String {
    let password = dir.join(format!("{name}.pw"));
    std::fs::write(&password, format!("{name}-secret\n")).unwrap();
    let private = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600);
    std::fs::set_permissions(&password, private).unwrap();
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "[instance]\nunit = \"{unit}\"\n[etcd]\nendpoints = [\"{endpoint}\"]\ntimeout = \"2s\"\n\
         username = \"{username}\"\npassword_file = \"{}\"\n[registration]\nport = 8080\n\
         [health]\ncheck = \"none\"\n[update]\nenabled = false\n[slot]\ngroup = \"{group}\"\n",
        password.display()
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Runs `lines` with etcdctl as root.
fn as_root(endpoint: &str, lines: &str, new_password: &str) {
    let out = Command::new("sh")
        .args(["-ec", lines])
        .env("ETCDCTL_API", "3")
        .env("ETCDCTL_ENDPOINTS", endpoint)
        .env("ETCDCTL_USER", ROOT)
        .env("ETCD_NEW_PASSWORD", new_password)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{lines}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn client_as(endpoint: &str, user: &str, password: &str) -> Client {
    let options = ConnectOptions::new().with_user(user, password);
    Client::connect([endpoint], Some(options))
        .await
        .expect("connect as tenant")
}

fn options_as(endpoint: &str, user: &str, password_file: &Path) -> EtcdOptions {
    EtcdOptions {
        endpoints: vec![endpoint.parse().unwrap()],
        timeout: Duration::from_secs(2),
        auth: Some(EtcdAuth {
            username: user.into(),
            password_file: password_file.to_path_buf(),
        }),
        ca_file: None,
        client_cert: None,
    }
}

#[tokio::test]
async fn generated_roles_let_each_tenant_work_and_refuse_every_write_to_the_other() {
    if !prerequisites_met(&[etcd::NEEDS, &[Need::Binary("etcdctl")]].concat()) {
        return;
    }
    let etcd = Etcd::start().await;
    let endpoint = etcd.endpoint();
    let dir = temp_dir("etcd-role");
    let web_cfg = config(
        dir.path(),
        "web",
        &endpoint,
        &WEB.role(),
        WEB.group,
        "web@1.service",
    );
    let api_cfg = config(
        dir.path(),
        "api",
        &endpoint,
        &API.role(),
        API.group,
        "api@1.service",
    );
    let script = |cfg: &str| {
        let out = sidekick(dir.path(), &["etcd-role", "--config", cfg]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (instance, operator) = text.split_once("# operator role").expect("two parts");
        (instance.to_string(), format!("# operator role{operator}"))
    };
    let (web_script, operator_script) = script(&web_cfg);
    let (api_script, _) = script(&api_cfg);
    assert!(!web_script.contains("api"), "{web_script}");

    let setup = Command::new("sh")
        .args(["-ec", "etcdctl user add root --interactive=false --new-user-password=r00t-pw && etcdctl auth enable"])
        .env("ETCDCTL_API", "3")
        .env("ETCDCTL_ENDPOINTS", &endpoint)
        .output()
        .unwrap();
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    as_root(&endpoint, &web_script, "");
    as_root(&endpoint, &api_script, "");
    as_root(&endpoint, &operator_script, "operator-secret");

    // The operator stores both limits and reads status.
    let op_cfg = config(
        dir.path(),
        "operator",
        &endpoint,
        "sidekick-operator",
        WEB.group,
        "web@1.service",
    );
    for group in [WEB.group, API.group] {
        let out = sidekick(
            dir.path(),
            &[
                "slots", "set-max", "2", "--group", group, "--config", &op_cfg,
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let status = sidekick(dir.path(), &["status", "--config", &op_cfg]);
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );

    let mut matrix = Vec::new();
    for (me, other) in [(&WEB, &API), (&API, &WEB)] {
        let password_file = dir.path().join(format!("{}.pw", me.service));
        let password = format!("{}-secret", me.service);
        let mut client = client_as(&endpoint, &me.role(), &password).await;
        // Works normally: registration, instance record, duplicate record, slot, halt, limit.
        for (class, key) in me.keys() {
            let result = client.put(key.as_str(), "{}", None).await;
            let writable = !matches!(class, "stored limit" | "policy");
            assert_eq!(
                result.is_ok(),
                writable,
                "{} writing its own {class} {key}: {result:?}",
                me.instance
            );
            if writable {
                client.delete(key.as_str(), None).await.unwrap();
            }
            matrix.push((
                me.instance,
                "own",
                class,
                if writable { "written" } else { "refused" },
            ));
        }
        let limit = client
            .get(format!("/sidekick/limits/{}", me.group), None)
            .await
            .unwrap();
        assert_eq!(limit.kvs()[0].value(), b"2", "reads its own stored limit");
        let slots = EtcdSlots::new(
            EtcdConnection::new(options_as(&endpoint, &me.role(), &password_file)),
            me.group,
            one(),
            TTL,
            who(me.service),
        );
        assert_eq!(slots.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
        slots.release().await.unwrap();
        slots.halt("2.0.0", "test").await.unwrap();
        assert!(slots.halted().await.unwrap().is_some());
        // Refused: every write to the other's keys, and reading its slots.
        for (class, key) in other.keys() {
            let err = client
                .put(key.as_str(), "{}", None)
                .await
                .expect_err("refused");
            assert!(
                err.to_string().contains("permission denied"),
                "{class} {key}: {err}"
            );
            matrix.push((me.instance, "other's", class, "refused"));
        }
        let theirs = EtcdSlots::new(
            EtcdConnection::new(options_as(&endpoint, &me.role(), &password_file)),
            other.group,
            one(),
            TTL,
            who(me.service),
        );
        let err = theirs
            .acquire("2.0.0")
            .await
            .expect_err("another group's slot");
        assert!(format!("{err}").contains("permission denied"), "{err}");
    }
    for (who, whose, class, result) in &matrix {
        eprintln!("{who:6} {whose:8} {class:17} {result}");
    }
}

/// `status` reads each section on its own (`src/commands/status/keys.rs`): a reader whose role
/// lacks one prefix (the duplicates) still sees every other section, is told which section was
/// not read and why, and gets exit 1; `--json` lists it under `unreadable`.
#[tokio::test]
async fn status_with_one_section_refused_shows_the_others_names_the_refused_one_and_exits_1() {
    if !prerequisites_met(&[etcd::NEEDS, &[Need::Binary("etcdctl")]].concat()) {
        return;
    }
    let etcd = Etcd::start().await;
    let endpoint = etcd.endpoint();
    let dir = temp_dir("status-sections");
    let mut client = etcd.client().await;
    client
        .put("/sidekick/limits/web/stable", "2", None)
        .await
        .unwrap();
    let cfg = config(
        dir.path(),
        "reader",
        &endpoint,
        "reader",
        WEB.group,
        "web@1.service",
    );
    let grants: String = [
        "/sidekick/instances/",
        "/sidekick/slots/",
        "/sidekick/limits/",
        "/sidekick/halt/",
        "/services/",
    ]
    .iter()
    .map(|p| format!("etcdctl role grant-permission reader read --prefix=true {p}\n"))
    .collect();
    let setup = Command::new("sh")
        .args(["-ec", "etcdctl user add root --interactive=false --new-user-password=r00t-pw && etcdctl auth enable"])
        .env("ETCDCTL_API", "3")
        .env("ETCDCTL_ENDPOINTS", &endpoint)
        .output()
        .unwrap();
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    as_root(
        &endpoint,
        &format!(
            "etcdctl role add reader\n{grants}etcdctl user add reader --interactive=false \
             --new-user-password=\"$ETCD_NEW_PASSWORD\"\netcdctl user grant-role reader reader\n"
        ),
        "reader-secret",
    );

    let out = sidekick(dir.path(), &["status", "--config", &cfg]);
    let (text, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{text}\n{err}");
    assert!(
        err.contains("status section duplicate instances could not be read")
            && err.contains("permission denied"),
        "{err}"
    );
    let limits = text
        .find("SLOT LIMITS")
        .expect("the limits section is shown");
    assert!(text[limits..].contains("web/stable"), "{text}");
    let refused = text.find("NOT READ").expect("the refused section is named");
    assert!(text[refused..].contains("duplicate instances"), "{text}");

    let out = sidekick(dir.path(), &["status", "--json", "--config", &cfg]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let unreadable = json["unreadable"].as_array().expect("unreadable listed");
    let sections: Vec<&str> = unreadable
        .iter()
        .filter_map(|u| u["section"].as_str())
        .collect();
    assert_eq!(sections, ["duplicate instances"], "{json}");
    assert_eq!(json["slot_limits"][0]["max"], 2, "{json}");
}
