//! mles placeholder
