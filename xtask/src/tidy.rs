//! `cargo xtask tidy`: the workspace's invariants as checks (in the style of rust-analyzer's tidy).
//!
//! Six checks, each a pure function over `cargo metadata` and the texts of the repository's files,
//! and one that runs the server binary:
//! - [`check_layering`]: no dependency edge that the layering of `ARCHITECTURE.md` forbids
//!   ([`RULES`]);
//! - [`check_pure_modules`]: the pure modules of a crate that also has an IO shell name none of
//!   the IO crates ([`PURE_MODULES`]);
//! - [`check_unused_dependencies`]: every declared dependency is named by a source file of its
//!   package, and every `[workspace.dependencies]` entry is declared by a member;
//! - [`check_headers`]: every `.rs` file opens with a `//!` line;
//! - [`check_citations`]: no comment cites a document that is not in the repository;
//! - [`check_cancellation`]: one spelling of cancellation across the crates' error enums;
//! - the generated tables of `docs/operations.md` match what `cdc-server reference-tables`
//!   prints (`crate::gen_docs::check`, which builds `cdc-server`).
//!
//! [`run`] gathers the inputs, runs every check and lists every violation before failing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::{cargo, project_root};

#[cfg(test)]
mod tests;

/// Runs every check on the workspace and fails listing every violation.
#[allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a foreground command reports its findings"
)]
pub(crate) fn run() -> Result<()> {
    let violations = check_workspace(&project_root())?;
    if violations.is_empty() {
        println!("tidy: ok");
        return Ok(());
    }
    for violation in &violations {
        eprintln!("{violation}");
    }
    bail!("tidy: {} violation(s)", violations.len());
}

/// Reads the workspace at `root` and runs every check on it.
pub(crate) fn check_workspace(root: &Path) -> Result<Vec<Violation>> {
    let output = cargo()
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--all-features"])
        .output()
        .context("run cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata = Metadata::parse(&output.stdout)?;
    let files = read_files(root)?;
    let root_manifest =
        std::fs::read_to_string(root.join("Cargo.toml")).context("read the root Cargo.toml")?;
    let mut violations = check_all(&metadata, &files, &root_manifest);
    if let Some(message) = crate::gen_docs::check(root)? {
        violations.push(Violation {
            check: Check::GeneratedDocs,
            message,
        });
    }
    Ok(violations)
}

/// Runs every check.
pub(crate) fn check_all(
    metadata: &Metadata,
    files: &[SourceFile],
    root_manifest: &str,
) -> Vec<Violation> {
    let mut violations = check_layering(metadata, RULES);
    violations.extend(check_pure_modules(files, PURE_MODULES));
    violations.extend(check_unused_dependencies(metadata, files, root_manifest));
    violations.extend(check_headers(files));
    violations.extend(check_citations(files));
    violations.extend(check_cancellation(files));
    violations
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    pub(crate) check: Check,
    pub(crate) message: String,
}

/// The check that found a violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    Layering,
    PureModule,
    UnusedDependency,
    Header,
    Citation,
    Cancellation,
    GeneratedDocs,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let check = match self.check {
            Check::Layering => "layering",
            Check::PureModule => "pure module",
            Check::UnusedDependency => "unused dependency",
            Check::Header => "header",
            Check::Citation => "citation",
            Check::Cancellation => "cancellation",
            Check::GeneratedDocs => "generated docs",
        };
        write!(f, "tidy [{check}]: {}", self.message)
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs.

/// The part of `cargo metadata --format-version 1` the checks read.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Metadata {
    pub(crate) packages: Vec<Package>,
    pub(crate) workspace_members: Vec<String>,
    pub(crate) resolve: Resolve,
    pub(crate) workspace_root: PathBuf,
}

/// A package of the dependency graph.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Package {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) manifest_path: PathBuf,
    /// The dependencies as declared in the manifest.
    pub(crate) dependencies: Vec<Dependency>,
    pub(crate) targets: Vec<Target>,
}

/// A dependency as declared in a manifest.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Dependency {
    /// The package name.
    pub(crate) name: String,
    /// `None` for a normal dependency, else `"dev"` or `"build"`.
    pub(crate) kind: Option<String>,
    /// The key of a renamed dependency (`foo = { package = "bar" }`).
    pub(crate) rename: Option<String>,
}

