//! The example update service in-process, over real HTTP, driven by the real client.

use super::*;

pub(crate) struct LocalService {
    base: Url,
    http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LocalService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LocalService {
    pub(crate) async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let state = Arc::new(service::ServerState::in_memory());
        let task = tokio::spawn(async move {
            let _ = service::serve(listener, state).await;
        });
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            base,
            http: reqwest::Client::new(),
            task,
        }
    }

    pub(crate) async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let response = self
            .http
            .request(method, self.base.join(path).unwrap())
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    pub(crate) async fn setup_app(&self, app: &str, policy: serde_json::Value) {
        use reqwest::Method;
        self.admin(
            Method::PUT,
            &format!("api/apps/{app}"),
            serde_json::json!({"name": "web"}),
        )
        .await;
        self.publish(app, "1.0.0").await;
        let group = serde_json::json!({"track": "stable", "channel": "stable"});
        self.admin(Method::PUT, &format!("api/apps/{app}/groups/g1"), group)
            .await;
        self.admin(
            Method::PUT,
            &format!("api/apps/{app}/groups/g1/policy"),
            policy,
        )
        .await;
    }

    pub(crate) async fn publish(&self, app: &str, version: &str) {
        self.publish_url(app, version, &format!("registry.example.com/web:{version}"))
            .await;
    }

    pub(crate) async fn publish_url(&self, app: &str, version: &str, url: &str) {
        let package = serde_json::json!({
            "version": version,
            "url": url,
            "filename": "web.tar",
            "hash": "2jmj7l5rSw0yVb/vlWAYkK/YBwk=",
            "hash_sha256": "3aed3129de50b959a97e4913ba485bd60e72d2bb6aa377d5ed404103f0680043",
            "size": 23,
        });
        let path = format!("api/apps/{app}/channels/stable/publish");
        self.admin(reqwest::Method::POST, &path, package).await;
    }

    pub(crate) fn endpoint(&self) -> Url {
        self.base.join("v1/update/").unwrap()
    }

    pub(crate) fn source(&self, app: AppInstance) -> HttpUpdateSource {
        let endpoint = self.base.join("v1/update/").unwrap();
        HttpUpdateSource::new(endpoint, app, short_timeouts(), None).unwrap()
    }

    pub(crate) async fn instances(&self, app: &str) -> Vec<serde_json::Value> {
        let url = self
            .base
            .join(&format!("api/apps/{app}/instances"))
            .unwrap();
        let text = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    pub(crate) async fn raw(&self, body: &str) -> String {
        let url = self.base.join("v1/update/").unwrap();
        let response = self
            .http
            .post(url)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        response.text().await.unwrap()
    }
}

pub(crate) fn relaxed_policy() -> serde_json::Value {
    serde_json::json!({"max_updates_per_period": 10, "period_interval": "1h", "update_timeout": "1h"})
}

