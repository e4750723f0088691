//! A FleetLock URL may carry credentials (basic auth as `user:password@`, a token in the query):
//! no error text of the client shows them, whether the server refuses or cannot be reached.

use sidekick::slot::{FleetLockSlots, SlotError, SlotLock};
use url::Url;

use super::fleetlock_server::{Flavour, serve};
use super::support::temp_dir;
use super::who;

const SECRETS: &[&str] = &["hunter2", "ops:", "s3cret"];

fn assert_no_secret(text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "shows {secret}: {text}");
    }
}

/// `base` with `ops:hunter2@` and `?token=s3cret` added.
fn with_credentials(base: &Url) -> Url {
    let mut url = base.clone();
    url.set_username("ops").unwrap();
    url.set_password(Some("hunter2")).unwrap();
    url.set_query(Some("token=s3cret"));
    url
}

#[tokio::test]
async fn fleetlock_errors_show_the_url_without_its_credentials() {
    let (base, _state) = serve(Flavour::Airlock).await;
    let dir = temp_dir("fleetlock-secrets");
    let base = with_credentials(&base);
    // Refused: an unknown group is a 400 naming the URL.
    let stray = FleetLockSlots::new(&base, "no-such-group", &who("a"), dir.path()).unwrap();
    let err = stray.acquire("2.0.0").await.expect_err("refused");
    assert!(matches!(err, SlotError::Refused { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("127.0.0.1"), "names the server: {text}");
    assert_no_secret(&text);
    assert_no_secret(&format!("{err:?}"));

    // Unreachable: nothing listens on port 1.
    let dead = with_credentials(&Url::parse("http://127.0.0.1:1/fleetlock").unwrap());
    let slots = FleetLockSlots::new(&dead, "web", &who("a"), dir.path()).unwrap();
    let err = slots.acquire("2.0.0").await.expect_err("unreachable");
    assert!(matches!(err, SlotError::Http { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert_no_secret(&text);
    assert_no_secret(&format!("{err:?}"));
}
