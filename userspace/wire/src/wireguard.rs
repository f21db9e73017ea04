//! WireGuard messages (the WireGuard paper, §5.4): the four message types and
//! their clear-text fields. Cryptographic fields are opaque bytes here; the Noise
//! state machine (boringtun in the engine) reads and writes them.
//!
//! Every message starts with a type byte and three reserved zero bytes; the
//! numbers are **little-endian**, unlike every other header in this crate.
//!
//! ```text
//! offset  0      1..4      4..8       8..12      12..16     then             length
//! type 1  | 1 | 0  0  0 | sender   | ephemeral, encrypted static and timestamp, | 148
//!         |   |         |          | mac1, mac2                                 |
//! type 2  | 2 | 0  0  0 | sender   | receiver | ephemeral, empty, mac1, mac2    |  92
//! type 3  | 3 | 0  0  0 | receiver | nonce, encrypted cookie                    |  64
//! type 4  | 4 | 0  0  0 | receiver | counter (64 bits)     | encrypted packet   | >= 32
//!         |   |         |          |                       | and 16-byte tag    |
//! ```

use crate::{Error, Field, Result};

mod field {
    use crate::Field;
    pub const TYPE: usize = 0;
    pub const RESERVED: Field = 1..4;
    /// Sender index of the handshake messages.
    pub const SENDER: Field = 4..8;
    /// Receiver index of the handshake response.
    pub const RESPONSE_RECEIVER: Field = 8..12;
    /// Receiver index of the cookie reply and transport data messages.
    pub const RECEIVER: Field = 4..8;
    /// Counter (nonce) of a transport data message.
    pub const COUNTER: Field = 8..16;
    /// Start of a transport data message's encrypted packet.
    pub const DATA: usize = 16;
}

/// Length of a handshake initiation.
pub const HANDSHAKE_INITIATION_LEN: usize = 148;
/// Length of a handshake response.
pub const HANDSHAKE_RESPONSE_LEN: usize = 92;
/// Length of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Length of a transport data message's clear header (type, receiver, counter).
pub const TRANSPORT_HEADER_LEN: usize = field::DATA;
/// Shortest transport data message: the header and the 16-byte authentication tag
/// (a keepalive: an empty encrypted packet).
pub const TRANSPORT_MIN_LEN: usize = TRANSPORT_HEADER_LEN + 16;
/// The usual WireGuard UDP port.
pub const PORT: u16 = 51820;

/// A WireGuard message type (the first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageType(pub u8);

impl MessageType {
    /// Handshake initiation (1).
    pub const HANDSHAKE_INITIATION: MessageType = MessageType(1);
    /// Handshake response (2).
    pub const HANDSHAKE_RESPONSE: MessageType = MessageType(2);
    /// Cookie reply (3).
    pub const COOKIE_REPLY: MessageType = MessageType(3);
    /// Transport data (4).
    pub const TRANSPORT_DATA: MessageType = MessageType(4);

    /// Lower-case name (`handshake-initiation`, ..., `unknown`).
    pub const fn as_str(&self) -> &'static str {
        match self.0 {
            1 => "handshake-initiation",
            2 => "handshake-response",
            3 => "cookie-reply",
            4 => "transport-data",
            _ => "unknown",
        }
    }
}

