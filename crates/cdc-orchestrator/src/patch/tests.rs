//! Patch evaluation as a table: a key's committed and batched values, a group of patches of
//! that key, and what the group writes.

use std::collections::BTreeMap;

use super::*;

const KEY: &[u8] = b"/tidb/cdc/default/default/changefeed/info/test";

type Func = fn(Option<&[u8]>) -> Result<PatchOutcome>;

/// Appends `x` to the value (an absent key counts as empty): not idempotent, so the value tells
/// which writes a patch saw.
fn append_x(old: Option<&[u8]>) -> Result<PatchOutcome> {
    let mut value = old.map(<[u8]>::to_vec).unwrap_or_default();
    value.push(b'x');
    Ok(PatchOutcome::Set(Some(value)))
}

fn create_if_absent(old: Option<&[u8]>) -> Result<PatchOutcome> {
    Ok(match old {
        None => PatchOutcome::Set(Some(b"new".to_vec())),
        Some(_) => PatchOutcome::Unchanged,
    })
}

fn delete(_: Option<&[u8]>) -> Result<PatchOutcome> {
    Ok(PatchOutcome::Set(None))
}

fn unchanged(_: Option<&[u8]>) -> Result<PatchOutcome> {
    Ok(PatchOutcome::Unchanged)
}

fn ignore(_: Option<&[u8]>) -> Result<PatchOutcome> {
    Err(Error::EtcdIgnore)
}

fn try_again(_: Option<&[u8]>) -> Result<PatchOutcome> {
    Err(Error::EtcdTryAgain)
}

/// What a group does to [`KEY`].
#[derive(Debug)]
enum Expected {
    /// The group leaves the key alone.
    Unchanged,
    /// The group writes the value, or deletes the key when `None`.
    Set(Option<&'static str>),
    /// The group aborts the attempt with `EtcdTryAgain`.
    TryAgain,
}

struct PatchCase {
    name: &'static str,
    /// The committed value.
    committed: Option<&'static str>,
    /// The change of an earlier group of the batch, when there is one.
    batched: Option<Option<&'static str>>,
    group: &'static [Func],
    expected: Expected,
}

const CASES: &[PatchCase] = &[
    PatchCase {
        name: "create an absent key",
        committed: None,
        batched: None,
        group: &[create_if_absent],
        expected: Expected::Set(Some("new")),
    },
    PatchCase {
        name: "create a present key",
        committed: Some("v1"),
        batched: None,
        group: &[create_if_absent],
        expected: Expected::Unchanged,
    },
    PatchCase {
        name: "leave an absent key",
        committed: None,
        batched: None,
        group: &[unchanged],
        expected: Expected::Unchanged,
    },
    PatchCase {
        name: "update the committed value",
        committed: Some("v1"),
        batched: None,
        group: &[append_x],
        expected: Expected::Set(Some("v1x")),
    },
    PatchCase {
        name: "delete the committed value",
        committed: Some("v1"),
        batched: None,
        group: &[delete],
        expected: Expected::Set(None),
    },
    PatchCase {
        name: "the batch's value hides the committed one",
        committed: Some("v1"),
        batched: Some(Some("v2")),
        group: &[append_x],
        expected: Expected::Set(Some("v2x")),
    },
    PatchCase {
        name: "the batch's delete hides the committed value",
        committed: Some("v1"),
        batched: Some(None),
        group: &[create_if_absent],
        expected: Expected::Set(Some("new")),
    },
    PatchCase {
        name: "a patch sees the writes of the patches before it in its group",
        committed: Some("v1"),
        batched: None,
        group: &[append_x, append_x, delete, create_if_absent],
        expected: Expected::Set(Some("new")),
    },
    PatchCase {
        name: "an ignored patch is skipped and the group goes on",
        committed: Some("v1"),
        batched: None,
        group: &[ignore, append_x, ignore],
        expected: Expected::Set(Some("v1x")),
    },
    PatchCase {
        name: "a group of ignored patches changes nothing",
        committed: Some("v1"),
        batched: None,
        group: &[ignore],
        expected: Expected::Unchanged,
    },
    PatchCase {
        name: "try again aborts the group, writes before it included",
        committed: Some("v1"),
        batched: None,
        group: &[append_x, try_again, append_x],
        expected: Expected::TryAgain,
    },
];

/// Evaluates the case's group over its committed and batched values: the group's change of
/// [`KEY`], if any.
fn evaluate(case: &PatchCase) -> Result<Option<Option<Value>>> {
    let mut base = RawState::new();
    if let Some(value) = case.committed {
        base.insert(
            KEY.to_vec(),
            RawEntry {
                value: value.as_bytes().to_vec(),
                mod_revision: 2,
                create_revision: 1,
            },
        );
    }
    let mut batch = BTreeMap::new();
    if let Some(value) = case.batched {
        batch.insert(KEY.to_vec(), value.map(|value| value.as_bytes().to_vec()));
    }
    let group: PatchGroup = case
        .group
        .iter()
        .map(|func| Box::new(SingleDataPatch::new(KEY, *func)) as Box<dyn DataPatch>)
        .collect();
    let mut changes = evaluate_group(&base, &batch, &group)?;
    let change = changes.remove(KEY);
    assert!(changes.is_empty(), "{}: {changes:?}", case.name);
    Ok(change)
}

#[test]
fn patch_outcomes() {
    for case in CASES {
        let name = case.name;
        match (&case.expected, evaluate(case)) {
            (Expected::Unchanged, Ok(None)) | (Expected::TryAgain, Err(Error::EtcdTryAgain)) => {}
            (Expected::Set(expected), Ok(Some(written))) => {
                assert_eq!(written.as_deref(), expected.map(str::as_bytes), "{name}");
            }
            (expected, got) => panic!("{name}: expected {expected:?}, got {got:?}"),
        }
    }
}
