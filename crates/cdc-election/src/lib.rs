//! cdc-election (under construction).
