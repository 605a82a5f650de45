//! TSO timestamps: `(physical_ms << 18) | logical`.

/// The number of low bits of a TSO that hold the logical counter.
const PHYSICAL_SHIFT_BITS: u32 = 18;
const LOGICAL_MASK: u64 = (1 << PHYSICAL_SHIFT_BITS) - 1;

/// Composes a TSO from a physical time in unix milliseconds and a logical counter.
///
/// Like Go's `oracle.ComposeTS`, bits of `physical_ms` above bit 45 are shifted out and
/// `logical` is added, not masked.
pub fn compose_ts(physical_ms: u64, logical: u64) -> u64 {
    (physical_ms << PHYSICAL_SHIFT_BITS).wrapping_add(logical)
}

/// Returns the physical part of a TSO, in unix milliseconds.
pub fn extract_physical(ts: u64) -> u64 {
    ts >> PHYSICAL_SHIFT_BITS
}

/// Returns the logical part of a TSO.
pub fn extract_logical(ts: u64) -> u64 {
    ts & LOGICAL_MASK
}
