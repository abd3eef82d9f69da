//! NVMe over Fabrics, TCP transport (issue 29). Built so far, each without I/O of its own:
//! - [`pdu`]: the wire format, every NVMe/TCP PDU decoded and encoded with its bounds;
//! - [`fabrics`]: the Fabrics command set (Connect, Property Get/Set, Disconnect), the
//!   Connect data, the status codes a target answers with, a fabrics controller's properties;
//! - [`identify`]: what a target's admin queue returns (Identify Controller and Namespace,
//!   the namespace lists, the discovery log page);
//! - [`admin`]: a target controller's admin commands (Identify, Get Log Page, Get/Set
//!   Features, Keep Alive, Asynchronous Event Request, Property Get/Set);
//! - [`connect`]: a target's controllers (dynamic model) and the Fabrics Connect that makes
//!   them or joins an I/O queue to one, against a [`connect::Directory`] of subsystems;
//! - [`conn`]: one target queue pair, a host's TCP connection served by a reactor as a
//!   poller (ICReq, Connect, admin commands, Read/Write/Flush/Write Zeroes/deallocate with
//!   in-capsule data, R2T and H2CData, C2HData, digests), tested over loopback.
//!
//! - [`target`]: the listeners, each an accept thread placing connections on the reactors
//!   round robin, counted per address so subsystems can share a port.
//!
//! Still to build on them: the `nvmf_*` RPCs' subsystem registry as the target's
//! [`connect::Directory`], and the initiator bdev.

pub mod admin;
pub mod conn;
pub mod connect;
pub mod fabrics;
pub mod identify;
pub mod pdu;
pub mod subsystem;
pub mod target;
#[cfg(test)]
pub(crate) mod testing;
