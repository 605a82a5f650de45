//! State tests: capture-spec §8 cases 36–43.
