//! Socket settings for an accepted TCP client.
//!
//! - `TCP_NODELAY`: a reply goes out when it is written, not when Nagle's timer says so.
//! - For a client on this host (a loopback peer, or one that connected to this host's own
//!   address from that same address), a congestion control that does not pace:
//!   the first of [`UNPACED_CONGESTION`] the kernel accepts. BBR, a common system default,
//!   paces every connection, spacing its segments with a high-resolution timer. On loopback
//!   there is no link or queue to protect, and the pacing costs the reactor a timer interrupt
//!   and a softirq every few hundred KB, plus a wake-up of the client each time. Measured on
//!   the 2-core VM of BENCHMARKS.md (1 MiB reads at q4, fio on the other core): 4.9 GB/s and
//!   3,600 timer interrupts per GB on the reactor's core under bbr, 8.4 GB/s and 40 per GB
//!   under cubic or reno. A remote client keeps the system's choice: pacing is the
//!   administrator's policy for the network.
//!
//! A setting the kernel refuses is logged and the connection goes on with the default.

use std::net::{IpAddr, SocketAddr, TcpStream};
use tidepool_bindings::os::set_tcp_congestion;

/// Congestion controls without pacing, in order of preference (reno is always built in).
pub const UNPACED_CONGESTION: [&str; 2] = ["cubic", "reno"];

/// Applies this module's settings to a client socket accepted from `peer`.
pub fn tune_client_socket(stream: &TcpStream, peer: &SocketAddr) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    if is_on_this_host(peer, &stream.local_addr()?) {
        let chosen = UNPACED_CONGESTION
            .iter()
            .find(|name| set_tcp_congestion(stream, name).is_ok());
        if chosen.is_none() {
            log::debug!(
                "nbd: {peer}: the kernel took none of {UNPACED_CONGESTION:?}; keeping its default"
            );
        }
    }
    Ok(())
}

/// Whether the client at `peer` runs on this host: it has a loopback address (IPv4, IPv6, or
/// IPv4 mapped into IPv6), or the same address as this end of the connection (`local`).
fn is_on_this_host(peer: &SocketAddr, local: &SocketAddr) -> bool {
    let loopback = match peer.ip() {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    };
    loopback || peer.ip() == local.ip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use tidepool_bindings::os::tcp_congestion;

    #[test]
    fn clients_on_this_host_are_recognised_in_every_form() {
        let here: SocketAddr = "10.0.0.5:10809".parse().unwrap();
        let local = |a: &str| is_on_this_host(&a.parse().unwrap(), &here);
        for a in [
            "127.0.0.1:1",
            "127.8.9.10:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(local(a), "{a}");
        }
        // A client that connected to this host's own address, from it.
        assert!(local("10.0.0.5:40000"));
        for a in [
            "10.0.0.1:1",
            "192.168.1.2:1",
            "[2001:db8::1]:1",
            "[::ffff:10.0.0.1]:1",
        ] {
            assert!(!local(a), "{a}");
        }
    }

    #[test]
    fn a_loopback_client_gets_an_unpaced_congestion_control_and_no_delay() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        // Start from a pacing one where the kernel has it, so the tuning has to change it.
        let _ = set_tcp_congestion(&server_side, "bbr");
        tune_client_socket(&server_side, &peer).unwrap();
        let cc = tcp_congestion(&server_side).unwrap();
        assert!(UNPACED_CONGESTION.contains(&cc.as_str()), "got {cc}");
        assert!(server_side.nodelay().unwrap());
    }
}
