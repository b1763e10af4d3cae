//! memcached binary protocol: request parsing into typed commands (zero-copy, as the text parser) and
//! the response header. Reference: memcached 1.6 `proto_bin.c` and `protocol_binary.h`.
//!
//! Deliberate differences from memcached (both about malformed input):
//! - A header whose key and extras lengths exceed its body length is answered (Unknown command, then
//!   close) as soon as the header is in; memcached first waits for the key and extras it announced.
//! - An unknown opcode's body is discarded exactly; memcached discards `bodylen` bytes after the key and
//!   extras it already read, eating the start of the next request.

mod parse;
pub mod reply;

pub use parse::{parse, BinParsed};

use super::command::{ArithCmd, StoreCmd, TouchCmd};

/// First byte of every request; a connection whose first byte is this speaks binary.
pub const REQUEST_MAGIC: u8 = kv_common::BIN_REQUEST_MAGIC;
/// First byte of every response.
pub const RESPONSE_MAGIC: u8 = kv_common::BIN_RESPONSE_MAGIC;
/// Fixed header length, requests and responses alike.
pub const HEADER_LEN: usize = kv_common::BIN_HEADER_LEN;

/// Opcodes (`protocol_binary_command`).
pub mod op {
    pub const GET: u8 = kv_common::BIN_OP_GET;
    pub const SET: u8 = 0x01;
    pub const ADD: u8 = 0x02;
    pub const REPLACE: u8 = 0x03;
    pub const DELETE: u8 = 0x04;
    pub const INCREMENT: u8 = 0x05;
    pub const DECREMENT: u8 = 0x06;
    pub const QUIT: u8 = 0x07;
    pub const FLUSH: u8 = 0x08;
    pub const GETQ: u8 = 0x09;
    pub const NOOP: u8 = 0x0a;
    pub const VERSION: u8 = 0x0b;
    pub const GETK: u8 = kv_common::BIN_OP_GETK;
    pub const GETKQ: u8 = 0x0d;
    pub const APPEND: u8 = 0x0e;
    pub const PREPEND: u8 = 0x0f;
    pub const STAT: u8 = 0x10;
    pub const SETQ: u8 = 0x11;
    pub const ADDQ: u8 = 0x12;
    pub const REPLACEQ: u8 = 0x13;
    pub const DELETEQ: u8 = 0x14;
    pub const INCREMENTQ: u8 = 0x15;
    pub const DECREMENTQ: u8 = 0x16;
    pub const QUITQ: u8 = 0x17;
    pub const FLUSHQ: u8 = 0x18;
    pub const APPENDQ: u8 = 0x19;
    pub const PREPENDQ: u8 = 0x1a;
    pub const TOUCH: u8 = 0x1c;
    pub const GAT: u8 = 0x1d;
    pub const GATQ: u8 = 0x1e;
    pub const SASL_LIST_MECHS: u8 = 0x20;
    pub const SASL_AUTH: u8 = 0x21;
    pub const SASL_STEP: u8 = 0x22;
    pub const GATK: u8 = 0x23;
    pub const GATKQ: u8 = 0x24;
}

/// Response statuses (`protocol_binary_response_status`) that this server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Status {
    Success = 0x00,
    KeyNotFound = 0x01,
    KeyExists = 0x02,
    TooLarge = 0x03,
    InvalidArguments = 0x04,
    NotStored = 0x05,
    NonNumeric = 0x06,
    UnknownCommand = 0x81,
    OutOfMemory = 0x82,
}

/// What every response echoes from its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echo {
    /// The request's opcode, quiet forms included.
    pub opcode: u8,
    pub opaque: u32,
}

/// One binary request. Storage, arithmetic and touch reuse the text protocol's command types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinRequest<'a> {
    pub echo: Echo,
    /// A quiet opcode: success (or, for gets, a miss) is not answered; errors are.
    pub quiet: bool,
    pub cmd: BinCmd<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinCmd<'a> {
    /// get / getk / gat / gatk (and quiet forms): `touch` is the new exptime of a gat.
    Get {
        key: &'a [u8],
        with_key: bool,
        touch: Option<i64>,
    },
    /// touch: the hit's answer carries the flags but not the value.
    Touch(TouchCmd<'a>),
    /// set / add / replace (`SetMode::Cas` when the request carries a CAS) / append / prepend.
    /// `base` is the opcode's non-quiet form: memcached words a refusal by it.
    Store {
        cmd: StoreCmd<'a>,
        base: u8,
    },
    /// delete; `cas` non-zero: only if the item's CAS matches.
    Delete {
        key: &'a [u8],
        cas: u64,
    },
    /// increment / decrement; `vivify`: on a miss create the item with (exptime, initial value).
    Arith {
        cmd: ArithCmd<'a>,
        cas: u64,
        vivify: Option<(i64, u64)>,
    },
    Flush {
        delay: i64,
    },
    Noop,
    Version,
    /// stat with its key (empty: the general listing).
    Stat {
        key: &'a [u8],
    },
    Quit,
}

#[cfg(test)]
mod tests;
