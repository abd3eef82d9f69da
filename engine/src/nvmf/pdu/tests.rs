use super::*;

const MAX: u32 = 1 << 20;
const BOTH: Digests = Digests {
    header: true,
    data: true,
};
const DIGESTED: Framing = Framing {
    digests: BOTH,
    pdo_align: 1,
};

fn decoded(buf: &[u8], digests: Digests) -> (Pdu, usize) {
    match decode(buf, digests, MAX).expect("a valid PDU") {
        Decoded::Pdu(p, n) => (p, n),
        Decoded::Incomplete(n) => panic!("incomplete, wants {n} of {}", buf.len()),
    }
}

fn sqe() -> SubmissionEntry {
    let mut e = SubmissionEntry::rw(0x01, 1, 0x1_0000_0002, 8);
    e.set_cid(0x1234);
    e.prp1 = 0xdead_beef_0000;
    e.cdw15 = 0x55aa;
    e
}

#[test]
fn every_pdu_round_trips_with_and_without_digests() {
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    for digests in [Digests::default(), BOTH] {
        let framed = |pdo_align| Framing { digests, pdo_align };
        let mut out = Vec::new();
        encode_capsule_cmd(&mut out, &sqe(), &data[..100], framed(4));
        let (pdu, n) = decoded(&out, digests);
        assert_eq!(n, out.len());
        let Pdu::CapsuleCmd {
            sqe: got,
            data: range,
        } = pdu
        else {
            panic!("{pdu:?}")
        };
        assert_eq!(got, sqe());
        assert_eq!(&out[range.clone()], &data[..100]);
        assert_eq!(range.start % 4, 0, "data starts at a PDO aligned as asked");

        let cqe = CompletionEntry {
            dw0: 9,
            dw1: 0,
            sq_head: 3,
            sq_id: 1,
            cid: 0x1234,
            status: 0x80 << 1,
        };
        let mut out = Vec::new();
        encode_capsule_resp(&mut out, &cqe, framed(1));
        assert_eq!(out.len(), 24 + if digests.header { 4 } else { 0 });
        assert_eq!(decoded(&out, digests).0, Pdu::CapsuleResp(cqe));

        let mut out = Vec::new();
        encode_c2h_data(&mut out, 7, 4096, &data, true, true, framed(1));
        let (pdu, _) = decoded(&out, digests);
        let Pdu::C2HData {
            transfer,
            last,
            success,
            data: range,
        } = pdu
        else {
            panic!("{pdu:?}")
        };
        assert_eq!(
            (transfer.cccid, transfer.offset, transfer.length),
            (7, 4096, 5000)
        );
        assert!(last && success);
        assert_eq!(&out[range], &data[..]);

        let t = Transfer {
            cccid: 7,
            ttag: 3,
            offset: 0,
            length: 512,
        };
        let mut out = Vec::new();
        encode_h2c_data(&mut out, &t, &data[..512], false, framed(1));
        let (pdu, _) = decoded(&out, digests);
        assert!(matches!(pdu, Pdu::H2CData { transfer, last: false, .. } if transfer == t));
        let mut out = Vec::new();
        encode_r2t(&mut out, &t, framed(1));
        assert_eq!(decoded(&out, digests).0, Pdu::R2T(t));
    }
    let init = InitConnection {
        pfv: 0,
        data_alignment: 0,
        digests: BOTH,
        limit: 131072,
    };
    let mut out = Vec::new();
    encode_ic_req(&mut out, &init);
    encode_ic_resp(&mut out, &init);
    assert_eq!(out.len(), 256, "ICReq and ICResp are 128 bytes each");
    // Connection set-up PDUs never carry digests, whatever was negotiated.
    let (first, n) = decoded(&out, BOTH);
    assert_eq!(first, Pdu::IcReq(init));
    assert_eq!(decoded(&out[n..], Digests::default()).0, Pdu::IcResp(init));
}

#[test]
fn a_partial_pdu_asks_for_more_at_every_cut() {
    let mut out = Vec::new();
    encode_capsule_cmd(&mut out, &sqe(), &[1, 2, 3, 4, 5], DIGESTED);
    for cut in 0..out.len() {
        match decode(&out[..cut], BOTH, MAX).unwrap() {
            Decoded::Incomplete(n) => assert!(n > cut && n <= out.len(), "cut {cut}: {n}"),
            other => panic!("cut {cut}: {other:?}"),
        }
    }
    // Two PDUs back to back: the first is taken alone.
    let whole = out.len();
    encode_r2t(
        &mut out,
        &Transfer {
            cccid: 1,
            ttag: 1,
            offset: 0,
            length: 8,
        },
        DIGESTED,
    );
    assert_eq!(decoded(&out, BOTH).1, whole);
}

