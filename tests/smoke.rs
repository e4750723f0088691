//! Smoke tests: each part of the test environment (etcd, systemd in its container, Docker app
//! images, Traefik, the image registry) starts, answers and stops again.

mod support;

use std::process::Command;
use std::time::Duration;

use etcd_client::PutOptions;
use support::etcd::{self, Etcd};
use support::images::{self, Container};
use support::registry::{self, Registry};
use support::systemd::{self, Job, Systemd};
use support::traefik::{self, Traefik};
use support::{free_port, http_get, poll_until, prerequisites_met, run, wait_for_http_ok};

/// An app container answers within seconds; generous for a loaded 2-core machine.
const APP_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Traefik follows etcd within a few seconds.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn etcd_grants_a_lease_and_serves_a_key_put_with_it() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;

    let lease = client.lease_grant(10, None).await.expect("lease grant");
    assert!(lease.ttl() > 0, "lease granted with ttl {}", lease.ttl());
    let put = PutOptions::new().with_lease(lease.id());
    client
        .put("smoke/key", "value", Some(put))
        .await
        .expect("put with lease");

    let got = client.get("smoke/key", None).await.expect("get");
    let kv = &got.kvs()[0];
    assert_eq!(kv.value_str().unwrap(), "value");
    assert_eq!(kv.lease(), lease.id());
}

#[tokio::test]
async fn etcd_three_member_cluster_replicates_a_key_to_every_member() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start_cluster(3).await;
    let endpoints = etcd.endpoints();
    assert_eq!(endpoints.len(), 3);

    let mut first = etcd::connect(&endpoints[..1]).await.unwrap();
    first
        .put("smoke/cluster", "replicated", None)
        .await
        .unwrap();
    for endpoint in &endpoints {
        let mut c = etcd::connect(std::slice::from_ref(endpoint)).await.unwrap();
        let got = c
            .get("smoke/cluster", None)
            .await
            .expect("linearizable get");
        assert_eq!(
            got.kvs()[0].value_str().unwrap(),
            "replicated",
            "on {endpoint}"
        );
    }
    let members = first.member_list().await.unwrap();
    assert_eq!(members.members().len(), 3);
}

#[tokio::test]
async fn etcd_member_restarted_on_its_data_dir_keeps_its_keys() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let mut etcd = Etcd::start().await;
    etcd.client()
        .await
        .put("smoke/durable", "kept", None)
        .await
        .unwrap();

    etcd.stop();
    assert!(!etcd.member(0).is_running());
    etcd.restart().await;

    let got = etcd
        .client()
        .await
        .get("smoke/durable", None)
        .await
        .unwrap();
    assert_eq!(got.kvs()[0].value_str().unwrap(), "kept");
}

#[tokio::test]
async fn systemd_in_nspawn_container_answers_manager_version_over_zbus() {
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let systemd = Systemd::start().await;
    assert!(systemd.bus_address().starts_with("unix:path=/"));

    let version = systemd
        .manager()
        .await
        .version()
        .await
        .expect("Manager.Version");
    assert!(version.starts_with("25"), "systemd version {version}");
}

/// A service that runs the app image named by `SIDEKICK_IMAGE` on `port`, like the real app units.
fn app_unit(container: &str, port: u16, default_image: &str) -> String {
    let docker = images::docker_path();
    let docker = docker.display();
    format!(
        "[Unit]\n\
         Description=sidekick smoke app\n\
         [Service]\n\
         Environment=SIDEKICK_IMAGE={default_image}\n\
         ExecStartPre=-{docker} rm -f {container}\n\
         ExecStart={docker} run --rm --name {container} --network host -e PORT={port} ${{SIDEKICK_IMAGE}}\n\
         ExecStop={docker} stop -t 20 {container}\n"
    )
}

#[tokio::test]
async fn systemd_unit_from_bound_dir_runs_app_container_answering_http_on_loopback() {
    if !prerequisites_met(&[systemd::NEEDS, images::NEEDS].concat()) {
        return;
    }
    let image = images::app_image("1.0.0");
    let container = Container::guard(&images::unique_name("unit"));
    let port = free_port();
    let systemd = Systemd::start().await;
    systemd.write_unit(
        "smoke-app.service",
        &app_unit(container.name(), port, &image),
    );
    systemd.reload().await;

    let mgr = systemd.manager().await;
    let result = systemd::run_job(&mgr, Job::Start, "smoke-app.service").await;
    assert_eq!(result, "done", "{}", systemd.log_tail(20));

    let url = format!("http://127.0.0.1:{port}/");
    let body = wait_for_http_ok(&url, APP_START_TIMEOUT).await.unwrap();
    assert!(body.contains("1.0.0"), "page: {body}");

    let result = systemd::run_job(&mgr, Job::Stop, "smoke-app.service").await;
    assert_eq!(result, "done");
    assert_eq!(
        systemd::active_state(mgr.inner().connection(), "smoke-app.service").await,
        "inactive"
    );
}

