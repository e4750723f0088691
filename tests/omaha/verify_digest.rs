//! `update.verify_digest` against the local registry and the example update service, through the
//! binary: the offer's `hash_sha256` must be the digest the registry resolves the offered tag to.
//! A tag re-pushed after publication is refused (3/0, errorcode 10); the same offer is taken
//! without the setting, which is the attack the setting closes.

use super::example_service::{LocalService, relaxed_policy};
use super::support::{self, images, prerequisites_met, registry::Registry, run};
use super::*;

/// Pushes the local image `local` as `remote` and returns the digest Docker reports for it
/// (lowercase hex), from `docker push`'s own output rather than from the code under test.
fn push(local: &str, remote: &str) -> String {
    run(std::process::Command::new("docker").args(["tag", local, remote]));
    let out = run(std::process::Command::new("docker").args(["push", remote]));
    images::remove_tag(remote);
    let digest = out
        .split_whitespace()
        .find_map(|word| word.strip_prefix("sha256:"))
        .filter(|hex| hex.len() == 64)
        .unwrap_or_else(|| panic!("no digest in `docker push {remote}`: {out}"));
    digest.to_string()
}

/// Publishes `version` of `app` as image `url` with `hash_sha256`.
async fn publish(server: &LocalService, version: &str, url: &str, sha256: &str) {
    let package = serde_json::json!({
        "version": version, "url": url, "filename": "web.tar", "hash_sha256": sha256, "size": 23,
    });
    let path = format!("api/apps/{APP}/channels/stable/publish");
    server.admin(reqwest::Method::POST, &path, package).await;
}

/// `sidekick update-check --standalone --current-version 1.0.0` with `extra` in `[update]`:
/// the exit code and the JSON it printed.
async fn check(server: &LocalService, extra: &str) -> (Option<i32>, serde_json::Value, String) {
    let dir = support::temp_dir("verify-digest");
    let config = dir.path().join("sidekick.toml");
    let text = format!(
        "[registration]\nport = 8080\n[update]\nserver = \"{}\"\napp_id = \"{APP}\"\n\
         image = \"{{codebase}}\"\n{extra}\n",
        server.endpoint()
    );
    std::fs::write(&config, text).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidekick"))
        .args(["update-check", "--standalone", "--unit", "web@1"])
        .args(["--current-version", "1.0.0", "--config"])
        .arg(&config)
        .env("SIDEKICK_CONFIG_ROOT", dir.path())
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}\n{stderr}"));
    (out.status.code(), json, stderr)
}

#[tokio::test]
async fn verify_digest_takes_the_published_tag_and_refuses_it_once_the_tag_moved() {
    if !prerequisites_met(&[support::registry::NEEDS, images::NEEDS].concat()) {
        return;
    }
    let registry = Registry::start().await;
    let remote = format!("{}/sidekick-test/verify:2.0.0", registry.address());
    let published = push(&images::app_image("2.0.0"), &remote);
    let server = LocalService::start().await;
    server.setup_app(APP, relaxed_policy()).await;
    publish(&server, "2.0.0", &remote, &published).await;

    // The registry agrees with the service: taken, pinned to the verified digest.
    let (code, json, stderr) = check(&server, "verify_digest = true").await;
    assert_eq!(code, Some(0), "{json}\n{stderr}");
    assert_eq!(json["status"], "update", "{json}");
    assert_eq!(
        json["image"],
        format!("{remote}@sha256:{published}"),
        "{json}"
    );

    // Someone re-pushes the tag with other content after publication.
    let moved = push(&images::app_image("1.0.0"), &remote);
    assert_ne!(moved, published, "the two images differ");
    let (code, json, stderr) = check(&server, "verify_digest = true").await;
    assert_eq!(code, Some(1), "{json}\n{stderr}");
    assert_eq!(json["kind"], "digest-mismatch", "{json}");
    let detail = json["detail"].as_str().unwrap_or_default();
    for part in [&remote, &published, &moved] {
        assert!(detail.contains(part.as_str()), "names {part}: {detail}");
    }
    assert!(detail.contains("tag moved"), "{detail}");
    let rows = server.instances(APP).await;
    let events = rows[0]["last_events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        events.iter().any(|e| e["event_type"] == 3
            && e["event_result"] == 0
            && e["error_code"] == error_code::DIGEST_MISMATCH),
        "a 3/0 with errorcode {}: {events:?}",
        error_code::DIGEST_MISMATCH
    );

    // Without the setting the moved tag would run: the service alone chose the image.
    let (code, json, stderr) = check(&server, "").await;
    assert_eq!(code, Some(0), "{json}\n{stderr}");
    assert_eq!(json["image"], remote, "{json}");
}

#[tokio::test]
async fn verify_digest_refuses_a_tag_the_registry_does_not_have_and_an_offer_without_a_hash() {
    if !prerequisites_met(support::registry::NEEDS) {
        return;
    }
    let registry = Registry::start().await;
    let missing = format!("{}/sidekick-test/verify:2.0.0", registry.address());
    let server = LocalService::start().await;
    server.setup_app(APP, relaxed_policy()).await;
    let hex = "3aed3129de50b959a97e4913ba485bd60e72d2bb6aa377d5ed404103f0680043";
    publish(&server, "2.0.0", &missing, hex).await;
    let (code, json, stderr) = check(&server, "verify_digest = true").await;
    assert_eq!(code, Some(1), "{json}\n{stderr}");
    assert_eq!(json["kind"], "digest-unverified", "{json}");
    let detail = json["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("404") && detail.contains(&missing),
        "{detail}"
    );

    let unhashed = LocalService::start().await;
    unhashed.setup_app(APP, relaxed_policy()).await;
    publish(&unhashed, "2.0.0", &missing, "").await;
    let (code, json, _) = check(&unhashed, "verify_digest = true").await;
    assert_eq!(
        (code, &json["kind"]),
        (Some(1), &serde_json::json!("unpinned"))
    );
}
