//! Hand-written run directories for the oracles' tests.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// A temporary run directory.
pub(crate) struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `text` to `name` (creating its directories).
    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Writes `lines` as JSON lines to `name`.
    pub(crate) fn write_lines(&self, name: &str, lines: &[Value]) -> PathBuf {
        let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
        self.write(name, &text)
    }

    /// The standard changefeeds: `cf-file` (`/a/` into `sink/`) and `cf-mirror` (`/b/`).
    pub(crate) fn changefeeds(&self) {
        self.write(
            "changefeeds.json",
            &json!([
                {"id": "cf-file", "prefixes": ["/a/"], "sink": "file", "dir": "sink",
                 "start_revision": 1},
                {"id": "cf-mirror", "prefixes": ["/b/"], "sink": "etcd",
                 "endpoints": ["http://127.0.0.1:1"], "sink_prefix": "/mirror/",
                 "start_revision": 1},
            ])
            .to_string(),
        );
    }
}

pub(crate) fn put(key: &str, revision: u64) -> Value {
    json!({"op": "put", "key": key, "value": "v", "revision": revision})
}

pub(crate) fn delete(key: &str, revision: u64, deleted: u64) -> Value {
    json!({"op": "delete", "key": key, "revision": revision, "deleted": deleted})
}

/// A file sink line.
pub(crate) fn sink_put(key: &str, revision: u64) -> Value {
    json!({"key": key, "value": "v", "revision": revision, "op": "put"})
}

pub(crate) fn sink_delete(key: &str, revision: u64) -> Value {
    json!({"key": key, "value": null, "revision": revision, "op": "delete"})
}
