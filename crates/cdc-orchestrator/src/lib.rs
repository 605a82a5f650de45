//! cdc-orchestrator (under construction).
