//! Text forms (JSON, TOML) of the crate's own plain-data types: configs, status, metrics, specs.
//! Their `Serialize` is derived over plain fields (numbers, strings, vectors, maps with string
//! keys), which cannot fail, so these return the text itself instead of a `Result` that no
//! caller could act on. Not for data of unknown shape: use serde's own functions there.

use serde::Serialize;

/// One-line JSON.
#[allow(
    clippy::expect_used,
    reason = "derived Serialize of plain fields cannot fail"
)]
pub fn json<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serialises")
}

/// Indented JSON.
#[allow(
    clippy::expect_used,
    reason = "derived Serialize of plain fields cannot fail"
)]
pub fn json_pretty<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("plain data serialises")
}

/// A JSON value, to add fields to.
#[allow(
    clippy::expect_used,
    reason = "derived Serialize of plain fields cannot fail"
)]
pub fn json_value<T: Serialize + ?Sized>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("plain data serialises")
}

/// Indented TOML.
#[allow(
    clippy::expect_used,
    reason = "derived Serialize of plain fields cannot fail"
)]
pub fn toml_pretty<T: Serialize + ?Sized>(v: &T) -> String {
    toml::to_string_pretty(v).expect("plain data serialises")
}