#[tokio::test]
async fn no_update_then_publish_then_update_then_complete() {
    let server = LocalService::start().await;
    server.setup_app(APP, relaxed_policy()).await;
    let source = server.source(instance(APP, "web-1"));
    let current = v("1.0.0");
    assert_eq!(
        source.check(&current, false).await.unwrap(),
        CheckOutcome::NoUpdate
    );

    server.publish(APP, "2.0.0").await;
    let CheckOutcome::Update(offer) = source.check(&current, false).await.unwrap() else {
        panic!("expected an update after publishing 2.0.0");
    };
    let update = validate_offer(&offer, &current, "{codebase}", true).unwrap();
    assert_eq!(
        update.image.as_str(),
        "registry.example.com/web:2.0.0@sha256:3aed3129de50b959a97e4913ba485bd60e72d2bb6aa377d5ed404103f0680043"
    );
    // A grant is re-served until the instance reports the new version.
    assert!(matches!(
        source.check(&current, false).await.unwrap(),
        CheckOutcome::Update(_)
    ));

    for event in [
        Event::PrepullStarted,
        Event::PrepullFinished,
        Event::SwapStarted,
    ] {
        source.send_event(&current, event).await.unwrap();
    }
    assert_eq!(server.instances(APP).await[0]["status"], "installed");
    source
        .send_event(&current, Event::UpdateComplete)
        .await
        .unwrap();
    let row = &server.instances(APP).await[0];
    assert_eq!(
        (row["status"].as_str(), row["version"].as_str()),
        (Some("complete"), Some("2.0.0"))
    );
    assert_eq!(row["last_events"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        source.check(&v("2.0.0"), false).await.unwrap(),
        CheckOutcome::NoUpdate
    );
}

#[tokio::test]
async fn a_second_instance_is_on_hold_with_one_update_per_period() {
    let server = LocalService::start().await;
    let policy = serde_json::json!({"max_updates_per_period": 1, "period_interval": "1h", "update_timeout": "1h"});
    server.setup_app(APP, policy).await;
    server.publish(APP, "2.0.0").await;
    let first = server.source(instance(APP, "web-1"));
    let second = server.source(instance(APP, "web-2"));
    let current = v("1.0.0");
    assert!(matches!(
        first.check(&current, false).await.unwrap(),
        CheckOutcome::Update(_)
    ));
    assert_eq!(
        second.check(&current, true).await.unwrap(),
        CheckOutcome::OnHold {
            reason: "error-maxUpdatesPerPeriodLimitReached".into()
        }
    );
    let statuses: Vec<_> = server
        .instances(APP)
        .await
        .iter()
        .map(|i| i["status"].clone())
        .collect();
    assert!(statuses.contains(&"on-hold".into()) && statuses.contains(&"update-granted".into()));
}

#[tokio::test]
async fn instances_are_listed_by_the_sidekicks_instance_name_beside_the_machine_id() {
    let server = LocalService::start().await;
    server.setup_app(APP, relaxed_policy()).await;
    for name in ["web-1", "web-2"] {
        let source = server.source(instance(APP, name));
        source.check(&v("1.0.0"), false).await.unwrap();
    }
    let mut rows: Vec<(String, String)> = server
        .instances(APP)
        .await
        .iter()
        .map(|row| {
            let field = |key: &str| row[key].as_str().unwrap_or_default().to_string();
            (field("name"), field("machine_id"))
        })
        .collect();
    rows.sort();
    let expected: Vec<(String, String)> = ["web-1", "web-2"]
        .iter()
        .map(|name| (name.to_string(), instance(APP, name).machine_id))
        .collect();
    assert_eq!(rows, expected);
}

#[tokio::test]
async fn an_unknown_app_is_an_error() {
    let server = LocalService::start().await;
    server.setup_app(APP, relaxed_policy()).await;
    let source = server.source(instance("00000000-0000-4000-8000-000000000000", "web-1"));
    match source.check(&v("1.0.0"), false).await.unwrap() {
        CheckOutcome::Error { kind, detail } => {
            assert_eq!(kind, ResponseErrorKind::UnknownApp);
            assert_eq!(detail, "error-failedToRetrieveUpdatePackageInfo");
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_example_service_answers_byte_for_byte_like_nebraska() {
    let server = LocalService::start().await;
    server.setup_app(FLATCAR_APP, relaxed_policy()).await;
    let package = serde_json::json!({
        "version": "2.0.0", "url": "coreos/example-apache:2.0.0", "filename": "example-apache.tar",
        "hash": "2jmj7l5rSw0yVb/vlWAYkK/YBwk=", "size": 23,
    });
    server
        .admin(
            reqwest::Method::POST,
            &format!("api/apps/{FLATCAR_APP}/channels/stable/publish"),
            package,
        )
        .await;
    let check = |version: &str, machine: &str| {
        format!(
            "<request protocol=\"3.0\"><os platform=\"linux\" arch=\"x64\"></os><app appid=\"{FLATCAR_APP}\" \
             version=\"{version}\" track=\"stable\" machineid=\"{machine}\"><ping active=\"1\"></ping>\
             <updatecheck></updatecheck></app></request>"
        )
    };
    assert_eq!(
        server.raw(&check("1.0.0", "m1")).await,
        fixture("b-update-docker.xml")
    );
    let policy = serde_json::json!({"max_updates_per_period": 1, "period_interval": "1h", "update_timeout": "1h"});
    server
        .admin(
            reqwest::Method::PUT,
            &format!("api/apps/{FLATCAR_APP}/groups/g1/policy"),
            policy,
        )
        .await;
    assert_eq!(
        server.raw(&check("1.0.0", "m2")).await,
        fixture("d-rate-limited.xml")
    );
    let unknown =
        check("1.0.0", "m3").replace(FLATCAR_APP, "{00000000-0000-0000-0000-000000000000}");
    assert_eq!(server.raw(&unknown).await, fixture("e-unknown-app.xml"));
    assert_eq!(
        server.raw("not xml").await,
        fixture("g-malformed-request.xml")
    );
}

#[tokio::test]
async fn admin_answers_end_with_a_newline_and_a_deleted_app_is_gone() {
    let server = LocalService::start().await;
    server.setup_app(APP, relaxed_policy()).await;
    let get = |path: String| {
        let url = server.base.join(&path).unwrap();
        let http = server.http.clone();
        async move {
            let response = http.get(url).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, listing) = get(format!("api/apps/{APP}/instances")).await;
    assert_eq!((status, listing.as_str()), (200, "[]\n"));

    let url = server.base.join(&format!("api/apps/{APP}")).unwrap();
    let deleted = server.http.delete(url.clone()).send().await.unwrap();
    assert_eq!(deleted.status().as_u16(), 200);
    assert!(deleted.text().await.unwrap().ends_with("}\n"));
    let (status, error) = get(format!("api/apps/{APP}/instances")).await;
    assert_eq!(status, 404, "{error}");
    assert!(
        error.contains("no app") && error.ends_with("}\n"),
        "{error:?}"
    );
    let again = server.http.delete(url).send().await.unwrap();
    assert_eq!(again.status().as_u16(), 404);
}
