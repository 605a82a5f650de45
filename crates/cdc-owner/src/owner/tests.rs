//! Tests of the owner on a capture.
