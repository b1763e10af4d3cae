//! memcached text protocol (classic and meta commands): request types and a zero-copy parser.
//!
//! Reference behaviour is memcached 1.6.38's `proto_text.c` (the last release with the classic
//! `tokenize_command` parser), with the stricter number parsing of later 1.6 releases. Where we
//! deviate, the item is listed in `parse.rs`' module docs.

mod admin;
pub mod base64;
pub mod binary;
pub mod command;
mod meta;
mod parse;
pub mod reply;

pub use command::*;
pub use parse::{item_size_ok, parse, Limits, Parsed, KEY_MAX_LENGTH, MAX_LINE_NO_NEWLINE};

#[cfg(test)]
mod tests;
