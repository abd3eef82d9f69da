//! The fixed newstyle handshake, server side, as blocking reads and writes on any stream.
//!
//! The server greets, reads the client flags, then answers options until one of them moves
//! the connection to transmission (`EXPORT_NAME`, or `GO` on a known export) or ends it
//! (`ABORT`, end of stream). `LIST` and `INFO` are answered and negotiation goes on; any
//! other option gets `NBD_REP_ERR_UNSUP`. Bounds: an option's payload is at most
//! [`MAX_OPTION_BYTES`], and at most [`MAX_OPTIONS`] options per connection. A violation
//! the protocol cannot answer (bad magic, unknown client flags, an oversized option) is an
//! error, and the caller closes the connection.
//!
//! The stream's own timeouts bound how long a silent client can hold a handshake.

use super::proto::*;
use std::io::{self, Read, Write};

/// Most options one connection may send before it must pick an export.
pub const MAX_OPTIONS: usize = 256;

/// What the handshake needs to know about an export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportView {
    pub size: u64,
    pub block_size: u32,
    /// Transmission flags.
    pub flags: u16,
}

/// Where the handshake looks exports up.
pub trait ExportDirectory {
    fn find(&self, name: &str) -> Option<ExportView>;
    fn names(&self) -> Vec<String>;
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
}

fn violation(what: impl Into<String>) -> HandshakeError {
    HandshakeError::Protocol(what.into())
}