#[tokio::test]
async fn systemd_dropin_reload_and_restart_change_reported_environment_and_serve_new_image() {
    if !prerequisites_met(&[systemd::NEEDS, images::NEEDS].concat()) {
        return;
    }
    let (old, new) = (images::app_image("1.0.0"), images::app_image("2.0.0"));
    let container = Container::guard(&images::unique_name("unit"));
    let port = free_port();
    let systemd = Systemd::start().await;
    let unit = "smoke-app.service";
    systemd.write_unit(unit, &app_unit(container.name(), port, &old));
    systemd.reload().await;
    let mgr = systemd.manager().await;
    let conn = mgr.inner().connection().clone();
    assert_eq!(systemd::run_job(&mgr, Job::Start, unit).await, "done");
    let url = format!("http://127.0.0.1:{port}/");
    let body = wait_for_http_ok(&url, APP_START_TIMEOUT).await.unwrap();
    assert!(body.contains("1.0.0"), "page: {body}");
    assert!(
        systemd::service_environment(&conn, unit)
            .await
            .contains(&format!("SIDEKICK_IMAGE={old}"))
    );

    systemd.write_dropin(
        unit,
        "50-sidekick.conf",
        &format!(
            "[Service]\nEnvironment=SIDEKICK_IMAGE={new}\nEnvironment=SIDEKICK_VERSION=2.0.0\n"
        ),
    );
    systemd.reload().await;
    assert_eq!(systemd::run_job(&mgr, Job::Restart, unit).await, "done");

    let env = systemd::service_environment(&conn, unit).await;
    assert!(
        env.contains(&format!("SIDEKICK_IMAGE={new}")),
        "Environment: {env:?}"
    );
    assert!(
        !env.contains(&format!("SIDEKICK_IMAGE={old}")),
        "Environment: {env:?}"
    );
    assert!(
        env.contains(&"SIDEKICK_VERSION=2.0.0".to_string()),
        "Environment: {env:?}"
    );
    let serves_new = poll_until(APP_START_TIMEOUT, "new image serves", || async {
        match http_get(&url).await? {
            (200, body) if body.contains("2.0.0") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    serves_new.unwrap();
    assert_eq!(systemd::run_job(&mgr, Job::Stop, unit).await, "done");
}

#[tokio::test]
async fn app_images_serve_their_version_and_3_0_0_fails_its_health_check() {
    if !prerequisites_met(images::NEEDS) {
        return;
    }
    for version in ["1.0.0", "2.0.0", "3.0.0"] {
        let port = free_port();
        let _app = images::run_app(&images::app_image(version), port);
        let url = format!("http://127.0.0.1:{port}");
        let served = wait_for_http_ok(&format!("{url}/version"), APP_START_TIMEOUT).await;
        assert_eq!(served.unwrap().trim(), version);
        let (status, body) = http_get(&format!("{url}/")).await.unwrap();
        if version == images::BROKEN_VERSION {
            assert!(
                !(200..300).contains(&status),
                "{version} / answered {status}"
            );
        } else {
            assert_eq!(status, 200);
            assert!(body.contains(version), "page: {body}");
        }
    }
}

#[tokio::test]
async fn app_container_exits_cleanly_on_sigterm_instead_of_being_killed() {
    if !prerequisites_met(images::NEEDS) {
        return;
    }
    let image = images::app_image("1.0.0");
    let container = Container::guard(&images::unique_name("sigterm"));
    let port = free_port();
    let env = format!("PORT={port}");
    let name = container.name();
    run(Command::new("docker").args([
        "run",
        "-d",
        "--network",
        "host",
        "--name",
        name,
        "-e",
        &env,
        &image,
    ]));
    wait_for_http_ok(&format!("http://127.0.0.1:{port}/"), APP_START_TIMEOUT)
        .await
        .unwrap();

    // With a 60 s grace, exit code 0 means PID 1 handled SIGTERM; 137 would be docker's SIGKILL.
    run(Command::new("docker").args(["stop", "-t", "60", name]));
    let code = run(Command::new("docker").args(["inspect", "-f", "{{.State.ExitCode}}", name]));
    assert_eq!(code.trim(), "0");
}

#[tokio::test]
async fn traefik_routes_a_request_to_a_backend_whose_key_was_put_into_etcd() {
    if !prerequisites_met(&[etcd::NEEDS, traefik::NEEDS].concat()) {
        return;
    }
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_url = format!("http://{}", backend.local_addr().unwrap());
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello from backend" }));
    tokio::spawn(async move { axum::serve(backend, app).await });

    let etcd = Etcd::start().await;
    let traefik = Traefik::start(&etcd.endpoint()).await;
    let mut client = etcd.client().await;
    for (key, value) in traefik::router_keys("smoke", "smoke.test", "smoke") {
        client.put(key, value, None).await.unwrap();
    }
    client
        .put(traefik::server_url_key("smoke", "web-1"), backend_url, None)
        .await
        .unwrap();

    let http = support::http_client();
    let routed = poll_until(ROUTE_TIMEOUT, "traefik routes to the backend", || async {
        let response = http
            .get(traefik.url())
            .header("Host", "smoke.test")
            .send()
            .await;
        let response = response.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.text().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("{status}: {body}"))
        }
    })
    .await;
    let body =
        routed.unwrap_or_else(|e| panic!("{e}\n--- traefik log ---\n{}", traefik.log_tail(30)));
    assert_eq!(body, "hello from backend");
}

#[tokio::test]
async fn image_pushed_to_local_registry_can_be_pulled_back() {
    if !prerequisites_met(&[registry::NEEDS, images::NEEDS].concat()) {
        return;
    }
    let image = images::app_image("2.0.0");
    let registry = Registry::start().await;
    let remote = images::push(&image, &registry.address());
    let inspect_id = |reference: &str| {
        run(Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", reference]))
    };
    assert!(
        Command::new("docker")
            .args(["image", "inspect", &remote])
            .output()
            .unwrap()
            .status
            .code()
            != Some(0),
        "{remote} must not exist locally before the pull"
    );

    run(Command::new("docker").args(["pull", &remote]));
    let pulled = inspect_id(&remote);
    images::remove_tag(&remote);
    assert_eq!(
        pulled,
        inspect_id(&image),
        "pulled image differs from the pushed one"
    );
}
