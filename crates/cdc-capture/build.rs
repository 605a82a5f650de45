//! Embeds the build's git hash, branch and UTC time, as TiCDC's `Makefile` does through its
//! linker flags (`pkg/version/version.go` in pingcap/tiflow): `CDC_GIT_HASH`,
//! `CDC_GIT_BRANCH` and `CDC_BUILD_TS` for `src/version.rs`.
//!
//! Each value may be given in the environment of the build (a container build without
//! `.git`); otherwise it is asked of git, and without git or outside a repository it is
//! `None`, TiCDC's placeholder. `SOURCE_DATE_EPOCH` fixes the build time for reproducible
//! builds.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

const UNKNOWN: &str = "None";

fn main() {
    for var in [
        "CDC_GIT_HASH",
        "CDC_GIT_BRANCH",
        "CDC_BUILD_TS",
        "SOURCE_DATE_EPOCH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    // A new commit or checkout changes HEAD, the branch's loose ref or the packed refs: rebuild
    // then, and only then. A path that does not exist is not named (cargo would rerun the script
    // at every build).
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(branch_ref) = git(&["rev-parse", "--symbolic-full-name", "HEAD"])
        && branch_ref.starts_with("refs/")
    {
        watched.push(branch_ref);
    }
    for name in &watched {
        if let Some(path) = git(&["rev-parse", "--git-path", name]) {
            let absolute = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(&path);
            if absolute.exists() {
                println!("cargo:rerun-if-changed={}", absolute.display());
            }
        }
    }
    let hash = given("CDC_GIT_HASH").or_else(|| git(&["rev-parse", "HEAD"]));
    let branch = given("CDC_GIT_BRANCH").or_else(|| git(&["rev-parse", "--abbrev-ref", "HEAD"]));
    let build_ts = given("CDC_BUILD_TS").unwrap_or_else(build_time);
    println!(
        "cargo:rustc-env=CDC_GIT_HASH={}",
        hash.as_deref().unwrap_or(UNKNOWN)
    );
    println!(
        "cargo:rustc-env=CDC_GIT_BRANCH={}",
        branch.as_deref().unwrap_or(UNKNOWN)
    );
    println!("cargo:rustc-env=CDC_BUILD_TS={build_ts}");
}

/// A non-empty value of `var` in the build's environment.
fn given(var: &str) -> Option<String> {
    std::env::var(var)
        .ok()
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// The trimmed output of a successful `git args` run in this crate's directory.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The build time in UTC as TiCDC prints it (`date -u '+%Y-%m-%d %H:%M:%S'`).
fn build_time() -> String {
    let seconds = given("SOURCE_DATE_EPOCH")
        .and_then(|epoch| epoch.parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|elapsed| elapsed.as_secs())
                .unwrap_or(0)
        });
    let days = seconds / 86_400;
    let in_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60
    )
}

/// The proleptic Gregorian date of `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}