/// Runs the handshake. `Ok(Some(name))`: the client entered transmission on export `name`;
/// `Ok(None)`: it left cleanly (ABORT, or closed the stream between options).
pub fn negotiate<S: Read + Write>(
    s: &mut S,
    exports: &dyn ExportDirectory,
) -> Result<Option<String>, HandshakeError> {
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&INIT_MAGIC.to_be_bytes());
    greeting.extend_from_slice(&OPTS_MAGIC.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&greeting)?;
    s.flush()?;

    let client_flags = read_u32(s)?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(violation(format!("unknown client flags {client_flags:#x}")));
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;

    for _ in 0..MAX_OPTIONS {
        let mut head = [0u8; 16];
        match s.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let magic = u64::from_be_bytes(head[0..8].try_into().expect("8 bytes"));
        if magic != OPTS_MAGIC {
            return Err(violation(format!("option magic {magic:#x}")));
        }
        let option = u32::from_be_bytes(head[8..12].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(head[12..16].try_into().expect("4 bytes"));
        if len > MAX_OPTION_BYTES {
            return Err(violation(format!(
                "option {option} carries {len} bytes (limit {MAX_OPTION_BYTES})"
            )));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        match option {
            OPT_EXPORT_NAME => {
                // A name that is not UTF-8 names no export (as for GO): not the export whose
                // name its lossy decoding happens to give.
                let Ok(name) = String::from_utf8(data) else {
                    return Err(violation("EXPORT_NAME of a name that is not UTF-8"));
                };
                let Some(export) = exports.find(&name) else {
                    // The protocol has no error reply for EXPORT_NAME: the server closes.
                    return Err(violation(format!("EXPORT_NAME of unknown export '{name}'")));
                };
                let mut reply = Vec::with_capacity(134);
                reply.extend_from_slice(&export.size.to_be_bytes());
                reply.extend_from_slice(&export.flags.to_be_bytes());
                if !no_zeroes {
                    reply.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&reply)?;
                s.flush()?;
                return Ok(Some(name));
            }
            OPT_ABORT => {
                // The client may already have gone; the acknowledgement is a courtesy.
                let _ = reply(s, option, REP_ACK, &[]);
                return Ok(None);
            }
            OPT_LIST if !data.is_empty() => {
                reply(s, option, REP_ERR_INVALID, b"LIST takes no data")?
            }
            OPT_LIST => {
                for name in exports.names() {
                    let mut d = Vec::with_capacity(4 + name.len());
                    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    d.extend_from_slice(name.as_bytes());
                    reply(s, option, REP_SERVER, &d)?;
                }
                reply(s, option, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                if let Some(name) = info_or_go(s, option, &data, exports)? {
                    return Ok(Some(name));
                }
            }
            _ => reply(s, option, REP_ERR_UNSUP, b"option not supported")?,
        }
    }
    Err(violation(format!("more than {MAX_OPTIONS} options")))
}

/// Answers INFO or GO; returns the export's name when GO succeeded.
fn info_or_go<S: Write>(
    s: &mut S,
    option: u32,
    data: &[u8],
    exports: &dyn ExportDirectory,
) -> Result<Option<String>, HandshakeError> {
    let Some((name, requests)) = parse_info_request(data) else {
        reply(s, option, REP_ERR_INVALID, b"malformed INFO/GO request")?;
        return Ok(None);
    };
    let Some(export) = exports.find(&name) else {
        let msg = format!("no export named '{name}'");
        reply(s, option, REP_ERR_UNKNOWN, msg.as_bytes())?;
        return Ok(None);
    };
    let mut info = Vec::with_capacity(12);
    info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    info.extend_from_slice(&export.size.to_be_bytes());
    info.extend_from_slice(&export.flags.to_be_bytes());
    reply(s, option, REP_INFO, &info)?;
    if requests.contains(&INFO_NAME) {
        let mut d = INFO_NAME.to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        reply(s, option, REP_INFO, &d)?;
    }
    // Block sizes: requests must be whole blocks; 4 KiB or the block preferred; payloads
    // up to the protocol's default maximum.
    let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    d.extend_from_slice(&export.block_size.to_be_bytes());
    d.extend_from_slice(&export.block_size.max(4096).to_be_bytes());
    d.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
    reply(s, option, REP_INFO, &d)?;
    reply(s, option, REP_ACK, &[])?;
    Ok((option == OPT_GO).then_some(name))
}

/// `u32 name length, name, u16 count, count * u16 information types`.
fn parse_info_request(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let name_len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(data.get(4..4usize.checked_add(name_len)?)?).ok()?;
    let rest = &data[4 + name_len..];
    let count = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
    let list = rest.get(2..)?;
    if list.len() != count * 2 {
        return None;
    }
    let requests = list
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Some((name.to_string(), requests))
}

fn reply<S: Write>(s: &mut S, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&REP_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b)?;
    s.flush()
}

fn read_u32<S: Read>(s: &mut S) -> io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use std::io::Cursor;

    /// A stream that reads a script and records what the server wrote.
    struct Scripted {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct OneExport;

    impl ExportDirectory for OneExport {
        fn find(&self, name: &str) -> Option<ExportView> {
            (name == "disk").then_some(ExportView {
                size: 1 << 20,
                block_size: 512,
                flags: TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH,
            })
        }
        fn names(&self) -> Vec<String> {
            vec!["disk".into()]
        }
    }

    fn option(kind: u32, data: &[u8]) -> Vec<u8> {
        let mut b = OPTS_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        b
    }

    fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    fn run(script: Vec<u8>) -> (Result<Option<String>, HandshakeError>, Vec<u8>) {
        let mut s = Scripted {
            input: Cursor::new(script),
            output: Vec::new(),
        };
        let r = negotiate(&mut s, &OneExport);
        (r, s.output)
    }

    /// Splits the server's option replies after the 18-byte greeting: (option, type, data).
    fn replies(out: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        let mut v = Vec::new();
        let mut b = &out[18..];
        while b.len() >= 20 {
            assert_eq!(u64::from_be_bytes(b[0..8].try_into().unwrap()), REP_MAGIC);
            let opt = u32::from_be_bytes(b[8..12].try_into().unwrap());
            let kind = u32::from_be_bytes(b[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(b[16..20].try_into().unwrap()) as usize;
            v.push((opt, kind, b[20..20 + len].to_vec()));
            b = &b[20 + len..];
        }
        v
    }

    #[test]
    fn list_then_unknown_then_go() {
        let mut script = (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
            .to_be_bytes()
            .to_vec();
        script.extend(option(OPT_LIST, &[]));
        script.extend(option(OPT_GO, &go_data("nope", &[])));
        script.extend(option(99, b"xyz"));
        script.extend(option(OPT_GO, &go_data("disk", &[INFO_NAME])));
        let (r, out) = run(script);
        assert_eq!(r.unwrap(), Some("disk".to_string()));
        assert_eq!(&out[0..8], b"NBDMAGIC");
        assert_eq!(&out[8..16], b"IHAVEOPT");
        let kinds: Vec<(u32, u32)> = replies(&out).iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(
            kinds,
            vec![
                (OPT_LIST, REP_SERVER),
                (OPT_LIST, REP_ACK),
                (OPT_GO, REP_ERR_UNKNOWN),
                (99, REP_ERR_UNSUP),
                (OPT_GO, REP_INFO),
                (OPT_GO, REP_INFO),
                (OPT_GO, REP_INFO),
                (OPT_GO, REP_ACK),
            ]
        );
        let all = replies(&out);
        let export_info = &all[4].2;
        assert_eq!(&export_info[0..2], &INFO_EXPORT.to_be_bytes());
        assert_eq!(
            u64::from_be_bytes(export_info[2..10].try_into().unwrap()),
            1 << 20
        );
        let block = &all[6].2;
        assert_eq!(&block[0..2], &INFO_BLOCK_SIZE.to_be_bytes());
        assert_eq!(u32::from_be_bytes(block[2..6].try_into().unwrap()), 512);
    }

    #[test]
    fn export_name_answers_size_flags_and_zeroes() {
        let mut script = FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        script.extend(option(OPT_EXPORT_NAME, b"disk"));
        let (r, out) = run(script);
        assert_eq!(r.unwrap(), Some("disk".to_string()));
        assert_eq!(out.len(), 18 + 8 + 2 + 124);
        let mut script = FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        script.extend(option(OPT_EXPORT_NAME, b"other"));
        assert!(matches!(run(script).0, Err(HandshakeError::Protocol(_))));
        // Not UTF-8: no export, whatever its lossy decoding ("\u{FFFD}") would name.
        let mut script = FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        script.extend(option(OPT_EXPORT_NAME, b"\xff"));
        match run(script).0 {
            Err(HandshakeError::Protocol(why)) => assert!(why.contains("not UTF-8"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn violations_end_the_handshake() {
        let bad_flags = 0x80u32.to_be_bytes().to_vec();
        assert!(matches!(run(bad_flags).0, Err(HandshakeError::Protocol(_))));
        let mut bad_magic = 0u32.to_be_bytes().to_vec();
        bad_magic.extend_from_slice(&[0xAB; 16]);
        assert!(matches!(run(bad_magic).0, Err(HandshakeError::Protocol(_))));
        let mut oversized = 0u32.to_be_bytes().to_vec();
        oversized.extend_from_slice(&OPTS_MAGIC.to_be_bytes());
        oversized.extend_from_slice(&OPT_GO.to_be_bytes());
        oversized.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(run(oversized).0, Err(HandshakeError::Protocol(_))));
        let mut malformed_go = 0u32.to_be_bytes().to_vec();
        malformed_go.extend(option(OPT_GO, &[0, 0, 0, 200, b'x']));
        let (r, out) = run(malformed_go);
        assert_eq!(r.unwrap(), None, "end of stream after the error reply");
        assert_eq!(replies(&out)[0].1, REP_ERR_INVALID);
        let mut abort = 0u32.to_be_bytes().to_vec();
        abort.extend(option(OPT_ABORT, &[]));
        assert_eq!(run(abort).0.unwrap(), None);
    }

    /// Random scripts (half of them starting like a real client) never panic, and the
    /// server never writes more than its bounded replies.
    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng::new(11);
        for round in 0..20_000 {
            let mut script = Vec::new();
            if round % 2 == 0 {
                script.extend_from_slice(&FLAG_C_FIXED_NEWSTYLE.to_be_bytes());
                script.extend_from_slice(&OPTS_MAGIC.to_be_bytes());
                script.extend_from_slice(&((rng.next_u64() % 12) as u32).to_be_bytes());
            }
            let n = (rng.next_u64() % 64) as usize;
            script.extend((0..n).map(|_| rng.next_u64() as u8));
            let (_, out) = run(script);
            assert!(out.len() < 18 + MAX_OPTIONS * (20 + 200));
        }
    }
}
