//! Tests of the tidy checks: each check fails on a planted violation and passes without it, and
//! the real workspace passes them all.

use std::path::{Path, PathBuf};

use super::*;

const NORMAL: Option<&str> = None;
const DEV: Option<&str> = Some("dev");
const BUILD: Option<&str> = Some("build");

/// A made-up `cargo metadata` graph: package ids are package names, members live in
/// `/ws/<name>/`.
#[derive(Default)]
struct Fake {
    packages: Vec<Package>,
    nodes: Vec<Node>,
    members: Vec<String>,
}

impl Fake {
    /// A workspace member with its declared dependencies (replacing one of the same name).
    fn member(mut self, name: &str, deps: &[(&str, Option<&str>)]) -> Self {
        self.members.retain(|member| member != name);
        self.members.push(name.to_owned());
        self.package(name, deps, Vec::new())
    }

    /// A member with a build script.
    fn member_with_build_script(mut self, name: &str, deps: &[(&str, Option<&str>)]) -> Self {
        self.members.retain(|member| member != name);
        self.members.push(name.to_owned());
        let build = Target {
            kind: vec!["custom-build".to_owned()],
            src_path: PathBuf::from(format!("/ws/{name}/build.rs")),
        };
        self.package(name, deps, vec![build])
    }

    /// A registry package with its normal dependencies.
    fn external(self, name: &str, deps: &[&str]) -> Self {
        let deps: Vec<(&str, Option<&str>)> = deps.iter().map(|dep| (*dep, NORMAL)).collect();
        self.package(name, &deps, Vec::new())
    }

    fn package(
        mut self,
        name: &str,
        deps: &[(&str, Option<&str>)],
        mut targets: Vec<Target>,
    ) -> Self {
        self.packages.retain(|package| package.id != name);
        self.nodes.retain(|node| node.id != name);
        targets.push(Target {
            kind: vec!["lib".to_owned()],
            src_path: PathBuf::from(format!("/ws/{name}/src/lib.rs")),
        });
        self.packages.push(Package {
            id: name.to_owned(),
            name: name.to_owned(),
            manifest_path: PathBuf::from(format!("/ws/{name}/Cargo.toml")),
            dependencies: deps
                .iter()
                .map(|(dep, kind)| Dependency {
                    name: (*dep).to_owned(),
                    kind: kind.map(str::to_owned),
                    rename: None,
                })
                .collect(),
            targets,
        });
        let mut node = Node {
            id: name.to_owned(),
            deps: Vec::new(),
        };
        for (dep, kind) in deps {
            let info = DepKindInfo {
                kind: kind.map(str::to_owned),
            };
            match node.deps.iter_mut().find(|edge| edge.pkg == *dep) {
                Some(edge) => edge.dep_kinds.push(info),
                None => node.deps.push(NodeDep {
                    name: dep.replace('-', "_"),
                    pkg: (*dep).to_owned(),
                    dep_kinds: vec![info],
                }),
            }
        }
        self.nodes.push(node);
        self
    }

    /// Renames the dependency `dep` of `member` to `rename`.
    fn rename(mut self, member: &str, dep: &str, rename: &str) -> Self {
        for package in self.packages.iter_mut().filter(|p| p.name == member) {
            for dependency in package.dependencies.iter_mut().filter(|d| d.name == dep) {
                dependency.rename = Some(rename.to_owned());
            }
        }
        for node in self.nodes.iter_mut().filter(|node| node.id == member) {
            for edge in node.deps.iter_mut().filter(|edge| edge.pkg == dep) {
                edge.name = rename.to_owned();
            }
        }
        self
    }

    /// The metadata, with a leaf package for every dependency not added explicitly.
    fn build(mut self) -> Metadata {
        let missing: Vec<String> = self
            .nodes
            .iter()
            .flat_map(|node| &node.deps)
            .map(|edge| edge.pkg.clone())
            .filter(|pkg| !self.packages.iter().any(|package| &package.id == pkg))
            .collect();
        for pkg in missing {
            if !self.packages.iter().any(|package| package.id == pkg) {
                self = self.external(&pkg, &[]);
            }
        }
        Metadata {
            packages: self.packages,
            workspace_members: self.members,
            resolve: Resolve { nodes: self.nodes },
            workspace_root: PathBuf::from("/ws"),
        }
    }
}

