//! Bringing `lo` up in a new network namespace with one `SIOCSIFFLAGS`
//! ioctl, so that a pod has working loopback even without any network
//! configured (the pod network, when there is one, is set up by `network`).

use std::os::fd::AsRawFd;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// Sets `IFF_UP` on `lo` in the calling thread's network namespace.
pub fn set_loopback_up() -> std::io::Result<()> {
    let fd = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    let mut request = ifreq_for("lo");
    // SAFETY: `fd` is an open socket owned by this function; `request` is a
    // properly initialised `ifreq` that lives across both calls, and
    // SIOCGIFFLAGS / SIOCSIFFLAGS only read and write its `ifr_flags` field.
    let got = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut request) };
    if got < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: reading the union field that SIOCGIFFLAGS just filled.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above; the kernel reads `ifr_name` and `ifr_flags`.
    let set = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS as _, &request) };
    if set < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request
}
