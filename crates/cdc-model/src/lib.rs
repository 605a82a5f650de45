//! cdc-model (under construction).
