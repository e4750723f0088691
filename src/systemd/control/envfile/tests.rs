use super::*;

fn values(image: &str, version: &str) -> DropIn {
    DropIn {
        image: image.into(),
        version: version.into(),
    }
}

#[test]
fn escaping_round_trips_image_references_and_instance_names_without_a_backslash() {
    for text in [
        "localhost:5000/example-web:1.0.0",
        "registry.example.com/team/web@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "web_app/a__b:V1_2",
        "example-web-1",
        "web@1",
    ] {
        let escaped = escape_instance(text).unwrap();
        assert!(
            escaped
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '-' | '_')),
            "{escaped}"
        );
        assert_eq!(unescape_instance(&escaped).unwrap(), text);
    }
    assert_eq!(
        escape_instance("localhost:5000/web:1").unwrap(),
        "localhost:5000_sweb:1"
    );
}

#[test]
fn escaping_refuses_what_no_reference_holds_and_unescaping_what_escaping_never_writes() {
    for text in ["a b", "a\\x20", "$(id)", "a;b", "", "é"] {
        assert!(escape_instance(text).is_err(), "{text:?}");
    }
    for escaped in ["a_", "a_x", "a\\x2d", "a b", "", "a%i"] {
        assert!(unescape_instance(escaped).is_err(), "{escaped:?}");
    }
}

#[test]
fn template_units_are_refused_past_systemds_length_limit() {
    assert_eq!(
        template_unit(PREPULL_TEMPLATE, "localhost:5000/web:1").unwrap(),
        "sidekick-prepull@localhost:5000_sweb:1.service"
    );
    let long = format!("r.example.com/{}:1", "a".repeat(240));
    let err = template_unit(PREPULL_TEMPLATE, &long).unwrap_err();
    assert!(err.to_string().contains("past systemd's 255"), "{err}");
}

#[test]
fn the_file_holds_exactly_the_two_checked_values() {
    let text = render(&values("localhost:5000/web:2.0.0", "2.0.0")).unwrap();
    assert_eq!(
        text,
        "SIDEKICK_IMAGE=localhost:5000/web:2.0.0\nSIDEKICK_VERSION=2.0.0\n"
    );
    assert_eq!(
        parse(&text).unwrap(),
        Some(values("localhost:5000/web:2.0.0", "2.0.0"))
    );
    assert_eq!(parse("").unwrap(), None);
    for bad in [
        "SIDEKICK_IMAGE=web:2\nSIDEKICK_VERSION=2.0.0\nLD_PRELOAD=/tmp/x.so\n",
        "PATH=/tmp\nSIDEKICK_IMAGE=web:2\nSIDEKICK_VERSION=2.0.0\n",
        "SIDEKICK_IMAGE=web:2\n",
        "SIDEKICK_IMAGE=web:2\nSIDEKICK_IMAGE=web:3\nSIDEKICK_VERSION=2.0.0\n",
        "SIDEKICK_IMAGE=Web:2\nSIDEKICK_VERSION=2.0.0\n",
        "SIDEKICK_IMAGE=web:2\nSIDEKICK_VERSION=two\n",
        "SIDEKICK_IMAGE=\"web:2\"\nSIDEKICK_VERSION=2.0.0\n",
        "SIDEKICK_IMAGE=web:2 \nSIDEKICK_VERSION=2.0.0\n",
        " SIDEKICK_IMAGE=web:2\nSIDEKICK_VERSION=2.0.0\n",
    ] {
        let err = parse(bad).unwrap_err();
        assert_eq!(err.kind(), "invalid", "{bad:?}");
        assert!(!err.to_string().contains("/tmp"), "echoes the file: {err}");
    }
    let (kept, why) = restorable("SIDEKICK_IMAGE=web:1\nSIDEKICK_VERSION=1.0.0\nX=1\n");
    assert_eq!(kept, None);
    assert!(why.unwrap().contains("line 3"));
}

#[test]
fn apply_request_writes_the_env_file_from_a_valid_request_and_refuses_the_rest() {
    let root = tempfile::tempdir().unwrap();
    let (state, into) = (root.path().join("state"), root.path().join("versions"));
    let escaped = escape_instance("web-1").unwrap();
    let request = request_path(&state, "web-1");
    std::fs::create_dir_all(request.parent().unwrap()).unwrap();
    std::fs::write(
        &request,
        "SIDEKICK_IMAGE=localhost:5000/web:2.0.0\nSIDEKICK_VERSION=2.0.0\n",
    )
    .unwrap();
    let done = apply_request(&state, &into, &escaped).unwrap();
    assert!(done.contains("SIDEKICK_VERSION=2.0.0"), "{done}");
    let env = into.join("web-1.env");
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        "SIDEKICK_IMAGE=localhost:5000/web:2.0.0\nSIDEKICK_VERSION=2.0.0\n"
    );
    // Another variable: refused, the file stays as it was.
    std::fs::write(
        &request,
        "SIDEKICK_IMAGE=web:3\nSIDEKICK_VERSION=3.0.0\nLD_PRELOAD=/x\n",
    )
    .unwrap();
    assert!(apply_request(&state, &into, &escaped).is_err());
    assert!(std::fs::read_to_string(&env).unwrap().contains("2.0.0"));
    // A symlink in the request's place is not followed.
    std::fs::remove_file(&request).unwrap();
    std::os::unix::fs::symlink(&env, &request).unwrap();
    let err = apply_request(&state, &into, &escaped).unwrap_err();
    assert_eq!(err.kind(), "file", "{err}");
    // An empty request removes the file.
    std::fs::remove_file(&request).unwrap();
    std::fs::write(&request, "").unwrap();
    apply_request(&state, &into, &escaped).unwrap();
    assert!(!env.exists());
    // Instances that could leave the directory are refused before anything is read.
    for name in ["..", "a_sb"] {
        let err = apply_request(&state, &into, name).unwrap_err();
        assert_eq!(err.kind(), "invalid", "{name}: {err}");
    }
}

#[test]
fn the_prepull_instance_must_name_a_valid_image() {
    let ok = escape_instance("localhost:5000/web:2.0.0").unwrap();
    assert_eq!(
        image_of_instance(&ok).unwrap().as_str(),
        "localhost:5000/web:2.0.0"
    );
    let bad = escape_instance("localhost:5000/Web:2.0.0").unwrap();
    assert!(image_of_instance(&bad).is_err());
    assert!(image_of_instance("-x").is_err());
}
