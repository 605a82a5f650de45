//! `cargo xtask gen-docs`: writes the flag and configuration key tables of `docs/operations.md`,
//! printed by `cdc-server reference-tables` from the code, between the document's markers;
//! `cargo xtask tidy` checks that the document holds what the code prints.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::cargo;

/// The document that holds the generated tables.
pub(crate) const DOCUMENT: &str = "docs/operations.md";
const BEGIN: &str = "<!-- BEGIN GENERATED: cargo xtask gen-docs -->\n";
const END: &str = "<!-- END GENERATED -->";

/// The tables as the code prints them (builds `cdc-server`).
fn generated() -> Result<String> {
    let output = cargo()
        .args([
            "run",
            "--quiet",
            "--package",
            "cdc-server",
            "--",
            "reference-tables",
        ])
        .output()
        .context("run cdc-server reference-tables")?;
    if !output.status.success() {
        bail!(
            "cdc-server reference-tables failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8(output.stdout).context("the tables are UTF-8")
}

/// `text` with the part between the markers replaced by `tables`.
pub(crate) fn splice(text: &str, tables: &str) -> Result<String> {
    let start = text
        .find(BEGIN)
        .with_context(|| format!("{DOCUMENT} lacks the line {}", BEGIN.trim_end()))?
        + BEGIN.len();
    let end = text[start..]
        .find(END)
        .with_context(|| format!("{DOCUMENT} lacks the line {END}"))?
        + start;
    Ok(format!("{}{tables}{}", &text[..start], &text[end..]))
}

/// Writes the tables into the document.
pub(crate) fn run(root: &Path) -> Result<()> {
    let path = root.join(DOCUMENT);
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {DOCUMENT}"))?;
    let updated = splice(&text, &generated()?)?;
    if updated != text {
        std::fs::write(&path, updated).with_context(|| format!("write {DOCUMENT}"))?;
    }
    Ok(())
}

/// Whether the document holds the tables the code prints; the difference when it does not.
pub(crate) fn check(root: &Path) -> Result<Option<String>> {
    let text =
        std::fs::read_to_string(root.join(DOCUMENT)).with_context(|| format!("read {DOCUMENT}"))?;
    let expected = splice(&text, &generated()?)?;
    if expected == text {
        return Ok(None);
    }
    let first = text
        .lines()
        .zip(expected.lines())
        .position(|(have, want)| have != want)
        .unwrap_or_else(|| text.lines().count().min(expected.lines().count()));
    Ok(Some(format!(
        "{DOCUMENT}: the generated tables differ from the code from line {} on \
         (run `cargo xtask gen-docs`)",
        first + 1
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_between_the_markers() {
        let text = format!("intro\n{BEGIN}old\n{END}\nrest\n");
        let spliced = splice(&text, "new\n").unwrap();
        assert_eq!(spliced, format!("intro\n{BEGIN}new\n{END}\nrest\n"));
        assert!(splice("no markers", "x").is_err());
    }
}
