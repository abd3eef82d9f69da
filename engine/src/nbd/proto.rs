//! NBD wire format: the constants of the protocol document (`doc/proto.md` of the NBD project)
//! and the fixed-size messages of the transmission phase. All integers are big-endian.
//!
//! Pure functions over byte slices; no I/O here, so the parser can be fed random bytes.

/// "NBDMAGIC": the first eight bytes the server sends.
pub const INIT_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": starts the newstyle negotiation and every client option.
pub const OPTS_MAGIC: u64 = 0x4948_4156_454f_5054;
/// Starts every option reply.
pub const REP_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flags (server).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;

/// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
const REP_FLAG_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;

/// Information types of `NBD_REP_INFO`.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// Error values of replies (the protocol's own numbering, equal to Linux errno).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// The largest payload a client may send or ask for (the protocol's default maximum).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Longest export name or option payload accepted during the handshake.
pub const MAX_OPTION_BYTES: u32 = 4096;

pub const REQUEST_BYTES: usize = 28;
pub const SIMPLE_REPLY_BYTES: usize = 16;

/// A transmission-phase command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    WriteZeroes,
    /// A command type this server does not implement; answered with EINVAL.
    Other(u16),
}

impl Command {
    fn from_wire(t: u16) -> Command {
        match t {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disc,
            3 => Command::Flush,
            4 => Command::Trim,
            6 => Command::WriteZeroes,
            other => Command::Other(other),
        }
    }
}

/// One request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: Command,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

/// A header whose magic is wrong: the stream is out of step, and the connection must close.
#[derive(Debug, PartialEq, Eq)]
pub struct BadMagic(pub u32);

/// Parses a 28-byte request header.
pub fn parse_request(b: &[u8; REQUEST_BYTES]) -> Result<Request, BadMagic> {
    let magic = u32::from_be_bytes(b[0..4].try_into().expect("4 bytes"));
    if magic != REQUEST_MAGIC {
        return Err(BadMagic(magic));
    }
    Ok(Request {
        flags: u16::from_be_bytes([b[4], b[5]]),
        command: Command::from_wire(u16::from_be_bytes([b[6], b[7]])),
        cookie: u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")),
        offset: u64::from_be_bytes(b[16..24].try_into().expect("8 bytes")),
        length: u32::from_be_bytes(b[24..28].try_into().expect("4 bytes")),
    })
}

/// A simple reply header.
pub fn simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_BYTES] {
    let mut h = [0u8; SIMPLE_REPLY_BYTES];
    h[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&error.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    h
}

/// What an export looks like to the request checker.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub size: u64,
    pub block_size: u32,
    pub read_only: bool,
    pub can_trim: bool,
    pub can_write_zeroes: bool,
}

