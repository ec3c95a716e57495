//! Listening sockets: one per shard and address, all bound to the same port
//! with SO_REUSEPORT so the kernel spreads connections with no accept lock.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Pending-connection queue per listener; the kernel caps it at somaxconn.
const BACKLOG: i32 = 4096;

/// Why a listen address cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ListenError {
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// Binds `shards` listeners for each address. With port 0 the first listener
/// picks the port and the others join it. Accepted sockets get `send_buffer`
/// as their `SO_SNDBUF`. Returns the listeners by shard and the addresses
/// actually bound.
pub fn bind_all(
    addrs: &[SocketAddr],
    shards: usize,
    send_buffer: usize,
) -> Result<(Vec<Vec<std::net::TcpListener>>, Vec<SocketAddr>), ListenError> {
    let mut by_shard: Vec<Vec<std::net::TcpListener>> = (0..shards).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for &addr in addrs {
        if addr.port() != 0 {
            ensure_unused(addr).map_err(|source| ListenError { addr, source })?;
        }
        let first = bind_one(addr, send_buffer).map_err(|source| ListenError { addr, source })?;
        let actual = first
            .local_addr()
            .map_err(|source| ListenError { addr, source })?;
        by_shard[0].push(first);
        for listeners in by_shard.iter_mut().skip(1) {
            listeners.push(bind_one(actual, send_buffer).map_err(|source| ListenError {
                addr: actual,
                source,
            })?);
        }
        bound.push(actual);
    }
    Ok((by_shard, bound))
}

/// Fails with "address in use" when another process listens on `addr`, even
/// with SO_REUSEPORT: a second mles on the same port would otherwise silently
/// take half the connections and split every channel in two.
fn ensure_unused(addr: SocketAddr) -> io::Result<()> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?; // TIME_WAIT leftovers of a previous run are fine
    if addr.is_ipv6() {
        s.set_only_v6(!addr.ip().is_unspecified())?;
    }
    s.bind(&addr.into())
}

fn bind_one(addr: SocketAddr, send_buffer: usize) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // [::] serves IPv4 too; a specific IPv6 address only itself.
        s.set_only_v6(!addr.ip().is_unspecified())?;
    }
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux: one
    // setsockopt per listener instead of one per connection.
    s.set_tcp_nodelay(true)?;
    // So do they SO_SNDBUF (and its lock against the kernel's autotuning),
    // set before `listen` so that no connection is queued without it.
    s.set_send_buffer_size(send_buffer)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// Raises the soft open-file limit to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a plain struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

/// Whether an accept error means "out of file descriptors" (back off, don't spin).
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}