/// A build target of a package.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Target {
    pub(crate) kind: Vec<String>,
    pub(crate) src_path: PathBuf,
}

/// The resolved dependency graph.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Resolve {
    pub(crate) nodes: Vec<Node>,
}

/// A package's resolved dependencies.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Node {
    pub(crate) id: String,
    pub(crate) deps: Vec<NodeDep>,
}

/// A resolved dependency edge.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct NodeDep {
    /// The name the dependent's code uses: the library name, or the rename.
    pub(crate) name: String,
    pub(crate) pkg: String,
    pub(crate) dep_kinds: Vec<DepKindInfo>,
}

/// One kind under which an edge exists.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DepKindInfo {
    /// `None` for a normal dependency, else `"dev"` or `"build"`.
    pub(crate) kind: Option<String>,
}

impl Metadata {
    /// Parses the output of `cargo metadata --format-version 1`.
    pub(crate) fn parse(json: &[u8]) -> Result<Self> {
        serde_json::from_slice(json).context("parse the output of cargo metadata")
    }

    fn package(&self, id: &str) -> Option<&Package> {
        self.packages.iter().find(|package| package.id == id)
    }

    fn node(&self, id: &str) -> Option<&Node> {
        self.resolve.nodes.iter().find(|node| node.id == id)
    }

    fn name_of<'a>(&'a self, id: &'a str) -> &'a str {
        self.package(id).map_or(id, |package| package.name.as_str())
    }

    fn members(&self) -> impl Iterator<Item = &Package> {
        self.packages
            .iter()
            .filter(|package| self.workspace_members.contains(&package.id))
    }

    /// A member's directory relative to the workspace root (empty for the root package).
    fn member_dir(&self, package: &Package) -> PathBuf {
        let dir = package.manifest_path.parent().unwrap_or(Path::new(""));
        dir.strip_prefix(&self.workspace_root)
            .unwrap_or(dir)
            .to_path_buf()
    }
}

/// A text file of the repository, its path relative to the workspace root.
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    pub(crate) path: PathBuf,
    pub(crate) text: String,
}

/// The extensions of the files the checks read.
const EXTENSIONS: &[&str] = &["rs", "md", "toml", "proto"];

/// Reads every `.rs`, `.md`, `.toml` and `.proto` file under `root`, skipping `target/` and
/// hidden directories.
fn read_files(root: &Path) -> Result<Vec<SourceFile>> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("read {}", dir.display()))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let file_type = entry
                .file_type()
                .with_context(|| format!("stat {}", path.display()))?;
            if file_type.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    dirs.push(path);
                }
                continue;
            }
            let wanted = path
                .extension()
                .is_some_and(|ext| EXTENSIONS.iter().any(|wanted| ext == *wanted));
            if !file_type.is_file() || !wanted {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("read {}", path.display()))?;
            let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            files.push(SourceFile {
                path: relative,
                text,
            });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

// ---------------------------------------------------------------------------------------------
// Layering.

/// A package name, or a family of them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Name {
    Is(&'static str),
    StartsWith(&'static str),
}

impl Name {
    fn matches(self, name: &str) -> bool {
        match self {
            Name::Is(exact) => name == exact,
            Name::StartsWith(prefix) => name.starts_with(prefix),
        }
    }
}

/// How far a rule looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Only the package's own declared edges.
    Direct,
    /// Every package its build links, through any number of normal edges.
    Transitive,
}

/// Which of the package's own edges a rule follows (past the first edge, only normal edges
/// are followed: a dependency's dev-dependencies are never built for the dependent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kinds {
    /// Normal dependencies: what the library and binaries link.
    Normal,
    /// Normal, dev and build dependencies: anything that package's build links.
    All,
}

/// A layering rule: the packages named by `from` (but not `from_except`) never reach a package
/// named by `forbidden` (but not `forbidden_except`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rule {
    pub(crate) from: &'static [Name],
    pub(crate) from_except: &'static [&'static str],
    pub(crate) forbidden: &'static [Name],
    pub(crate) forbidden_except: &'static [&'static str],
    pub(crate) reach: Reach,
    pub(crate) kinds: Kinds,
    pub(crate) reason: &'static str,
}

