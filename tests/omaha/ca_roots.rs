//! `sidekick update-check` in a root with no CA bundle, as in a `FROM scratch` image or a minimal
//! container: `SSL_CERT_FILE` names an empty file, so the system's root set is empty.

use std::path::Path;

use super::example_service::{LocalService, relaxed_policy};
use super::*;

/// Runs `update-check` against `server` with an empty system root set; returns exit code,
/// stdout and stderr.
async fn check_without_roots(dir: &Path, server: &str) -> (Option<i32>, String, String) {
    let config = dir.join("sidekick.toml");
    std::fs::write(
        &config,
        format!(
            "[registration]\nport = 8080\n[update]\nserver = \"{server}\"\napp_id = \"{APP}\"\n\
             image = \"{{codebase}}\"\n"
        ),
    )
    .unwrap();
    let no_roots = dir.join("no-roots.pem");
    std::fs::write(&no_roots, "").unwrap();
    let no_root_dir = dir.join("no-roots.d");
    std::fs::create_dir_all(&no_root_dir).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidekick"))
        .args([
            "update-check",
            "--standalone",
            "--unit",
            "web@1",
            "--current-version",
            "1.0.0",
        ])
        .arg("--config")
        .arg(&config)
        .env("SIDEKICK_CONFIG_ROOT", dir)
        .env("SSL_CERT_FILE", &no_roots)
        .env("SSL_CERT_DIR", &no_root_dir)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn update_check_over_plain_http_works_with_no_ca_roots_on_the_machine() {
    let server = LocalService::start().await;
    server.setup_app(APP, relaxed_policy()).await;
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = check_without_roots(dir.path(), server.endpoint().as_str()).await;
    assert_eq!(
        (code, stdout.trim()),
        (Some(0), r#"{"status":"no-update"}"#),
        "stderr: {stderr}"
    );
}

#[tokio::test]
async fn update_check_over_https_with_no_ca_roots_fails_naming_the_package_that_provides_them() {
    let dir = tempfile::tempdir().unwrap();
    // Never contacted: the client cannot be built without a root to verify against.
    let (code, stdout, stderr) =
        check_without_roots(dir.path(), "https://127.0.0.1:9/v1/update/").await;
    assert_eq!(code, Some(1), "stdout: {stdout}\nstderr: {stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["kind"], "setup", "{report}");
    let detail = report.to_string();
    assert!(
        detail.contains("No CA certificates") && detail.contains("ca-certificates"),
        "{report}"
    );
}
