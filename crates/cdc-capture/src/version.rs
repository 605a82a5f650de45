//! The build's identity, as TiCDC reports it (`pkg/version/version.go` in pingcap/tiflow): the
//! release version from the crate, the git hash, branch and UTC build time embedded by
//! `build.rs` (`None` when the build had no git).

/// The release version reported in the capture key and `/status`.
pub const VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"));
/// The commit the binary was built from (`git rev-parse HEAD`), or `None`.
pub const GIT_HASH: &str = env!("CDC_GIT_HASH");
/// The branch the binary was built from, or `None`.
pub const GIT_BRANCH: &str = env!("CDC_GIT_BRANCH");
/// When the binary was built, in UTC (`2006-01-02 15:04:05`), as TiCDC's `BuildTS`.
pub const BUILD_TS: &str = env!("CDC_BUILD_TS");

/// The lines TiCDC's `cdc version` prints, for `cdc-server version` and the start-up log.
pub fn version_info() -> String {
    format!(
        "Release Version: {VERSION}\nGit Commit Hash: {GIT_HASH}\nGit Branch: {GIT_BRANCH}\nUTC Build Time: {BUILD_TS}\nRust Version: {}",
        env!("CARGO_PKG_RUST_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_identity_is_embedded() {
        assert!(VERSION.starts_with('v'));
        // A hash from git, or the placeholder when the build had none: never empty.
        assert!(
            GIT_HASH == "None"
                || (GIT_HASH.len() == 40 && GIT_HASH.bytes().all(|b| b.is_ascii_hexdigit())),
            "{GIT_HASH}"
        );
        assert!(!GIT_BRANCH.is_empty());
        // `YYYY-MM-DD hh:mm:ss`.
        assert_eq!(BUILD_TS.len(), 19, "{BUILD_TS}");
        assert_eq!(&BUILD_TS[4..5], "-");
        assert_eq!(&BUILD_TS[10..11], " ");
        assert!(version_info().contains(GIT_HASH));
    }
}