impl Rule {
    const fn transitive(
        from: &'static [Name],
        forbidden: &'static [Name],
        reason: &'static str,
    ) -> Self {
        Rule {
            from,
            from_except: &[],
            forbidden,
            forbidden_except: &[],
            reach: Reach::Transitive,
            kinds: Kinds::Normal,
            reason,
        }
    }

    fn applies_to(&self, name: &str) -> bool {
        self.from.iter().any(|from| from.matches(name)) && !self.from_except.contains(&name)
    }

    fn forbids(&self, name: &str) -> bool {
        self.forbidden
            .iter()
            .any(|forbidden| forbidden.matches(name))
            && !self.forbidden_except.contains(&name)
    }
}

/// The crates that are never named by a library below the glue.
const GLUE: &[Name] = &[Name::Is("cdc-capture")];

/// The layering of `ARCHITECTURE.md` ("Code map").
pub(crate) const RULES: &[Rule] = &[
    Rule::transitive(
        &[Name::Is("cdc-model")],
        &[
            Name::Is("tokio"),
            Name::Is("etcd-client"),
            Name::Is("tonic"),
            Name::Is("hyper"),
            Name::Is("axum"),
            Name::Is("reqwest"),
            Name::StartsWith("cdc-"),
        ],
        "cdc-model is the vocabulary: a leaf with no async runtime and no IO",
    ),
    Rule::transitive(
        &[Name::Is("cdc-p2p")],
        &[Name::Is("cdc-etcd"), Name::Is("etcd-client")],
        "cdc-p2p never depends on etcd: peers and addresses come in as data",
    ),
    Rule::transitive(
        &[Name::Is("cdc-orchestrator")],
        &[Name::Is("cdc-p2p")],
        "the etcd worker and its reactors know nothing of p2p",
    ),
    Rule {
        from: &[Name::Is("cdc-orchestrator")],
        from_except: &[],
        forbidden: &[Name::Is("tonic")],
        forbidden_except: &[],
        reach: Reach::Direct,
        kinds: Kinds::Normal,
        reason: "cdc-orchestrator serves and calls no gRPC of its own (it reaches tonic only \
                 through cdc-etcd's etcd client)",
    },
    Rule::transitive(
        &[Name::Is("cdc-election")],
        &[Name::Is("cdc-orchestrator")],
        "the election sits below the etcd worker",
    ),
    // The reactor traits, the owner, processor, scheduler, source and sink crates are libraries
    // below the glue.
    Rule::transitive(
        &[
            Name::Is("cdc-reactor"),
            Name::Is("cdc-owner"),
            Name::Is("cdc-processor"),
            Name::Is("cdc-scheduler"),
            Name::StartsWith("cdc-source-"),
            Name::StartsWith("cdc-sink"),
        ],
        GLUE,
        "the reactor, owner, processor, scheduler, source and sink crates sit below cdc-capture, \
         the glue",
    ),
    Rule::transitive(
        &[Name::Is("cdc-reactor")],
        &[
            Name::Is("cdc-owner"),
            Name::Is("cdc-processor"),
            Name::Is("cdc-scheduler"),
            Name::StartsWith("cdc-source-"),
            Name::StartsWith("cdc-sink"),
        ],
        "the reactor traits sit below the owner and processor crates that implement them",
    ),
    Rule {
        from: &[Name::Is("cdc-scheduler")],
        from_except: &[],
        forbidden: &[Name::StartsWith("cdc-")],
        forbidden_except: &["cdc-model"],
        reach: Reach::Transitive,
        kinds: Kinds::Normal,
        reason: "the scheduler is pure: of our crates it depends on cdc-model only",
    },
    Rule {
        from: &[Name::StartsWith("cdc-")],
        from_except: &["cdc-capture", "cdc-server", "cdc-bench", "cdc-tests"],
        forbidden: GLUE,
        forbidden_except: &[],
        reach: Reach::Transitive,
        kinds: Kinds::Normal,
        reason: "only cdc-server, cdc-bench and cdc-tests build on cdc-capture, the glue",
    },
    Rule {
        from: &[Name::Is("xtask")],
        from_except: &[],
        forbidden: &[Name::StartsWith("cdc-")],
        forbidden_except: &[],
        reach: Reach::Transitive,
        kinds: Kinds::All,
        reason: "xtask links none of our crates, so it builds while they are broken",
    },
];

fn kind_is_normal(kind: &Option<String>) -> bool {
    kind.is_none()
}

