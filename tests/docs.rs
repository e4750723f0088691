//! The shipped docs and units point only at things that exist: relative links resolve inside the
//! repository, nothing names a file that is not in it, and each unit's `Documentation=` is a doc
//! the operator guide installs.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, docs/*.md, examples/**/README.md.
fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    let mut dirs = vec![repo().join("docs"), repo().join("examples")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files
}

fn unit_files() -> Vec<PathBuf> {
    std::fs::read_dir(repo().join("units"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// Targets of inline markdown links `[text](target)`.
fn link_targets(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(target, _)| target.to_string()))
        .collect()
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo()).unwrap().display().to_string()
}

#[test]
fn relative_links_in_the_docs_resolve_inside_the_repository() {
    let mut broken = Vec::new();
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for target in link_targets(&text) {
            let external = ["http://", "https://", "mailto:", "#"];
            if external.iter().any(|p| target.starts_with(p)) {
                continue;
            }
            let path = target.split('#').next().unwrap_or_default();
            if !file.parent().unwrap().join(path).exists() {
                broken.push(format!("{}: {target}", relative(&file)));
            }
        }
    }
    assert!(broken.is_empty(), "links to nothing: {broken:#?}");
}

#[test]
fn no_doc_or_unit_names_a_file_that_is_not_in_the_repository() {
    let outside = ["DESIGN.md", "TESTING.md", "reference/omaha"];
    let mut found = Vec::new();
    for file in markdown_files().into_iter().chain(unit_files()) {
        let text = std::fs::read_to_string(&file).unwrap();
        for name in outside {
            if text.contains(name) {
                found.push(format!("{} names {name}", relative(&file)));
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn each_units_documentation_is_a_doc_the_operator_guide_installs() {
    let guide = std::fs::read_to_string(repo().join("docs/operator-guide.md")).unwrap();
    assert!(
        guide.contains("docs/*.md -t /usr/share/doc/sidekick/"),
        "the install steps put docs/*.md in /usr/share/doc/sidekick"
    );
    for unit in unit_files() {
        let text = std::fs::read_to_string(&unit).unwrap();
        for line in text.lines() {
            let Some(urls) = line.strip_prefix("Documentation=") else {
                continue;
            };
            for url in urls.split_whitespace() {
                let doc = url
                    .strip_prefix("file:///usr/share/doc/sidekick/")
                    .unwrap_or_else(|| {
                        panic!("{}: {url} is not an installed doc", relative(&unit))
                    });
                assert!(
                    repo().join("docs").join(doc).is_file(),
                    "{}: docs/{doc} does not exist",
                    relative(&unit)
                );
            }
        }
    }
}
