//! The shipped docs and units point only at things that exist: relative links resolve inside the
//! repository, nothing names a file that is not in it, every `src/…` path README.md and docs/*.md
//! name exists, and each unit's `Documentation=` is a doc the operator guide installs.

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

/// README.md and docs/*.md: the docs that describe the source tree.
fn source_docs() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    for entry in std::fs::read_dir(repo().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files
}

/// Every `src/…` path in `text`: from `src/` (not inside a longer word) up to the first
/// character that cannot be part of a path, without a sentence's closing `.`.
fn source_paths(text: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for (at, _) in text.match_indices("src/") {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '/' | '.')) {
            continue;
        }
        let path: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/' | '.'))
            .collect();
        paths.push(path.trim_end_matches('.').to_string());
    }
    paths
}

#[test]
fn source_paths_are_read_whole_and_not_from_inside_other_paths() {
    let text = "see `src/agent/machine/swap.rs`, src/slot/. and examples/x/src/main.rs";
    assert_eq!(
        source_paths(text),
        vec!["src/agent/machine/swap.rs", "src/slot/"]
    );
}

#[test]
fn every_source_path_the_docs_name_exists() {
    let mut missing = Vec::new();
    let mut named = 0;
    for file in source_docs() {
        let text = std::fs::read_to_string(&file).unwrap();
        for path in source_paths(&text) {
            named += 1;
            if !repo().join(&path).exists() {
                missing.push(format!("{} names {path}", relative(&file)));
            }
        }
    }
    assert!(
        named > 0,
        "the docs name no source path at all: is the scan broken?"
    );
    assert!(missing.is_empty(), "paths to nothing: {missing:#?}");
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
