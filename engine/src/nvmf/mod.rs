//! NVMe over Fabrics, TCP transport (issue 29): so far the wire format, [`pdu`]. The target
//! (serving bdevs to the Linux initiator) and the initiator bdev are to be built on it.

pub mod pdu;