/// Checks a request against the export; `Err` is the NBD error to reply with. A write's
/// payload follows the header whatever the verdict, and the caller must consume it.
pub fn check_request(r: &Request, g: &Geometry) -> Result<(), u32> {
    let known_flags = CMD_FLAG_FUA | CMD_FLAG_NO_HOLE;
    if r.flags & !known_flags != 0 {
        return Err(EINVAL);
    }
    let ranged = match r.command {
        Command::Trim if !g.can_trim => return Err(EINVAL),
        Command::WriteZeroes if !g.can_write_zeroes => return Err(EINVAL),
        Command::Read | Command::Write | Command::Trim | Command::WriteZeroes => true,
        Command::Flush | Command::Disc => false,
        Command::Other(_) => return Err(EINVAL),
    };
    if g.read_only
        && matches!(
            r.command,
            Command::Write | Command::Trim | Command::WriteZeroes
        )
    {
        return Err(EPERM);
    }
    if !ranged {
        return Ok(());
    }
    if r.length == 0 {
        return Err(EINVAL);
    }
    if matches!(r.command, Command::Read | Command::Write) && r.length > MAX_PAYLOAD {
        return Err(EINVAL);
    }
    let bs = g.block_size as u64;
    if !r.offset.is_multiple_of(bs) || !(r.length as u64).is_multiple_of(bs) {
        return Err(EINVAL);
    }
    let end = r.offset.checked_add(r.length as u64);
    if end.is_none_or(|e| e > g.size) {
        // The protocol asks for ENOSPC on writes past the end, EINVAL otherwise.
        return Err(if r.command == Command::Read {
            EINVAL
        } else {
            ENOSPC
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The client side of `parse_request`.
    fn encode_request(r: &Request) -> [u8; REQUEST_BYTES] {
        let wire = match r.command {
            Command::Read => 0,
            Command::Write => 1,
            Command::Disc => 2,
            Command::Flush => 3,
            Command::Trim => 4,
            Command::WriteZeroes => 6,
            Command::Other(t) => t,
        };
        let mut b = [0u8; REQUEST_BYTES];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&r.flags.to_be_bytes());
        b[6..8].copy_from_slice(&u16::to_be_bytes(wire));
        b[8..16].copy_from_slice(&r.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&r.offset.to_be_bytes());
        b[24..28].copy_from_slice(&r.length.to_be_bytes());
        b
    }

    fn geometry() -> Geometry {
        Geometry {
            size: 1 << 20,
            block_size: 512,
            read_only: false,
            can_trim: true,
            can_write_zeroes: true,
        }
    }

    fn req(command: Command, offset: u64, length: u32) -> Request {
        Request {
            flags: 0,
            command,
            cookie: 42,
            offset,
            length,
        }
    }

    #[test]
    fn request_round_trips_through_the_wire_format() {
        let r = Request {
            flags: CMD_FLAG_FUA,
            command: Command::Write,
            cookie: 0x0102_0304_0506_0708,
            offset: 4096,
            length: 8192,
        };
        assert_eq!(parse_request(&encode_request(&r)), Ok(r));
        let mut bad = encode_request(&r);
        bad[0] ^= 1;
        assert!(parse_request(&bad).is_err());
    }

    #[test]
    fn checks_give_the_protocols_errors() {
        let g = geometry();
        assert_eq!(check_request(&req(Command::Read, 0, 512), &g), Ok(()));
        assert_eq!(check_request(&req(Command::Read, 1, 512), &g), Err(EINVAL));
        assert_eq!(check_request(&req(Command::Read, 0, 100), &g), Err(EINVAL));
        assert_eq!(check_request(&req(Command::Read, 0, 0), &g), Err(EINVAL));
        assert_eq!(
            check_request(&req(Command::Read, 1 << 20, 512), &g),
            Err(EINVAL)
        );
        assert_eq!(
            check_request(&req(Command::Write, 1 << 20, 512), &g),
            Err(ENOSPC)
        );
        assert_eq!(
            check_request(&req(Command::Write, u64::MAX - 511, 512), &g),
            Err(ENOSPC)
        );
        assert_eq!(
            check_request(&req(Command::Other(5), 0, 512), &g),
            Err(EINVAL)
        );
        assert_eq!(check_request(&req(Command::Flush, 0, 0), &g), Ok(()));
        let mut flagged = req(Command::Read, 0, 512);
        flagged.flags = 1 << 9;
        assert_eq!(check_request(&flagged, &g), Err(EINVAL));
        let ro = Geometry {
            read_only: true,
            ..g
        };
        assert_eq!(check_request(&req(Command::Write, 0, 512), &ro), Err(EPERM));
        assert_eq!(check_request(&req(Command::Trim, 0, 512), &ro), Err(EPERM));
        assert_eq!(check_request(&req(Command::Read, 0, 512), &ro), Ok(()));
        let no_trim = Geometry {
            can_trim: false,
            ..g
        };
        assert_eq!(
            check_request(&req(Command::Trim, 0, 512), &no_trim),
            Err(EINVAL)
        );
    }

    /// Random headers never panic, and a request the checker accepts always lies inside the
    /// export, whole blocks, with a bounded payload.
    #[test]
    fn random_headers_are_either_refused_or_in_range() {
        let g = geometry();
        let mut rng = Rng::new(7);
        for _ in 0..200_000 {
            let mut b = [0u8; REQUEST_BYTES];
            for chunk in b.chunks_mut(8) {
                let v = rng.next_u64().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
            if rng.next_u64().is_multiple_of(2) {
                b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
                // Small types and plausible ranges, so the accepting path is exercised too.
                b[6] = 0;
                b[7] %= 8;
                b[4] = 0;
                b[5] &= 3;
                let offset = (rng.next_u64() % (2 << 20)) & !511;
                b[16..24].copy_from_slice(&offset.to_be_bytes());
                let len = ((rng.next_u64() % 4096) as u32) & !511;
                b[24..28].copy_from_slice(&len.to_be_bytes());
            }
            let Ok(r) = parse_request(&b) else { continue };
            if check_request(&r, &g).is_ok() && !matches!(r.command, Command::Flush | Command::Disc)
            {
                assert!(r.length > 0 && r.length % 512 == 0 && r.offset % 512 == 0);
                assert!(r.offset + r.length as u64 <= g.size, "{r:?}");
            }
        }
    }
}
