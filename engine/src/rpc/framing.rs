//! Splits a byte stream into JSON values, as SPDK's JSON-RPC server does: values follow one
//! another on the stream with no length prefix and no separator required (whitespace between
//! them is allowed).
//!
//! [`Splitter`] scans bytes as they arrive and tracks only what is needed to see where a
//! top-level value ends: nesting depth, whether it is inside a string, and whether the last
//! byte was a backslash. It does not validate; the JSON parser does that on the complete
//! value. A value longer than the limit is refused as soon as the limit is passed, so a
//! client cannot make the server buffer an unbounded request.

/// Why the stream cannot go on.
#[derive(Debug, PartialEq, Eq)]
pub enum FramingError {
    /// A value grew past the limit before it ended.
    TooLarge { limit: usize },
    /// A top-level value that is not an object or an array (a request is always one of those).
    NotAnObject { byte: u8 },
}

/// Incremental scanner over one connection's bytes.
pub struct Splitter {
    limit: usize,
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned.
    scanned: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl Splitter {
    pub fn new(limit: usize) -> Splitter {
        Splitter {
            limit,
            buf: Vec::new(),
            scanned: 0,
            depth: 0,
            in_string: false,
            escaped: false,
        }
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete value, if the bytes so far hold one.
    pub fn next_value(&mut self) -> Result<Option<Vec<u8>>, FramingError> {
        if self.depth == 0 {
            // Whitespace between values does not count: drop all of it at once (one byte at
            // a time moved the whole buffer per byte, quadratic in a stream of spaces).
            let blank = self.buf[self.scanned..]
                .iter()
                .take_while(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                .count();
            if blank > 0 {
                self.buf.drain(..self.scanned + blank);
                self.scanned = 0;
            }
        }
        while self.scanned < self.buf.len() {
            let b = self.buf[self.scanned];
            self.scanned += 1;
            if self.scanned > self.limit {
                return Err(FramingError::TooLarge { limit: self.limit });
            }
            if self.depth == 0 {
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => {
                        // Whitespace between values: drop it so it does not count.
                        self.buf.drain(..self.scanned);
                        self.scanned = 0;
                        continue;
                    }
                    b'{' | b'[' => self.depth = 1,
                    other => return Err(FramingError::NotAnObject { byte: other }),
                }
                continue;
            }
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
            } else {
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            let value: Vec<u8> = self.buf.drain(..self.scanned).collect();
                            self.scanned = 0;
                            return Ok(Some(value));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(None)
    }

    /// Bytes held for a value not yet complete.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn all(s: &mut Splitter) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(v) = s.next_value().unwrap() {
            out.push(String::from_utf8(v).unwrap());
        }
        out
    }

    #[test]
    fn back_to_back_values_without_separators() {
        let mut s = Splitter::new(1024);
        s.push(br#"{"a":1}{"b":[1,{"c":"}"}]} [1,2]"#);
        assert_eq!(
            all(&mut s),
            [r#"{"a":1}"#, r#"{"b":[1,{"c":"}"}]}"#, "[1,2]"]
        );
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn strings_with_escaped_quotes_and_braces() {
        let mut s = Splitter::new(1024);
        s.push(br#"{"m":"a\"}\\"}"#);
        assert_eq!(all(&mut s), [r#"{"m":"a\"}\\"}"#]);
    }

    #[test]
    fn any_split_of_the_stream_gives_the_same_values() {
        let stream = br#" {"jsonrpc":"2.0","method":"x","params":{"s":"[{\"}"},"id":1}
[{"a":"b"},{"c":[]}]{"z":"\\"}"#;
        let mut whole = Splitter::new(1024);
        whole.push(stream);
        let expect = all(&mut whole);
        assert_eq!(expect.len(), 3);
        let mut rng = Rng::new(7);
        for _ in 0..500 {
            let mut s = Splitter::new(1024);
            let mut got = Vec::new();
            let mut at = 0;
            while at < stream.len() {
                let n = 1 + (rng.next_u64() % 8) as usize;
                let end = (at + n).min(stream.len());
                s.push(&stream[at..end]);
                got.extend(all(&mut s));
                at = end;
            }
            assert_eq!(got, expect);
        }
    }

    #[test]
    fn a_value_past_the_limit_is_refused_before_it_ends() {
        let mut s = Splitter::new(16);
        s.push(br#"{"a":"0123456789"#);
        assert_eq!(s.next_value().unwrap(), None);
        s.push(b"0123");
        assert_eq!(s.next_value(), Err(FramingError::TooLarge { limit: 16 }));
    }

    #[test]
    fn a_bare_scalar_is_refused() {
        let mut s = Splitter::new(16);
        s.push(b"  42");
        assert_eq!(
            s.next_value(),
            Err(FramingError::NotAnObject { byte: b'4' })
        );
    }

    #[test]
    fn whitespace_between_values_is_dropped_as_it_comes() {
        let mut s = Splitter::new(64);
        s.push(&vec![b' '; 1 << 20]);
        assert_eq!(s.next_value(), Ok(None));
        assert_eq!(s.pending(), 0, "spaces are not held");
        s.push(b"\n\t{\"a\":1}  \r\n ");
        assert_eq!(s.next_value(), Ok(Some(b"{\"a\":1}".to_vec())));
        assert_eq!(s.next_value(), Ok(None));
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn random_bytes_never_panic_and_respect_the_limit() {
        let mut rng = Rng::new(99);
        for _ in 0..2000 {
            let mut s = Splitter::new(64);
            let len = (rng.next_u64() % 200) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| b"{}[]\"\\ a,:"[(rng.next_u64() % 10) as usize])
                .collect();
            s.push(&bytes);
            loop {
                match s.next_value() {
                    Ok(Some(v)) => assert!(v.len() <= 64),
                    Ok(None) => {
                        assert!(s.pending() <= bytes.len());
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
    }
}
