//! The fuzzer's reference: what the network stack would deliver to the server's socket for a frame,
//! and what the UDP server answers to the datagram's text.

use bytes::BytesMut;

use super::super::ip_checksum;
use super::PORT;
use crate::exec::{execute, reject_too_large_noreply, Ctx};
use crate::protocol::{parse, Limits, Parsed};

/// What the UDP server does with a datagram's text (server/udp.rs hands it to server/conn.rs's
/// pipeline): every complete request in order, an incomplete tail dropped.
pub(super) fn udp_reference(ctx: &Ctx, text: &[u8]) -> Vec<u8> {
    if text.first() == Some(&kv_common::BIN_REQUEST_MAGIC) {
        return super::super::binary::udp_reply(ctx, text);
    }
    let limits = Limits { item_size_max: ctx.config.item_size_max };
    let mut out = BytesMut::new();
    let mut rest = text;
    while !rest.is_empty() {
        match parse(rest, &limits) {
            Parsed::Command { cmd, consumed } => {
                let close = execute(&cmd, ctx, &mut out).close;
                rest = &rest[consumed..];
                if close {
                    break;
                }
            }
            Parsed::Error { reply, consumed, swallow, close, too_large_key } => {
                match too_large_key {
                    Some(key) => {
                        reject_too_large_noreply(key, reply.is_empty(), ctx, &mut out);
                    }
                    None => out.extend_from_slice(reply),
                }
                rest = &rest[(consumed + swallow).min(rest.len())..];
                if close {
                    break;
                }
            }
            Parsed::Incomplete | Parsed::Partial { .. } => break,
        }
    }
    out.to_vec()
}

/// The datagram text the network stack would hand the UDP server for this frame, or None if the stack
/// would not deliver it to the server's socket at all (or the server ignores it). The destination
/// address is not modelled (the program is loaded without a listening address: any).
pub(super) fn delivered(pkt: &[u8]) -> Option<Result<&[u8], ()>> {
    let be = |at: usize| u16::from_be_bytes([pkt[at], pkt[at + 1]]) as usize;
    if pkt.len() >= 14 && be(12) == 0x86dd {
        return delivered6(pkt);
    }
    if pkt.len() < 34 || be(12) != 0x0800 {
        return None;
    }
    let (ver, ihl) = (pkt[14] >> 4, (pkt[14] & 15) as usize * 4);
    let ip_len = be(16);
    if ver != 4 || ihl < 20 || ip_len < ihl || 14 + ip_len > pkt.len() || pkt.len() < 14 + ihl + 8 {
        return None;
    }
    // The stack drops a header whose checksum does not verify.
    if ip_checksum(&pkt[14..14 + ihl]) != 0 {
        return None;
    }
    // Fragments are reassembled first: not this datagram's text, and never answerable from one frame.
    if be(20) & 0x3fff != 0 || pkt[23] != 17 {
        return None;
    }
    // Only the test's allowlist (10.0.0.0/8) gets UDP answers.
    if pkt[26] != 10 {
        return None;
    }
    let udp = 14 + ihl;
    let udp_len = be(udp + 4);
    if be(udp + 2) != PORT as usize || udp_len < 8 || udp_len > ip_len - ihl {
        return None;
    }
    let payload = &pkt[udp + 8..udp + udp_len];
    if payload.len() < 8 {
        return None;
    }
    // A datagram count other than 1 is dropped unanswered (the sequence number is not looked at).
    if payload[4..6] != [0, 1] {
        return Some(Err(()));
    }
    Some(Ok(&payload[8..]))
}

/// [`delivered`] for IPv6: no extension headers (the stack would walk them; the program passes them), a
/// UDP checksum present (mandatory; its value is not modelled, as for IPv4: offloads leave it partial),
/// the test's IPv6 allowlist (fd00:0:0:77::/64).
fn delivered6(pkt: &[u8]) -> Option<Result<&[u8], ()>> {
    let be = |at: usize| u16::from_be_bytes([pkt[at], pkt[at + 1]]) as usize;
    if pkt.len() < 62 || pkt[14] >> 4 != 6 || pkt[20] != 17 || pkt[22..30] != super::super::ipv6::SRC[..8] {
        return None;
    }
    let payload_len = be(18);
    let udp_len = be(58);
    if 54 + payload_len > pkt.len() || udp_len < 8 || udp_len > payload_len || be(56) != PORT as usize {
        return None;
    }
    if be(60) == 0 {
        return None;
    }
    let payload = &pkt[62..54 + udp_len];
    if payload.len() < 8 {
        return None;
    }
    if payload[4..6] != [0, 1] {
        return Some(Err(()));
    }
    Some(Ok(&payload[8..]))
}