/// Every forbidden package a workspace member reaches, each with the path that reaches it.
/// A (member, forbidden package) pair is reported once, under the first rule that forbids it.
pub(crate) fn check_layering(metadata: &Metadata, rules: &[Rule]) -> Vec<Violation> {
    let mut reported = BTreeSet::new();
    let mut violations = Vec::new();
    for member in metadata.members() {
        for rule in rules.iter().filter(|rule| rule.applies_to(&member.name)) {
            for path in reached(metadata, &member.id, rule) {
                let target = path.last().map_or("", String::as_str).to_owned();
                if !reported.insert((member.name.clone(), target.clone())) {
                    continue;
                }
                violations.push(Violation {
                    check: Check::Layering,
                    message: format!(
                        "{} reaches {target} ({}): {}",
                        member.name,
                        path.join(" -> "),
                        rule.reason
                    ),
                });
            }
        }
    }
    violations
}

/// The forbidden packages `from` reaches under `rule`, each as the path of names from `from`.
fn reached(metadata: &Metadata, from: &str, rule: &Rule) -> Vec<Vec<String>> {
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([(from, 0_usize)]);
    let mut found = Vec::new();
    while let Some((id, depth)) = queue.pop_front() {
        if rule.reach == Reach::Direct && depth == 1 {
            continue;
        }
        let Some(node) = metadata.node(id) else {
            continue;
        };
        for dep in &node.deps {
            let followed = if depth == 0 && rule.kinds == Kinds::All {
                !dep.dep_kinds.is_empty()
            } else {
                dep.dep_kinds.iter().any(|info| kind_is_normal(&info.kind))
            };
            if !followed || dep.pkg == from || parent.contains_key(dep.pkg.as_str()) {
                continue;
            }
            parent.insert(&dep.pkg, id);
            if rule.forbids(metadata.name_of(&dep.pkg)) {
                let mut path = vec![metadata.name_of(&dep.pkg).to_owned()];
                let mut at = id;
                while at != from {
                    path.push(metadata.name_of(at).to_owned());
                    at = parent.get(at).copied().unwrap_or(from);
                }
                path.push(metadata.name_of(from).to_owned());
                path.reverse();
                found.push(path);
            }
            queue.push_back((&dep.pkg, depth + 1));
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Unused dependencies.

/// Dependencies that no source file names, each with the reason it is still needed.
const USED_OUTSIDE_SOURCES: &[(&str, &str, &str)] = &[(
    "cdc-p2p",
    "tonic-prost",
    "the code generated into OUT_DIR calls tonic_prost::ProstCodec",
)];

/// The part of a package a source file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The library and the binaries: what normal dependencies serve.
    Main,
    /// `tests/`, `examples/` and `benches/`: what only dev-dependencies may serve.
    Dev,
    /// The build script.
    Build,
}

/// Every declared dependency that no source file of its package names, and every
/// `[workspace.dependencies]` entry that no member declares.
///
/// A normal dependency must be named by the library or a binary, a dev-dependency by any source
/// file but the build script, a build-dependency by the build script. A crate is named as
/// `name::`, `use name`, `extern crate name` or `"name"` (as in `#[serde(with = "name")]`),
/// outside comments, under its library name or its rename.
pub(crate) fn check_unused_dependencies(
    metadata: &Metadata,
    files: &[SourceFile],
    root_manifest: &str,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let members: Vec<&Package> = metadata.members().collect();
    let member_dirs: Vec<PathBuf> = members.iter().map(|m| metadata.member_dir(m)).collect();
    for (member, dir) in members.iter().zip(&member_dirs) {
        let build_scripts: Vec<PathBuf> = member
            .targets
            .iter()
            .filter(|target| target.kind.iter().any(|kind| kind == "custom-build"))
            .map(|target| {
                target
                    .src_path
                    .strip_prefix(&metadata.workspace_root)
                    .unwrap_or(&target.src_path)
                    .to_path_buf()
            })
            .collect();
        // The package's files, without those of a member nested inside it.
        let own_files: Vec<(Part, String)> = files
            .iter()
            .filter(|file| file.path.extension().is_some_and(|ext| ext == "rs"))
            .filter(|file| {
                owner_dir(&member_dirs, &file.path).is_some_and(|owner| owner == dir.as_path())
            })
            .map(|file| {
                let relative = file.path.strip_prefix(dir).unwrap_or(&file.path);
                let part = if build_scripts.contains(&file.path) {
                    Part::Build
                } else if ["tests", "examples", "benches"]
                    .iter()
                    .any(|dev_dir| relative.starts_with(dev_dir))
                {
                    Part::Dev
                } else {
                    Part::Main
                };
                (part, lex(&file.text).code)
            })
            .collect();
        for dependency in &member.dependencies {
            let crate_name = crate_name(metadata, member, dependency);
            let (parts, where_) = match dependency.kind.as_deref() {
                None => (&[Part::Main][..], "its library or binaries"),
                Some("build") => (&[Part::Build][..], "its build script"),
                Some(_) => (&[Part::Main, Part::Dev][..], "its sources"),
            };
            let used = own_files
                .iter()
                .any(|(part, code)| parts.contains(part) && names_crate(code, &crate_name));
            let exempt = USED_OUTSIDE_SOURCES
                .iter()
                .any(|(package, dep, _)| *package == member.name && *dep == dependency.name);
            if !used && !exempt {
                let kind = dependency.kind.as_deref().unwrap_or("normal");
                violations.push(Violation {
                    check: Check::UnusedDependency,
                    message: format!(
                        "{} declares the {kind} dependency {} but none of {where_} names `{crate_name}`",
                        member.name, dependency.name
                    ),
                });
            }
        }
    }
    let declared: BTreeSet<&str> = members
        .iter()
        .flat_map(|member| &member.dependencies)
        .map(|dependency| dependency.rename.as_deref().unwrap_or(&dependency.name))
        .collect();
    for entry in workspace_dependencies(root_manifest) {
        if !declared.contains(entry.as_str()) {
            violations.push(Violation {
                check: Check::UnusedDependency,
                message: format!(
                    "[workspace.dependencies] lists {entry}, which no member declares"
                ),
            });
        }
    }
    violations
}

/// The member directory a file belongs to: the longest member directory that contains it.
fn owner_dir<'a>(member_dirs: &'a [PathBuf], path: &Path) -> Option<&'a Path> {
    member_dirs
        .iter()
        .filter(|dir| path.starts_with(dir))
        .max_by_key(|dir| dir.components().count())
        .map(PathBuf::as_path)
}