fn file(path: &str, text: &str) -> SourceFile {
    SourceFile {
        path: PathBuf::from(path),
        text: text.to_owned(),
    }
}

fn messages(violations: &[Violation]) -> Vec<String> {
    violations.iter().map(|v| v.message.clone()).collect()
}

// --- Layering --------------------------------------------------------------------------------

/// Today's graph, in miniature.
fn layered() -> Fake {
    Fake::default()
        .member("cdc-model", &[("serde", NORMAL), ("tokio", DEV)])
        .member(
            "cdc-etcd",
            &[("cdc-model", NORMAL), ("etcd-client", NORMAL)],
        )
        .member("cdc-p2p", &[("cdc-model", NORMAL), ("tonic", NORMAL)])
        .member("cdc-election", &[("cdc-etcd", NORMAL)])
        .member("cdc-orchestrator", &[("cdc-etcd", NORMAL)])
        .member(
            "cdc-capture",
            &[
                ("cdc-election", NORMAL),
                ("cdc-orchestrator", NORMAL),
                ("cdc-p2p", NORMAL),
            ],
        )
        .member("cdc-server", &[("cdc-capture", NORMAL)])
        .member("cdc-tests", &[("cdc-capture", DEV)])
        .member("xtask", &[("anyhow", NORMAL)])
        .external("etcd-client", &["tonic", "tokio"])
        .external("tonic", &["tokio"])
}

#[test]
fn the_layering_of_today_passes() {
    assert_eq!(
        messages(&check_layering(&layered().build(), RULES)),
        Vec::<String>::new()
    );
}

#[test]
fn model_reaching_tokio_transitively_fails_with_the_path() {
    let metadata = layered()
        .member("cdc-model", &[("chrono", NORMAL)])
        .external("chrono", &["tokio"])
        .build();
    let violations = check_layering(&metadata, RULES);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].check, Check::Layering);
    assert!(
        violations[0]
            .message
            .starts_with("cdc-model reaches tokio (cdc-model -> chrono -> tokio)"),
        "{violations:?}"
    );
}

#[test]
fn p2p_reaching_etcd_fails() {
    let metadata = layered()
        .member("cdc-p2p", &[("cdc-model", NORMAL), ("cdc-etcd", NORMAL)])
        .build();
    let found = messages(&check_layering(&metadata, RULES));
    assert!(
        found
            .iter()
            .any(|m| m.starts_with("cdc-p2p reaches cdc-etcd")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|m| m
                .starts_with("cdc-p2p reaches etcd-client (cdc-p2p -> cdc-etcd -> etcd-client)")),
        "{found:?}"
    );
}

#[test]
fn orchestrator_naming_tonic_or_reaching_p2p_fails() {
    let metadata = layered()
        .member(
            "cdc-orchestrator",
            &[("cdc-etcd", NORMAL), ("tonic", NORMAL), ("cdc-p2p", NORMAL)],
        )
        .build();
    let found = messages(&check_layering(&metadata, RULES));
    assert!(
        found
            .iter()
            .any(|m| m.starts_with("cdc-orchestrator reaches tonic (cdc-orchestrator -> tonic)")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|m| m.starts_with("cdc-orchestrator reaches cdc-p2p")),
        "{found:?}"
    );
}

#[test]
fn election_reaching_the_orchestrator_fails() {
    let metadata = layered()
        .member(
            "cdc-election",
            &[("cdc-etcd", NORMAL), ("cdc-orchestrator", NORMAL)],
        )
        .build();
    let found = messages(&check_layering(&metadata, RULES));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("cdc-election reaches cdc-orchestrator"));
}

#[test]
fn a_lower_crate_reaching_capture_fails() {
    let metadata = layered()
        .member(
            "cdc-etcd",
            &[("cdc-model", NORMAL), ("cdc-capture", NORMAL)],
        )
        .build();
    let found = messages(&check_layering(&metadata, RULES));
    assert!(
        found
            .iter()
            .any(|m| m.starts_with("cdc-etcd reaches cdc-capture")),
        "{found:?}"
    );
}

