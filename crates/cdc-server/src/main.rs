//! The capture server binary.

fn main() {}
