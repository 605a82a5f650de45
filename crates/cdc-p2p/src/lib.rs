//! cdc-p2p (under construction).