#[test]
fn the_next_crates_reaching_capture_fail_once_each() {
    let metadata = layered()
        .member("cdc-owner", &[("cdc-capture", NORMAL)])
        .member("cdc-processor", &[("cdc-server-glue", NORMAL)])
        .external("cdc-server-glue", &["cdc-capture"])
        .member("cdc-source-tikv", &[("cdc-capture", NORMAL)])
        .member("cdc-sink", &[("cdc-capture", NORMAL)])
        .member(
            "cdc-sink-kafka",
            &[("cdc-model", NORMAL), ("cdc-capture", NORMAL)],
        )
        .build();
    let found = messages(&check_layering(&metadata, RULES));
    for crate_name in [
        "cdc-owner",
        "cdc-processor",
        "cdc-source-tikv",
        "cdc-sink",
        "cdc-sink-kafka",
    ] {
        let reports: Vec<&String> = found
            .iter()
            .filter(|m| m.starts_with(&format!("{crate_name} reaches cdc-capture")))
            .collect();
        assert_eq!(reports.len(), 1, "{crate_name}: {found:?}");
    }
    // Two edges from the same crate to the glue are reported once, under the first rule.
    assert!(
        found.iter().all(|m| !m.contains("only cdc-server")),
        "{found:?}"
    );
}

#[test]
fn the_scheduler_may_depend_on_model_only() {
    let allowed = layered()
        .member("cdc-scheduler", &[("cdc-model", NORMAL)])
        .build();
    assert_eq!(
        messages(&check_layering(&allowed, RULES)),
        Vec::<String>::new()
    );
    let metadata = layered()
        .member(
            "cdc-scheduler",
            &[("cdc-model", NORMAL), ("cdc-etcd", NORMAL)],
        )
        .build();
    let found = messages(&check_layering(&metadata, RULES));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("cdc-scheduler reaches cdc-etcd"));
}

#[test]
fn xtask_linking_a_cdc_crate_fails_even_through_a_dev_dependency() {
    let metadata = layered()
        .member("xtask", &[("anyhow", NORMAL), ("cdc-model", DEV)])
        .build();
    let found = messages(&check_layering(&metadata, RULES));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("xtask reaches cdc-model (xtask -> cdc-model)"));
}

#[test]
fn dev_dependencies_of_a_layered_crate_are_not_followed() {
    // cdc-model's dev-dependency on tokio (in `layered`) and a dev-dependency of a dependency.
    let metadata = layered()
        .member("cdc-p2p", &[("cdc-model", NORMAL), ("cdc-etcd", DEV)])
        .build();
    assert_eq!(
        messages(&check_layering(&metadata, RULES)),
        Vec::<String>::new()
    );
}

// --- Unused dependencies ---------------------------------------------------------------------

const ROOT_MANIFEST: &str = r#"
[workspace]
members = ["crates/*"]

[workspace.dependencies]
# Ours.
cdc-model = { path = "cdc-model" }
serde = { version = "1", features = ["derive"] }
humantime-serde = "1"
"quoted" = "1"
tokio.version = "1"

[workspace.lints.rust]
unused = "warn"
"#;

fn used_workspace() -> Fake {
    Fake::default()
        .member(
            "cdc-model",
            &[("serde", NORMAL), ("humantime-serde", NORMAL)],
        )
        .member_with_build_script(
            "cdc-p2p",
            &[
                ("cdc-model", NORMAL),
                ("quoted", BUILD),
                ("tokio", DEV),
                ("tonic-prost", NORMAL),
            ],
        )
}

fn used_files() -> Vec<SourceFile> {
    vec![
        file(
            "cdc-model/src/lib.rs",
            "//! Model.\n#[derive(serde::Serialize)]\nstruct A {\n    #[serde(with = \"humantime_serde\")]\n    d: u64,\n}\n",
        ),
        file("cdc-p2p/src/lib.rs", "//! P2p.\nuse cdc_model as model;\n"),
        file(
            "cdc-p2p/build.rs",
            "//! Build.\nfn main() { quoted::run(); }\n",
        ),
        file(
            "cdc-p2p/src/server/tests.rs",
            "//! Tests.\n#[tokio::test]\nasync fn t() {}\n",
        ),
    ]
}