/// The name under which `member`'s code refers to `dependency`.
fn crate_name(metadata: &Metadata, member: &Package, dependency: &Dependency) -> String {
    if let Some(rename) = &dependency.rename {
        return rename.replace('-', "_");
    }
    let resolved = metadata.node(&member.id).and_then(|node| {
        node.deps
            .iter()
            .find(|dep| {
                metadata.name_of(&dep.pkg) == dependency.name
                    && dep
                        .dep_kinds
                        .iter()
                        .any(|info| info.kind == dependency.kind)
            })
            .map(|dep| dep.name.clone())
    });
    resolved.unwrap_or_else(|| dependency.name.replace('-', "_"))
}

/// Whether `code` names the crate `name`: `name::`, `use name`, `extern crate name` or `"name"`.
fn names_crate(code: &str, name: &str) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(offset) = code[from..].find(name) {
        let start = from + offset;
        let end = start + name.len();
        from = end;
        let before = code[..start].chars().next_back();
        let after = &code[end..];
        if before.is_some_and(is_ident) || after.chars().next().is_some_and(is_ident) {
            continue;
        }
        let prefix = code[..start].trim_end();
        if after.trim_start().starts_with("::")
            || (before == Some('"') && after.starts_with('"'))
            || ends_with_word(prefix, "use")
            || prefix.ends_with("extern crate")
        {
            return true;
        }
    }
    false
}

fn ends_with_word(text: &str, word: &str) -> bool {
    text.strip_suffix(word).is_some_and(|rest| {
        !rest
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// The keys of the `[workspace.dependencies]` table of the root manifest.
fn workspace_dependencies(root_manifest: &str) -> Vec<String> {
    let mut in_table = false;
    let mut entries = Vec::new();
    for line in root_manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_table = line == "[workspace.dependencies]";
            continue;
        }
        if !in_table || line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            let key = key.split('.').next().unwrap_or(key).trim_matches('"');
            entries.push(key.to_owned());
        }
    }
    entries
}

// ---------------------------------------------------------------------------------------------
// Pure modules.

