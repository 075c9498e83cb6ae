//! Test doubles and integration harness for rdna1shim.