#[test]
fn used_dependencies_pass() {
    let found = check_unused_dependencies(&used_workspace().build(), &used_files(), ROOT_MANIFEST);
    assert_eq!(messages(&found), Vec::<String>::new());
}

#[test]
fn a_dependency_no_source_names_fails() {
    let metadata = used_workspace()
        .member("cdc-etcd", &[("cdc-model", NORMAL), ("futures", NORMAL)])
        .build();
    let mut files = used_files();
    // Named in a comment and as part of a longer name only.
    files.push(file(
        "cdc-etcd/src/lib.rs",
        "//! Etcd.\n// futures::join! is not used\nuse cdc_model::Id;\nfn f(my_futures: u8) {}\n",
    ));
    let found = messages(&check_unused_dependencies(&metadata, &files, ROOT_MANIFEST));
    assert_eq!(
        found,
        [
            "cdc-etcd declares the normal dependency futures but none of its library or binaries \
          names `futures`"
        ]
    );
}

#[test]
fn a_normal_dependency_only_tests_name_fails() {
    let metadata = used_workspace()
        .member("cdc-etcd", &[("rand", NORMAL)])
        .build();
    let mut files = used_files();
    files.push(file("cdc-etcd/src/lib.rs", "//! Etcd.\n"));
    files.push(file("cdc-etcd/tests/it.rs", "//! It.\nuse rand::Rng;\n"));
    let found = messages(&check_unused_dependencies(&metadata, &files, ROOT_MANIFEST));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("cdc-etcd declares the normal dependency rand"));
}

#[test]
fn a_build_dependency_only_the_library_names_fails() {
    let metadata = used_workspace().build();
    let mut files = used_files();
    files.retain(|file| file.path != Path::new("cdc-p2p/build.rs"));
    files.push(file("cdc-p2p/build.rs", "//! Build.\nfn main() {}\n"));
    files.push(file("cdc-p2p/src/x.rs", "//! X.\nuse quoted::Thing;\n"));
    let found = messages(&check_unused_dependencies(&metadata, &files, ROOT_MANIFEST));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("cdc-p2p declares the build dependency quoted"));
}

#[test]
fn a_renamed_dependency_is_looked_for_under_its_rename() {
    let metadata = used_workspace()
        .member("cdc-etcd", &[("etcd-client", NORMAL)])
        .rename("cdc-etcd", "etcd-client", "etcd")
        .build();
    let mut files = used_files();
    files.push(file(
        "cdc-etcd/src/lib.rs",
        "//! Etcd.\nuse etcd_client::Client;\n",
    ));
    let found = messages(&check_unused_dependencies(&metadata, &files, ROOT_MANIFEST));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].ends_with("names `etcd`"), "{found:?}");
    files.push(file(
        "cdc-etcd/src/x.rs",
        "//! X.\nfn f() { etcd::connect(); }\n",
    ));
    let found = messages(&check_unused_dependencies(&metadata, &files, ROOT_MANIFEST));
    assert_eq!(found, Vec::<String>::new());
}

#[test]
fn an_unused_workspace_entry_fails() {
    let manifest =
        ROOT_MANIFEST.replace("\"quoted\" = \"1\"", "\"quoted\" = \"1\"\ntoml = \"0.9\"");
    let found = messages(&check_unused_dependencies(
        &used_workspace().build(),
        &used_files(),
        &manifest,
    ));
    assert_eq!(
        found,
        ["[workspace.dependencies] lists toml, which no member declares"]
    );
}

#[test]
fn workspace_entries_are_the_keys_of_the_table() {
    assert_eq!(
        workspace_dependencies(ROOT_MANIFEST),
        ["cdc-model", "serde", "humantime-serde", "quoted", "tokio"]
    );
}

#[test]
fn names_crate_recognises_the_ways_code_names_a_crate() {
    for code in [
        "use foo;",
        "pub use foo::Bar;",
        "extern crate foo;",
        "let x = ::foo::bar();",
        "#[foo::main]",
        "#[serde(with = \"foo\")]",
        "use foo as bar;",
        "foo :: bar()",
    ] {
        assert!(names_crate(code, "foo"), "{code}");
    }
    for code in [
        "use foobar::X;",
        "let foo = 1;",
        "my_foo::x()",
        "\"foo bar\"",
        "reuse foo",
    ] {
        assert!(!names_crate(code, "foo"), "{code}");
    }
}

