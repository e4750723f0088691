//! What the sidekick accepts from the network, through the binary: a plain-http update service on
//! another host is refused unless allowed (and then warned about), and `pin_digest` refuses an
//! offer it cannot pin.

use super::faults::{answering_server, offer_app};
use super::support;
use super::*;

/// Runs the binary with `args` and the config `text`; exit code, stdout, stderr.
async fn sidekick(
    dir: &std::path::Path,
    args: &[&str],
    text: &str,
) -> (Option<i32>, String, String) {
    let config = dir.join("sidekick.toml");
    std::fs::write(&config, text).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidekick"))
        .args(args)
        .args(["--log", "stderr", "--config"])
        .arg(&config)
        .env("SIDEKICK_CONFIG_ROOT", dir)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

fn config(server: &str, extra: &str) -> String {
    format!(
        "[instance]\nunit = \"web@1.service\"\n[registration]\nenabled = false\n\
         [health]\ncheck = \"none\"\n[update]\nserver = \"{server}\"\napp_id = \"{APP}\"\n{extra}\n"
    )
}

#[tokio::test]
async fn check_config_refuses_plain_http_to_another_host_and_warns_when_it_is_allowed() {
    let dir = support::temp_dir("update-insecure");
    // Never contacted: check-config only reads the configuration.
    let server = "http://10.0.0.8/v1/update/";
    let (code, _, stderr) = sidekick(dir.path(), &["check-config"], &config(server, "")).await;
    assert_eq!(code, Some(2), "{stderr}");
    for why in [
        "key `update.server`",
        "plain http://",
        "update.allow_insecure = true",
    ] {
        assert!(stderr.contains(why), "names `{why}`: {stderr}");
    }

    let allowed = config(server, "allow_insecure = true");
    let (code, stdout, stderr) = sidekick(dir.path(), &["check-config"], &allowed).await;
    assert_eq!(code, Some(0), "{stderr}");
    let warning = stderr
        .lines()
        .find(|line| line.contains("WARN") && line.contains("plain http://"))
        .unwrap_or_else(|| panic!("a WARN line: {stderr}"));
    assert!(warning.contains("10.0.0.8"), "{warning}");
    assert!(stdout.contains("allow_insecure = true"), "{stdout}");

    let loopback = config("http://127.0.0.1:1/v1/update/", "");
    let (code, _, stderr) = sidekick(dir.path(), &["check-config"], &loopback).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("WARN"), "{stderr}");
}

#[tokio::test]
async fn pin_digest_refuses_an_offer_without_sha256_as_unpinned() {
    let dir = support::temp_dir("update-unpinned");
    let body = format!(
        "<?xml version=\"1.0\"?><response protocol=\"3.0\">{}</response>",
        offer_app(APP, "2.0.0")
    );
    let server = answering_server(body).await.to_string();
    let check = ["update-check", "--standalone", "--current-version", "1.0.0"];
    let (code, stdout, stderr) =
        sidekick(dir.path(), &check, &config(&server, "pin_digest = true")).await;
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(json["kind"], "unpinned", "{json}");
    assert!(
        json["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("pin_digest"),
        "{json}"
    );
    // Without pin_digest the same offer is taken, unpinned (its codebase `r/web` has no tag, so
    // the template adds the version).
    let tagged = config(&server, "image = \"{codebase}:{version}\"");
    let (code, stdout, stderr) = sidekick(dir.path(), &check, &tagged).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("\"status\":\"update\""), "{stdout}");
}
