//! Unit tests of the TLS module: certificates made at run time with rcgen.