/// The pure modules of one crate, whose IO shell lives in the same crate: every `.rs` file under
/// `src` is pure except the `shell` entries (a file, or a directory with everything under it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PureModules {
    /// The crate's source directory, relative to the workspace root.
    pub(crate) src: &'static str,
    /// The files and directories directly under `src` that may name the IO crates.
    pub(crate) shell: &'static [&'static str],
    /// The crates (as code names them) that a pure module never names.
    pub(crate) forbidden: &'static [&'static str],
    pub(crate) reason: &'static str,
}

/// The pure cores of `ARCHITECTURE.md` ("Code map").
pub(crate) const PURE_MODULES: &[PureModules] = &[PureModules {
    src: "crates/cdc-orchestrator/src",
    // The worker and its metrics are the IO shell; the crate root re-exports them and the error
    // type wraps the etcd client's errors.
    shell: &["lib.rs", "error.rs", "metrics.rs", "worker.rs", "worker"],
    forbidden: &["cdc_etcd", "etcd_client", "tonic"],
    reason: "the orchestrator's states, patches and reactors are pure: they read keys through \
             cdc_model::key and reach etcd only through the worker",
}];

/// Every line of a pure module's code (comments aside) that names a crate its set forbids.
pub(crate) fn check_pure_modules(files: &[SourceFile], sets: &[PureModules]) -> Vec<Violation> {
    let mut violations = Vec::new();
    for set in sets {
        for file in files {
            if file.path.extension().is_none_or(|ext| ext != "rs") {
                continue;
            }
            let Ok(relative) = file.path.strip_prefix(set.src) else {
                continue;
            };
            let first = relative.components().next();
            if first.is_some_and(|first| set.shell.iter().any(|shell| first.as_os_str() == *shell))
            {
                continue;
            }
            let code = lex(&file.text).code;
            for (index, line) in code.lines().enumerate() {
                for name in set.forbidden {
                    if names_crate(line, name) {
                        violations.push(Violation {
                            check: Check::PureModule,
                            message: format!(
                                "{}:{}: a pure module names `{name}`: {}",
                                file.path.display(),
                                index + 1,
                                set.reason
                            ),
                        });
                    }
                }
            }
        }
    }
    violations
}

// ---------------------------------------------------------------------------------------------
// Headers.

/// Generated `.rs` files, which carry their generator's header instead of ours.
const GENERATED: &[&str] = &[];