// --- Pure modules --------------------------------------------------------------------------

#[test]
fn a_pure_module_naming_an_io_crate_fails() {
    let src = "crates/cdc-orchestrator/src";
    let planted = [
        (
            format!("{src}/global.rs"),
            "//! G.\nuse cdc_etcd::key::CdcKey;\n",
        ),
        (
            format!("{src}/global/tests.rs"),
            "//! T.\n\nfn f() { etcd_client::connect(); }\n",
        ),
        (format!("{src}/patch.rs"), "//! P.\nuse cdc_etcd;\n"),
        (
            format!("{src}/batch.rs"),
            "//! B.\nfn f() -> tonic::Status { todo!() }\n",
        ),
    ];
    let files: Vec<SourceFile> = planted
        .iter()
        .map(|(path, text)| file(path, text))
        .collect();
    let found = check_pure_modules(&files, PURE_MODULES);
    assert!(found.iter().all(|v| v.check == Check::PureModule));
    let found = messages(&found);
    assert_eq!(found.len(), 4, "{found:?}");
    assert!(found[0].starts_with(&format!(
        "{src}/global.rs:2: a pure module names `cdc_etcd`"
    )));
    assert!(found[1].starts_with(&format!(
        "{src}/global/tests.rs:3: a pure module names `etcd_client`"
    )));
    assert!(found[2].starts_with(&format!("{src}/patch.rs:2: a pure module names `cdc_etcd`")));
    assert!(found[3].starts_with(&format!("{src}/batch.rs:2: a pure module names `tonic`")));
}

#[test]
fn the_shell_comments_and_other_crates_may_name_io_crates() {
    let src = "crates/cdc-orchestrator/src";
    let uses = "//! S.\nuse cdc_etcd::EtcdClient;\n";
    let files = [
        file(&format!("{src}/worker.rs"), uses),
        file(&format!("{src}/worker/tests.rs"), uses),
        file(&format!("{src}/error.rs"), uses),
        file(&format!("{src}/metrics.rs"), uses),
        file(&format!("{src}/lib.rs"), uses),
        file("crates/cdc-capture/src/reactor.rs", uses),
        file(
            &format!("{src}/global.rs"),
            "//! Keys as `cdc_etcd::key` had them.\nuse cdc_model::key::CdcKey; // not cdc_etcd::key\nconst A: &str = \"my_cdc_etcd\";\n",
        ),
        file(&format!("{src}/notes.md"), "uses cdc_etcd::key\n"),
    ];
    let found = messages(&check_pure_modules(&files, PURE_MODULES));
    assert!(found.is_empty(), "{found:?}");
}

// --- Headers ---------------------------------------------------------------------------------

#[test]
fn a_file_without_a_header_fails() {
    let files = [
        file("crates/a/src/lib.rs", "//! A.\nfn a() {}\n"),
        file("crates/a/src/b.rs", "/// Not a module doc.\nfn b() {}\n"),
        file("crates/a/src/c.rs", ""),
        file("crates/a/src/d.rs", "\n//! Too late.\n"),
        file("docs/x.md", "# Not Rust\n"),
    ];
    let found = messages(&check_headers(&files));
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found[0].starts_with("crates/a/src/b.rs: "));
    assert!(found[1].starts_with("crates/a/src/c.rs: "));
    assert!(found[2].starts_with("crates/a/src/d.rs: "));
    assert!(check_headers(&files[..1]).is_empty());
}

// --- Citations -------------------------------------------------------------------------------

#[test]
fn a_comment_citing_an_outside_document_fails() {
    let cite = |document: &str| format!("//! A.\nfn f() {{}} // see {document} §2.1\n");
    for document in OUTSIDE_DOCUMENTS {
        let found = check_citations(&[file("crates/a/src/lib.rs", &cite(document))]);
        assert_eq!(found.len(), 1, "{document}: {found:?}");
        assert_eq!(found[0].check, Check::Citation);
        assert!(found[0].message.starts_with("crates/a/src/lib.rs:2: cites"));
    }
    let in_block = "//! A.\n/* one\n   two Capture-Spec §4 */\nfn f() {}\n";
    let found = messages(&check_citations(&[file("a.rs", in_block)]));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("a.rs:3: "));
    let in_docs = "# Keys\nThe layout (capture-spec §2.1).\n";
    let found = messages(&check_citations(&[file("docs/keys.md", in_docs)]));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("docs/keys.md:2: "));
}

