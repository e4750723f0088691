//! The shipped example files fit each other, read as a newcomer follows them:
//! `examples/omaha_server/README.md`'s admin lines, run against the example service, offer an
//! update that `sidekick update-check` with the shipped `examples/config/web.toml` accepts as the
//! next image of `units/example-web@.service`; and the config probes and registers the port that
//! unit publishes.

use super::example_service::LocalService;
use super::*;

fn shipped(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `Environment=NAME=value` of the example app unit.
fn unit_environment(name: &str) -> String {
    let unit = shipped("units/example-web@.service");
    let prefix = format!("Environment={name}=");
    unit.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in units/example-web@.service"))
        .to_string()
}

fn example_config() -> toml::Table {
    toml::from_str(&shipped("examples/config/web.toml")).unwrap()
}

/// The README's `curl` lines: method, path below `$S/` with `$A` filled in, JSON body.
fn readme_requests(app: &str) -> Vec<(reqwest::Method, String, serde_json::Value)> {
    let readme = shipped("examples/omaha_server/README.md");
    readme
        .lines()
        .filter_map(|line| line.strip_prefix("curl "))
        .map(|line| {
            let method = match line.split_once("-X ") {
                Some((_, rest)) => rest.split_whitespace().next().unwrap().parse().unwrap(),
                None => reqwest::Method::GET,
            };
            let path = line
                .split_whitespace()
                .find_map(|t| t.strip_prefix("$S/"))
                .unwrap_or_else(|| panic!("no $S/ path in `curl {line}`"))
                .replace("$A", app);
            let body = match line.split_once("-d '") {
                Some((_, rest)) => serde_json::from_str(rest.trim_end().trim_end_matches('\''))
                    .unwrap_or_else(|e| panic!("body of `curl {line}`: {e}")),
                None => serde_json::Value::Null,
            };
            (method, path, body)
        })
        .collect()
}

#[test]
fn example_config_probes_and_registers_the_port_the_example_unit_publishes() {
    let config = example_config();
    let port = unit_environment("PORT");
    assert_eq!(config["registration"]["port"].to_string(), port);
    let probe = config["health"]["url"].as_str().unwrap();
    assert!(
        probe.contains(&format!(":{port}/")),
        "{probe} vs PORT={port}"
    );
    let unit = config["instance"]["unit"].as_str().unwrap();
    let (template, _) = unit.split_once('@').unwrap();
    assert_eq!(
        template, "example-web",
        "{unit} is an instance of the shipped template"
    );
    // The unit's default image is the version it declares.
    let image = unit_environment("SIDEKICK_IMAGE");
    let version = unit_environment("SIDEKICK_VERSION");
    assert!(
        image.ends_with(&format!(":{version}")),
        "{image} vs {version}"
    );
}

#[tokio::test]
async fn the_example_servers_readme_publishes_an_update_the_example_config_accepts_for_the_unit() {
    let config = example_config();
    let app = config["update"]["app_id"].as_str().unwrap();
    let server = LocalService::start().await;
    // Every request that sets the service up; the README's last one deletes the app again.
    for (method, path, body) in readme_requests(app) {
        if method != reqwest::Method::GET && method != reqwest::Method::DELETE {
            server.admin(method, &path, body).await;
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let here = dir.path().join("server.toml");
    std::fs::write(
        &here,
        format!("[update]\nserver = \"{}\"\n", server.endpoint()),
    )
    .unwrap();
    let version = unit_environment("SIDEKICK_VERSION");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidekick"))
        .args([
            "update-check",
            "--standalone",
            "--current-version",
            &version,
        ])
        .arg("--config")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/config/web.toml"))
        .arg("--config")
        .arg(&here)
        .env("SIDEKICK_CONFIG_ROOT", dir.path())
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\nstderr: {stderr}"));
    assert_eq!(report["status"], "update", "{report}\nstderr: {stderr}");
    assert_eq!(report["version"], "2.0.0", "{report}");
    // The same repository the unit runs today, tagged with the offered version.
    let image = report["image"].as_str().unwrap();
    let running = unit_environment("SIDEKICK_IMAGE");
    let repository = running.rsplit_once(':').unwrap().0;
    assert_eq!(image, format!("{repository}:2.0.0"), "{report}");
}
