//! cdc-capture (under construction).