#[test]
fn citations_in_strings_and_of_the_repository_pass() {
    let code = "//! Cites `docs/etcd-keys.md` and TiCDC's `pkg/etcd/etcdkey.go`.\nconst A: &str = \"// capture-spec\";\nconst B: &str = r#\"/* pitfalls.md */\"#;\n";
    assert!(check_citations(&[file("a.rs", code)]).is_empty());
}

// --- The lexer -------------------------------------------------------------------------------

#[test]
fn a_second_spelling_of_cancellation_fails() {
    let enum_with = |variants: &str| format!("//! E.\npub enum Error {{\n{variants}}}\n");
    let cases = [
        // A `Cancelled` that displays otherwise.
        "    /// Cancelled.\n    #[error(\"cancelled\")]\n    Cancelled,\n",
        // A second name.
        "    #[error(\"context canceled\")]\n    Cancelled,\n    #[error(\"stopped\")]\n    Canceled,\n",
        // A second variant displaying the same, its attribute over two lines.
        "    #[error(\n        \"Context Canceled\"\n    )]\n    #[allow(dead_code)]\n    Stopped { by: String },\n",
    ];
    for variants in cases {
        let found = check_cancellation(&[file("crates/a/src/error.rs", &enum_with(variants))]);
        assert_eq!(found.len(), 1, "{variants}: {found:?}");
        assert_eq!(found[0].check, Check::Cancellation);
        assert!(
            found[0]
                .to_string()
                .starts_with("tidy [cancellation]: crates/a/src/error.rs:"),
            "{found:?}"
        );
    }
}

#[test]
fn the_one_spelling_of_cancellation_and_other_cancels_pass() {
    let code = "//! E.\npub enum Error {\n    /// The caller's token fired.\n    \
                #[error(\"context canceled\")]\n    Cancelled,\n    \
                #[error(\"peer message handler was cancelled\")]\n    HandlerCancelled,\n    \
                #[error(transparent)]\n    Etcd(#[from] E),\n    \
                // #[error(\"cancelled\")] in a comment\n    #[error(\"x\")]\n    X,\n}\n";
    assert!(check_cancellation(&[file("crates/a/src/error.rs", code)]).is_empty());
    // Outside the crates' sources (xtask, tests) the check does not look.
    let other = "//! E.\nenum E {\n    #[error(\"cancelled\")]\n    Cancelled,\n}\n";
    assert!(check_cancellation(&[file("xtask/src/e.rs", other)]).is_empty());
}

#[test]
fn lex_separates_comments_from_code() {
    let text = concat!(
        "//! Head.\n",
        "let q = '\"'; // one\n",
        "let e = '\\''; let l: &'a str = \"a // b\";\n",
        "let r = r##\"x \"# // y\"##; /* two /* nested */ still */ let z = 1;\n",
        "let b = b\"//\"; let c = b'/'; fn f<'a>(x: &'a u8) {} // three\n",
        "let s = \"esc \\\" // not\"; let r#type = 1; br\"/*\"; // four\n",
    );
    let lexed = lex(text);
    let comments: Vec<(usize, &str)> = lexed
        .comments
        .iter()
        .map(|(line, text)| (*line, text.as_str()))
        .collect();
    assert_eq!(
        comments,
        [
            (1, "//! Head."),
            (2, "// one"),
            (4, "/* two /* nested */ still */"),
            (5, "// three"),
            (6, "// four"),
        ]
    );
    assert!(lexed.code.contains("let z = 1;"));
    assert!(lexed.code.contains("\"a // b\""));
    assert!(!lexed.code.contains("nested"));
    assert_eq!(lexed.code.lines().count(), text.lines().count());
}

// --- The workspace ---------------------------------------------------------------------------

#[test]
fn the_workspace_is_tidy() {
    let violations = check_workspace(&crate::project_root()).expect("run the checks");
    let found: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert!(found.is_empty(), "{}", found.join("\n"));
}