/// Each malformed PDU gets the Fatal Error Status a TermReq reports, naming the field.
#[test]
fn malformed_pdus_are_refused_with_their_fatal_error_status() {
    let mut good = Vec::new();
    encode_capsule_cmd(&mut good, &sqe(), &[9; 16], DIGESTED);
    let fails = |buf: &[u8], digests: Digests, max: u32| decode(buf, digests, max).unwrap_err();

    let mut b = good.clone();
    b[0] = 0x08;
    assert_eq!(fails(&b, BOTH, MAX).fes, Some(Fes::InvalidHeaderField));
    let mut b = good.clone();
    b[2] = 24;
    assert_eq!(fails(&b, BOTH, MAX).fei, 2, "a wrong HLEN names byte 2");
    assert_eq!(fails(&good, BOTH, 64).fes, Some(Fes::DataLimitExceeded));
    assert_eq!(
        fails(&good, Digests::default(), MAX).fei,
        1,
        "digests not negotiated"
    );
    let mut b = good.clone();
    b[3] = 10;
    assert_eq!(fails(&b, BOTH, MAX).fei, 3, "a PDO inside the header");
    let mut b = good.clone();
    b[4..8].copy_from_slice(&40u32.to_le_bytes());
    assert_eq!(
        fails(&b, BOTH, MAX).fei,
        4,
        "a PLEN shorter than the header"
    );
    let mut b = good.clone();
    b[20] ^= 1;
    assert_eq!(fails(&b, BOTH, MAX).fes, Some(Fes::HeaderDigestError));
    let mut b = good.clone();
    let last = b.len() - 5;
    b[last] ^= 1;
    let e = fails(&b, BOTH, MAX);
    assert_eq!(
        e.fes, None,
        "a data digest error fails the command, not the connection"
    );

    let mut b = Vec::new();
    encode_c2h_data(&mut b, 1, 0, &[1; 8], true, false, Framing::PLAIN);
    b[16..20].copy_from_slice(&9u32.to_le_bytes());
    assert_eq!(
        fails(&b, Digests::default(), MAX).fei,
        16,
        "DATAL against the data"
    );
    let mut b = Vec::new();
    encode_c2h_data(&mut b, 1, 0, &[1; 8], false, true, Framing::PLAIN);
    assert_eq!(
        fails(&b, Digests::default(), MAX).fei,
        1,
        "SUCCESS without LAST_PDU"
    );

    let mut b = Vec::new();
    encode_ic_req(
        &mut b,
        &InitConnection {
            pfv: 1,
            data_alignment: 0,
            digests: Digests::default(),
            limit: 0,
        },
    );
    assert_eq!(
        fails(&b, Digests::default(), MAX).fes,
        Some(Fes::UnsupportedParameter)
    );
    let mut b = Vec::new();
    encode_r2t(
        &mut b,
        &Transfer {
            cccid: 1,
            ttag: 1,
            offset: 0,
            length: 8,
        },
        Framing::PLAIN,
    );
    b[4..8].copy_from_slice(&32u32.to_le_bytes());
    b.resize(32, 0);
    assert_eq!(fails(&b, Digests::default(), MAX).fei, 4, "data on an R2T");

    // A TermReq for the error carries the offending header back.
    let err = fails(&good, BOTH, 64);
    let mut t = Vec::new();
    encode_c2h_term_req(&mut t, err.fes.unwrap(), &err, &good);
    let (pdu, _) = decoded(&t, Digests::default());
    let Pdu::TermReq {
        from_host,
        fes,
        fei,
        data,
    } = pdu
    else {
        panic!("{pdu:?}")
    };
    assert!(!from_host);
    assert_eq!((fes, fei), (Fes::DataLimitExceeded as u16, 4));
    assert_eq!(&t[data], &good[..good.len().min(128)]);
}

/// Bytes laid out by hand from the specification's figures, so that the encoder and the
/// decoder cannot agree on a wrong layout between themselves.
#[test]
fn pdus_match_the_specified_byte_layouts() {
    // ICReq (figure 13): type 0, HLEN 128, PLEN 128, PFV 0, HPDA 0, DGST both, MAXR2T 0.
    let mut icreq = vec![0x00, 0x00, 128, 0, 128, 0, 0, 0, 0, 0, 0, 0b11, 0, 0, 0, 0];
    icreq.resize(128, 0);
    let mut out = Vec::new();
    encode_ic_req(
        &mut out,
        &InitConnection {
            pfv: 0,
            data_alignment: 0,
            digests: BOTH,
            limit: 0,
        },
    );
    assert_eq!(out, icreq);
    // H2CData (figure 16), no digests: CCCID 0x0102, TTAG 0x0304, DATAO 0x10, DATAL 4, data
    // at PDO 24.
    let h2c = [
        0x06, 0x04, 24, 24, 28, 0, 0, 0, 0x02, 0x01, 0x04, 0x03, 0x10, 0, 0, 0, 4, 0, 0, 0, 0, 0,
        0, 0, 0xde, 0xad, 0xbe, 0xef,
    ];
    let (pdu, n) = decoded(&h2c, Digests::default());
    assert_eq!(n, 28);
    assert_eq!(
        pdu,
        Pdu::H2CData {
            transfer: Transfer {
                cccid: 0x0102,
                ttag: 0x0304,
                offset: 0x10,
                length: 4
            },
            last: true,
            data: 24..28
        }
    );
    // CapsuleResp (figure 15): the completion entry at byte 8, CID at 8 + 12.
    let mut resp = vec![0x05, 0, 24, 0, 24, 0, 0, 0];
    resp.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 1, 0, 0x34, 0x12, 0, 0]);
    let Pdu::CapsuleResp(cqe) = decoded(&resp, Digests::default()).0 else {
        panic!()
    };
    assert_eq!(
        (cqe.dw0, cqe.sq_head, cqe.sq_id, cqe.cid),
        (1, 5, 1, 0x1234)
    );
    // The header digest is CRC-32C over the header, little-endian after it: for a digested
    // R2T, over its 24 header bytes.
    let mut r2t = Vec::new();
    let t = Transfer {
        cccid: 1,
        ttag: 2,
        offset: 0,
        length: 4096,
    };
    encode_r2t(&mut r2t, &t, DIGESTED);
    assert_eq!((r2t[1], r2t[4], r2t.len()), (flags::HDGST, 28, 28));
    // The CRC-32C check value of "123456789" (RFC 3720's test vector) is 0xe3069283.
    assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    assert_eq!(r2t[24..28], crc32c::crc32c(&r2t[..24]).to_le_bytes());
}