impl core::fmt::Display for MessageType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[inline(always)]
fn read_le32(data: &[u8], field: Field) -> u32 {
    let b = &data[field];
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[inline(always)]
fn read_le64(data: &[u8], field: Field) -> u64 {
    let b = &data[field];
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// A WireGuard message (the UDP payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireGuardPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> WireGuardPacket<T> {
    /// Wraps a buffer without checking it; getters may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> WireGuardPacket<T> {
        WireGuardPacket { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<WireGuardPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Validates the message as WireGuard receivers do: `Truncated` if shorter than
    /// 4 bytes or than its type's length; `Malformed` for an unknown type, reserved
    /// bytes not zero, or a handshake or cookie message longer than its fixed length.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        let len = data.len();
        if len < 4 {
            return Err(Error::Truncated);
        }
        if data[field::RESERVED] != [0, 0, 0] {
            return Err(Error::Malformed);
        }
        let fixed = match MessageType(data[field::TYPE]) {
            MessageType::HANDSHAKE_INITIATION => HANDSHAKE_INITIATION_LEN,
            MessageType::HANDSHAKE_RESPONSE => HANDSHAKE_RESPONSE_LEN,
            MessageType::COOKIE_REPLY => COOKIE_REPLY_LEN,
            MessageType::TRANSPORT_DATA => {
                return if len < TRANSPORT_MIN_LEN {
                    Err(Error::Truncated)
                } else {
                    Ok(())
                };
            }
            _ => return Err(Error::Malformed),
        };
        match len.cmp(&fixed) {
            core::cmp::Ordering::Less => Err(Error::Truncated),
            core::cmp::Ordering::Greater => Err(Error::Malformed),
            core::cmp::Ordering::Equal => Ok(()),
        }
    }

    /// Returns the underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The message type.
    #[inline]
    pub fn message_type(&self) -> MessageType {
        MessageType(self.buffer.as_ref()[field::TYPE])
    }

    /// The sender's index (handshake initiation and response), or `None`.
    #[inline]
    pub fn sender_index(&self) -> Option<u32> {
        match self.message_type() {
            MessageType::HANDSHAKE_INITIATION | MessageType::HANDSHAKE_RESPONSE => {
                Some(read_le32(self.buffer.as_ref(), field::SENDER))
            }
            _ => None,
        }
    }

    /// The receiver's index (handshake response, cookie reply, transport data), or `None`.
    #[inline]
    pub fn receiver_index(&self) -> Option<u32> {
        let data = self.buffer.as_ref();
        match self.message_type() {
            MessageType::HANDSHAKE_RESPONSE => Some(read_le32(data, field::RESPONSE_RECEIVER)),
            MessageType::COOKIE_REPLY | MessageType::TRANSPORT_DATA => {
                Some(read_le32(data, field::RECEIVER))
            }
            _ => None,
        }
    }

    /// The counter of a transport data message, or `None`.
    #[inline]
    pub fn counter(&self) -> Option<u64> {
        match self.message_type() {
            MessageType::TRANSPORT_DATA => Some(read_le64(self.buffer.as_ref(), field::COUNTER)),
            _ => None,
        }
    }

    /// The encrypted packet and tag of a transport data message (empty for the other types).
    #[inline]
    pub fn encrypted(&self) -> &[u8] {
        match self.message_type() {
            MessageType::TRANSPORT_DATA => &self.buffer.as_ref()[field::DATA..],
            _ => &[],
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> WireGuardPacket<T> {
    /// Sets the type byte and zeroes the reserved bytes.
    #[inline]
    pub fn set_message_type(&mut self, value: MessageType) {
        let data = self.buffer.as_mut();
        data[field::TYPE] = value.0;
        data[field::RESERVED].fill(0);
    }

    /// Sets the sender's index (handshake messages; nothing for the other types).
    #[inline]
    pub fn set_sender_index(&mut self, value: u32) {
        if self.sender_index().is_some() {
            self.buffer.as_mut()[field::SENDER].copy_from_slice(&value.to_le_bytes());
        }
    }

    /// Sets the receiver's index (handshake response, cookie reply, transport data;
    /// nothing for a handshake initiation).
    #[inline]
    pub fn set_receiver_index(&mut self, value: u32) {
        let at = match self.message_type() {
            MessageType::HANDSHAKE_RESPONSE => field::RESPONSE_RECEIVER,
            MessageType::COOKIE_REPLY | MessageType::TRANSPORT_DATA => field::RECEIVER,
            _ => return,
        };
        self.buffer.as_mut()[at].copy_from_slice(&value.to_le_bytes());
    }

    /// Sets the counter of a transport data message (nothing for the other types).
    #[inline]
    pub fn set_counter(&mut self, value: u64) {
        if self.message_type() == MessageType::TRANSPORT_DATA {
            self.buffer.as_mut()[field::COUNTER].copy_from_slice(&value.to_le_bytes());
        }
    }

    /// The encrypted packet and tag of a transport data message, mutable (empty for the
    /// other types).
    #[inline]
    pub fn encrypted_mut(&mut self) -> &mut [u8] {
        match self.message_type() {
            MessageType::TRANSPORT_DATA => &mut self.buffer.as_mut()[field::DATA..],
            _ => &mut [],
        }
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for WireGuardPacket<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The clear-text fields of a WireGuard message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireGuardRepr {
    /// Handshake initiation.
    HandshakeInitiation {
        /// The initiator's index.
        sender_index: u32,
    },
    /// Handshake response.
    HandshakeResponse {
        /// The responder's index.
        sender_index: u32,
        /// The initiator's index.
        receiver_index: u32,
    },
    /// Cookie reply (the answer of a peer under load).
    CookieReply {
        /// Index of the handshake message it answers.
        receiver_index: u32,
    },
    /// Transport data.
    TransportData {
        /// The receiving peer's session index.
        receiver_index: u32,
        /// Counter (the nonce; replay protection).
        counter: u64,
        /// Bytes of encrypted packet and tag (at least 16).
        encrypted_len: usize,
    },
}

impl WireGuardRepr {
    /// Summarises a message (validated as in [`WireGuardPacket::check_len`]).
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(packet: &WireGuardPacket<T>) -> Result<WireGuardRepr> {
        packet.check_len()?;
        let data = packet.buffer.as_ref();
        Ok(match packet.message_type() {
            MessageType::HANDSHAKE_INITIATION => WireGuardRepr::HandshakeInitiation {
                sender_index: read_le32(data, field::SENDER),
            },
            MessageType::HANDSHAKE_RESPONSE => WireGuardRepr::HandshakeResponse {
                sender_index: read_le32(data, field::SENDER),
                receiver_index: read_le32(data, field::RESPONSE_RECEIVER),
            },
            MessageType::COOKIE_REPLY => WireGuardRepr::CookieReply {
                receiver_index: read_le32(data, field::RECEIVER),
            },
            MessageType::TRANSPORT_DATA => WireGuardRepr::TransportData {
                receiver_index: read_le32(data, field::RECEIVER),
                counter: read_le64(data, field::COUNTER),
                encrypted_len: data.len() - TRANSPORT_HEADER_LEN,
            },
            _ => return Err(Error::Malformed),
        })
    }

    /// The message type.
    #[inline]
    pub const fn message_type(&self) -> MessageType {
        match self {
            WireGuardRepr::HandshakeInitiation { .. } => MessageType::HANDSHAKE_INITIATION,
            WireGuardRepr::HandshakeResponse { .. } => MessageType::HANDSHAKE_RESPONSE,
            WireGuardRepr::CookieReply { .. } => MessageType::COOKIE_REPLY,
            WireGuardRepr::TransportData { .. } => MessageType::TRANSPORT_DATA,
        }
    }

    /// Length of the whole message.
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        match self {
            WireGuardRepr::HandshakeInitiation { .. } => HANDSHAKE_INITIATION_LEN,
            WireGuardRepr::HandshakeResponse { .. } => HANDSHAKE_RESPONSE_LEN,
            WireGuardRepr::CookieReply { .. } => COOKIE_REPLY_LEN,
            WireGuardRepr::TransportData { encrypted_len, .. } => {
                TRANSPORT_HEADER_LEN + *encrypted_len
            }
        }
    }

    /// Writes the clear-text fields (type, reserved zero bytes, indices, counter); the
    /// cryptographic fields are left as they are. `packet` must hold at least
    /// [`buffer_len`](Self::buffer_len) bytes.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut WireGuardPacket<T>) {
        packet.set_message_type(self.message_type());
        match *self {
            WireGuardRepr::HandshakeInitiation { sender_index } => {
                packet.set_sender_index(sender_index);
            }
            WireGuardRepr::HandshakeResponse {
                sender_index,
                receiver_index,
            } => {
                packet.set_sender_index(sender_index);
                packet.set_receiver_index(receiver_index);
            }
            WireGuardRepr::CookieReply { receiver_index } => {
                packet.set_receiver_index(receiver_index);
            }
            WireGuardRepr::TransportData {
                receiver_index,
                counter,
                ..
            } => {
                packet.set_receiver_index(receiver_index);
                packet.set_counter(counter);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::a5;
    use proptest::prelude::*;

    /// A transport data message: receiver 0x11223344, counter 7, a keepalive's 16-byte tag.
    fn transport() -> [u8; 32] {
        let mut m = [0xcc; 32];
        m[..16].copy_from_slice(&[4, 0, 0, 0, 0x44, 0x33, 0x22, 0x11, 7, 0, 0, 0, 0, 0, 0, 0]);
        m
    }

    #[test]
    fn deconstruct_transport_data() {
        let m = transport();
        let p = WireGuardPacket::new_checked(&m[..]).unwrap();
        assert_eq!(p.message_type(), MessageType::TRANSPORT_DATA);
        assert_eq!(p.message_type().as_str(), "transport-data");
        assert_eq!(p.receiver_index(), Some(0x1122_3344));
        assert_eq!(p.sender_index(), None);
        assert_eq!(p.counter(), Some(7));
        assert_eq!(p.encrypted(), &[0xcc; 16]);
        assert_eq!(
            WireGuardRepr::parse(&p),
            Ok(WireGuardRepr::TransportData {
                receiver_index: 0x1122_3344,
                counter: 7,
                encrypted_len: 16
            })
        );
    }

    #[test]
    fn deconstruct_handshakes_and_cookie() {
        let mut init = [0u8; HANDSHAKE_INITIATION_LEN];
        init[0] = 1;
        init[4..8].copy_from_slice(&[1, 2, 3, 4]);
        let p = WireGuardPacket::new_checked(&init[..]).unwrap();
        assert_eq!(p.message_type(), MessageType::HANDSHAKE_INITIATION);
        assert_eq!(p.sender_index(), Some(0x0403_0201));
        assert_eq!((p.receiver_index(), p.counter()), (None, None));
        assert_eq!(p.encrypted(), &[] as &[u8]);

        let mut resp = [0u8; HANDSHAKE_RESPONSE_LEN];
        resp[0] = 2;
        resp[4..12].copy_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
        let p = WireGuardPacket::new_checked(&resp[..]).unwrap();
        assert_eq!(
            WireGuardRepr::parse(&p),
            Ok(WireGuardRepr::HandshakeResponse {
                sender_index: 1,
                receiver_index: 2
            })
        );

        let mut cookie = [0u8; COOKIE_REPLY_LEN];
        cookie[0] = 3;
        cookie[4] = 9;
        let p = WireGuardPacket::new_checked(&cookie[..]).unwrap();
        assert_eq!(p.receiver_index(), Some(9));
        assert_eq!(p.message_type().to_string(), "cookie-reply");
    }

    #[test]
    fn construct() {
        let mut buf = a5(32);
        let mut p = WireGuardPacket::new_unchecked(&mut buf[..]);
        WireGuardRepr::TransportData {
            receiver_index: 0x1122_3344,
            counter: 7,
            encrypted_len: 16,
        }
        .emit(&mut p);
        p.encrypted_mut().fill(0xcc);
        assert_eq!(buf, transport());
    }

    #[test]
    fn emit_leaves_crypto_fields_alone() {
        let mut buf = a5(HANDSHAKE_RESPONSE_LEN);
        let repr = WireGuardRepr::HandshakeResponse {
            sender_index: 5,
            receiver_index: 6,
        };
        repr.emit(&mut WireGuardPacket::new_unchecked(&mut buf[..]));
        assert_eq!(&buf[..12], &[2, 0, 0, 0, 5, 0, 0, 0, 6, 0, 0, 0]);
        assert!(buf[12..].iter().all(|b| *b == 0xa5));
        assert_eq!(repr.buffer_len(), HANDSHAKE_RESPONSE_LEN);
    }

    #[test]
    fn setters_ignore_fields_the_type_lacks() {
        let mut buf = [0u8; HANDSHAKE_INITIATION_LEN];
        let mut p = WireGuardPacket::new_unchecked(&mut buf[..]);
        p.set_message_type(MessageType::HANDSHAKE_INITIATION);
        p.set_receiver_index(0xffff_ffff);
        p.set_counter(u64::MAX);
        assert!(p.encrypted_mut().is_empty());
        assert!(buf[1..].iter().all(|b| *b == 0));
    }

    #[test]
    fn bad_cases() {
        let m = transport();
        for len in 0..TRANSPORT_MIN_LEN {
            assert_eq!(
                WireGuardPacket::new_checked(&m[..len]),
                Err(Error::Truncated),
                "len {len}"
            );
        }
        for t in [0u8, 5, 0xff] {
            let mut b = m;
            b[0] = t;
            assert_eq!(WireGuardPacket::new_checked(&b[..]), Err(Error::Malformed));
        }
        for r in 1..4 {
            let mut b = m;
            b[r] = 1;
            assert_eq!(WireGuardPacket::new_checked(&b[..]), Err(Error::Malformed));
        }
        for (t, len) in [
            (1u8, HANDSHAKE_INITIATION_LEN),
            (2, HANDSHAKE_RESPONSE_LEN),
            (3, COOKIE_REPLY_LEN),
        ] {
            let mut b = [0u8; 200];
            b[0] = t;
            assert_eq!(
                WireGuardPacket::new_checked(&b[..len - 1]),
                Err(Error::Truncated)
            );
            assert_eq!(
                WireGuardPacket::new_checked(&b[..len + 1]),
                Err(Error::Malformed)
            );
            assert!(WireGuardPacket::new_checked(&b[..len]).is_ok());
        }
    }

    proptest! {
        #[test]
        fn transport_round_trip(receiver in any::<u32>(), counter in any::<u64>(), n in 16usize..64) {
            let repr = WireGuardRepr::TransportData { receiver_index: receiver, counter, encrypted_len: n };
            let mut buf = a5(repr.buffer_len());
            repr.emit(&mut WireGuardPacket::new_unchecked(&mut buf[..]));
            let p = WireGuardPacket::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(WireGuardRepr::parse(&p), Ok(repr));
        }

        #[test]
        fn handshake_round_trip(sender in any::<u32>(), receiver in any::<u32>(), t in 1u8..4) {
            let repr = match t {
                1 => WireGuardRepr::HandshakeInitiation { sender_index: sender },
                2 => WireGuardRepr::HandshakeResponse { sender_index: sender, receiver_index: receiver },
                _ => WireGuardRepr::CookieReply { receiver_index: receiver },
            };
            let mut buf = a5(repr.buffer_len());
            repr.emit(&mut WireGuardPacket::new_unchecked(&mut buf[..]));
            let p = WireGuardPacket::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(WireGuardRepr::parse(&p), Ok(repr));
        }

        #[test]
        fn any_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..160), t in 0u8..6) {
            let mut data = data;
            if data.len() >= 4 {
                data[0] = t;
                data[1..4].fill(0);
            }
            if let Ok(p) = WireGuardPacket::new_checked(&data[..]) {
                let _ = (p.message_type(), p.sender_index(), p.receiver_index(), p.counter(), p.encrypted());
                prop_assert!(WireGuardRepr::parse(&p).is_ok());
            }
        }
    }
}
