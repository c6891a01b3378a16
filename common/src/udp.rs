//! UDP sockets for QUIC (the federation link) with room to absorb bursts:
//! the kernel's default receive buffer (about 208 KiB) drops datagrams as
//! soon as a few 1 MiB blocks arrive at once, and every drop costs a
//! retransmission and a congestion-window cut.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

/// Socket buffers asked for; the kernel caps them at `net.core.rmem_max`
/// and `net.core.wmem_max` (raise those for links with more in flight).
pub const QUIC_SOCKET_BUFFER: usize = 4 << 20;

/// A UDP socket bound to `addr`, with [`QUIC_SOCKET_BUFFER`] asked for both ways.
pub fn bind_for_quic(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        let size = QUIC_SOCKET_BUFFER as libc::c_int;
        // SAFETY: a valid socket, and a c_int option value of the right length.
        let answer = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if answer != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    #[test]
    fn quic_sockets_get_larger_buffers_than_the_default() {
        use std::os::fd::AsRawFd;
        let socket = super::bind_for_quic("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut size: libc::c_int = 0;
        let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: as above, reading the option back.
        let answer = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut size as *mut libc::c_int).cast(),
                &mut length,
            )
        };
        assert_eq!(answer, 0);
        let default = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut default_size: libc::c_int = 0;
        // SAFETY: as above.
        unsafe {
            libc::getsockopt(
                default.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut default_size as *mut libc::c_int).cast(),
                &mut length,
            )
        };
        assert!(size > default_size, "{size} vs the default {default_size}");
    }
}