/// Every `.rs` file whose first line is not a `//!` doc comment.
pub(crate) fn check_headers(files: &[SourceFile]) -> Vec<Violation> {
    files
        .iter()
        .filter(|file| file.path.extension().is_some_and(|ext| ext == "rs"))
        .filter(|file| {
            !GENERATED
                .iter()
                .any(|generated| file.path == Path::new(generated))
        })
        .filter(|file| !file.text.lines().next().unwrap_or("").starts_with("//!"))
        .map(|file| Violation {
            check: Check::Header,
            message: format!(
                "{}: the first line is not a `//!` comment saying what the file is",
                file.path.display()
            ),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Citations.

/// Names of documents that live outside the repository: a reader of the code cannot open them.
const OUTSIDE_DOCUMENTS: &[&str] = &[
    "capture-spec",
    "pitfalls.md",
    "product.md",
    "rust-apis.md",
    "reliability-and-performance.md",
    "style.md",
    "shared/spec",
];

/// Every comment (in `.rs` files) or line (in the other files) that cites a document outside
/// the repository. Cite `docs/*.md`, `ARCHITECTURE.md` or TiCDC's source by path instead.
pub(crate) fn check_citations(files: &[SourceFile]) -> Vec<Violation> {
    let mut violations = Vec::new();
    for file in files {
        let lines: Vec<(usize, String)> = if file.path.extension().is_some_and(|ext| ext == "rs") {
            lex(&file.text).comments
        } else {
            file.text
                .lines()
                .enumerate()
                .map(|(index, line)| (index + 1, line.to_owned()))
                .collect()
        };
        for (line, text) in lines {
            let lower = text.to_lowercase();
            if let Some(document) = OUTSIDE_DOCUMENTS
                .iter()
                .find(|document| lower.contains(*document))
            {
                violations.push(Violation {
                    check: Check::Citation,
                    message: format!(
                        "{}:{line}: cites `{document}`, which is not in the repository; cite \
                         docs/*.md, ARCHITECTURE.md or TiCDC's source by path, or state the fact",
                        file.path.display()
                    ),
                });
            }
        }
    }
    violations
}

// ---------------------------------------------------------------------------------------------
// Cancellation.

/// How every error enum says "cancelled": TiCDC's `context canceled` (Go's `context.Canceled`),
/// on a variant named `Cancelled`.
const CANCELLED_VARIANT: &str = "Cancelled";
const CANCELLED_MESSAGE: &str = "context canceled";
/// Other names a variant meaning the same might take.
const CANCELLED_SPELLINGS: &[&str] = &[
    "Canceled",
    "Cancel",
    "Cancellation",
    "ContextCanceled",
    "ContextCancelled",
];
/// Other messages a variant meaning the same might display.
const CANCELLED_MESSAGES: &[&str] = &[
    "cancelled",
    "canceled",
    "context canceled",
    "context cancelled",
    "operation cancelled",
    "operation canceled",
];

/// Every `thiserror` variant of a crate's source that spells cancellation otherwise: a
/// `Cancelled` whose message is not `context canceled`, or another variant named or displayed
/// as a cancellation. Variants for other events that involve a cancel (a removed handler, a
/// watch etcd cancelled) keep their own names and messages.
pub(crate) fn check_cancellation(files: &[SourceFile]) -> Vec<Violation> {
    let mut violations = Vec::new();
    for file in files {
        let in_crate_source = file.path.starts_with("crates")
            && file.path.components().any(|part| part.as_os_str() == "src");
        if !in_crate_source || file.path.extension().is_none_or(|ext| ext != "rs") {
            continue;
        }
        for (line, message, variant) in error_variants(&lex(&file.text).code) {
            let named = variant == CANCELLED_VARIANT;
            let problem = if named {
                (message.as_deref() != Some(CANCELLED_MESSAGE))
                    .then(|| format!("`{variant}` must display `{CANCELLED_MESSAGE}`"))
            } else if CANCELLED_SPELLINGS.contains(&variant.as_str())
                || message.as_deref().is_some_and(|message| {
                    CANCELLED_MESSAGES.contains(&message.trim().to_lowercase().as_str())
                })
            {
                Some(format!(
                    "`{variant}` is a second spelling of cancellation; use `{CANCELLED_VARIANT}` \
                     displaying `{CANCELLED_MESSAGE}`"
                ))
            } else {
                None
            };
            if let Some(problem) = problem {
                violations.push(Violation {
                    check: Check::Cancellation,
                    message: format!("{}:{line}: {problem}", file.path.display()),
                });
            }
        }
    }
    violations
}

/// The `#[error(..)]` variants of `code` (comments removed): the attribute's line, its first
/// string literal (none for `transparent`), and the name of the variant it is on.
fn error_variants(code: &str) -> Vec<(usize, Option<String>, String)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut variants = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        if !lines[index].trim_start().starts_with("#[error(") {
            index += 1;
            continue;
        }
        let start = index;
        let mut attribute = String::new();
        while index < lines.len() {
            attribute.push_str(lines[index]);
            attribute.push('\n');
            index += 1;
            if attribute.trim_end().ends_with(")]") {
                break;
            }
        }
        let message = attribute.split('"').nth(1).map(str::to_owned);
        let variant = lines[index..]
            .iter()
            .map(|line| line.trim())
            .find(|line| !line.is_empty() && !line.starts_with("#["))
            .map(|line| {
                line.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .unwrap_or_default();
        variants.push((start + 1, message, variant));
    }
    variants
}

// ---------------------------------------------------------------------------------------------
// A Rust lexer just good enough to tell comments from code.

/// A Rust file split into its code and its comments.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Lexed {
    /// The text with every comment replaced by spaces (line breaks kept); strings stay.
    pub(crate) code: String,
    /// Each comment line with its 1-based line number.
    pub(crate) comments: Vec<(usize, String)>,
}

/// Splits `text` into code and comments, skipping string, raw-string and character literals.
pub(crate) fn lex(text: &str) -> Lexed {
    let chars: Vec<char> = text.chars().collect();
    let mut lexed = Lexed::default();
    let mut line = 1;
    let mut index = 0;
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    // Copies chars[from..to] to the code, counting lines.
    let copy = |lexed: &mut Lexed, line: &mut usize, from: usize, to: usize| {
        for &c in &chars[from..to.min(chars.len())] {
            if c == '\n' {
                *line += 1;
            }
            lexed.code.push(c);
        }
    };
    while index < chars.len() {
        let c = chars[index];
        let next = chars.get(index + 1).copied();
        if c == '/' && next == Some('/') {
            let end = chars[index..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(chars.len(), |offset| index + offset);
            lexed
                .comments
                .push((line, chars[index..end].iter().collect()));
            lexed.code.extend(std::iter::repeat_n(' ', end - index));
            index = end;
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            let mut end = index;
            let mut current = String::new();
            while end < chars.len() {
                if chars[end] == '/' && chars.get(end + 1) == Some(&'*') {
                    depth += 1;
                    current.push_str("/*");
                    end += 2;
                } else if chars[end] == '*' && chars.get(end + 1) == Some(&'/') {
                    depth -= 1;
                    current.push_str("*/");
                    end += 2;
                    if depth == 0 {
                        break;
                    }
                } else if chars[end] == '\n' {
                    lexed.comments.push((line, std::mem::take(&mut current)));
                    lexed.code.push('\n');
                    line += 1;
                    end += 1;
                    continue;
                } else {
                    current.push(chars[end]);
                    end += 1;
                }
                lexed.code.push_str("  ");
            }
            lexed.comments.push((line, current));
            index = end;
        } else if c == '"' {
            let end = string_end(&chars, index + 1);
            copy(&mut lexed, &mut line, index, end);
            index = end;
        } else if (c == 'r' || c == 'b' || c == 'c')
            && !index
                .checked_sub(1)
                .is_some_and(|before| is_ident(chars[before]))
            && let Some(end) = raw_string_end(&chars, index)
        {
            copy(&mut lexed, &mut line, index, end);
            index = end;
        } else if c == '\'' {
            let end = char_literal_end(&chars, index).unwrap_or(index + 1);
            copy(&mut lexed, &mut line, index, end);
            index = end;
        } else if is_ident(c) {
            // A whole identifier, so that a quote after `b`, `r` or `c` inside one is not taken
            // for a literal's prefix.
            let end = chars[index..]
                .iter()
                .position(|&c| !is_ident(c))
                .map_or(chars.len(), |offset| index + offset);
            copy(&mut lexed, &mut line, index, end);
            index = end;
        } else {
            copy(&mut lexed, &mut line, index, index + 1);
            index += 1;
        }
    }
    lexed
}

/// The index after the closing quote of a string whose contents start at `from`.
fn string_end(chars: &[char], from: usize) -> usize {
    let mut index = from;
    while index < chars.len() {
        match chars[index] {
            '\\' => index += 2,
            '"' => return index + 1,
            _ => index += 1,
        }
    }
    chars.len()
}

/// The end of a (byte or C) string or raw string starting at `from` with its prefix letter, or
/// `None` when `from` does not start one.
fn raw_string_end(chars: &[char], from: usize) -> Option<usize> {
    let mut index = from;
    if matches!(chars.get(index), Some('b' | 'c')) {
        index += 1;
    }
    if chars.get(index) == Some(&'"') && index > from {
        return Some(string_end(chars, index + 1));
    }
    if chars.get(index) != Some(&'r') {
        return None;
    }
    index += 1;
    let hashes = chars[index..].iter().take_while(|&&c| c == '#').count();
    index += hashes;
    if chars.get(index) != Some(&'"') {
        return None;
    }
    index += 1;
    while index < chars.len() {
        if chars[index] == '"'
            && chars[index + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == '#')
                .count()
                == hashes
        {
            return Some(index + 1 + hashes);
        }
        index += 1;
    }
    Some(chars.len())
}

/// The end of a character literal starting at the quote `from`, or `None` for a lifetime or a
/// label.
fn char_literal_end(chars: &[char], from: usize) -> Option<usize> {
    match chars.get(from + 1) {
        Some('\\') => {
            // The escaped character may itself be a quote: the closing quote comes after it.
            let close = chars.get(from + 3..)?.iter().position(|&c| c == '\'')?;
            Some(from + 3 + close + 1)
        }
        Some(_) if chars.get(from + 2) == Some(&'\'') => Some(from + 3),
        _ => None,
    }
}
