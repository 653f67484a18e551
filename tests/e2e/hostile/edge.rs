//! See hostile.rs.
