//! New devices as the kernel announces them: the uevents of
//! NETLINK_KOBJECT_UEVENT, the socket udev listens on. The coldplug reads
//! sysfs once, then learns of the devices a driver brings (a PCI virtio
//! controller's virtio disk) from these messages instead of reading every
//! device's modalias again after each driver load: under QEMU's TCG such a
//! rescan of /sys/bus took 23-55 ms of a one-CPU boot, three times a boot.

use rustix::fd::OwnedFd;
use rustix::io::Errno;
use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SocketFlags, SocketType};

/// The multicast group of the kernel's own uevents (udev re-sends them on
/// group 2 with its own header; no udev runs beside the standalone init).
const KERNEL_GROUP: u32 = 1;

/// Room for a burst of events: a driver bringing a whole bus of devices
/// must not overflow the socket while the coldplug waits for a load.
const RECEIVE_BUFFER: usize = 4 << 20;

/// The socket, bound to the kernel's uevents.
pub struct Uevents {
    fd: OwnedFd,
}

/// Events were lost (the socket's buffer overflowed, or reading it
/// failed): the caller has to look at sysfs again.
#[derive(Debug, PartialEq, Eq)]
pub struct Lost;

impl Uevents {
    /// Opens and binds the socket; from now on no device added is missed.
    pub fn open() -> rustix::io::Result<Uevents> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            Some(netlink::KOBJECT_UEVENT),
        )?;
        // The forced size needs CAP_NET_ADMIN (PID 1 has it); else the
        // default, and an overflow falls back to a sysfs scan.
        if rustix::net::sockopt::set_socket_recv_buffer_size_force(&fd, RECEIVE_BUFFER).is_err() {
            let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&fd, RECEIVE_BUFFER);
        }
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, KERNEL_GROUP))?;
        Ok(Uevents { fd })
    }

    /// The modaliases of the devices added since the last call (all the
    /// messages queued now; it does not wait).
    pub fn added_modaliases(&self) -> Result<Vec<String>, Lost> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match rustix::net::recv(
                &self.fd,
                &mut buf[..],
                RecvFlags::DONTWAIT | RecvFlags::TRUNC,
            ) {
                Ok((_, n)) if n <= buf.len() => {
                    if let Some(alias) = added_modalias(&buf[..n]) {
                        out.push(alias.to_string());
                    }
                }
                // A message longer than the buffer was cut: it is lost.
                Ok(_) => return Err(Lost),
                Err(Errno::AGAIN) => return Ok(out),
                Err(Errno::INTR) => continue,
                Err(_) => return Err(Lost),
            }
        }
    }
}

/// The modalias of a device an `add` uevent announces. A kernel uevent is
/// `ACTION@DEVPATH` and then `KEY=VALUE` fields, each ended by a NUL.
pub fn added_modalias(msg: &[u8]) -> Option<&str> {
    let mut fields = msg.split(|&b| b == 0).filter(|f| !f.is_empty());
    let header = fields.next()?;
    if !header.starts_with(b"add@") {
        return None;
    }
    fields
        .filter_map(|f| f.strip_prefix(b"MODALIAS="))
        .find_map(|v| std::str::from_utf8(v).ok())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_events_give_their_modalias() {
        let add = b"add@/devices/pci0000:00/0000:00:03.0/virtio0\0ACTION=add\0\
                    DEVPATH=/devices/pci0000:00/0000:00:03.0/virtio0\0SUBSYSTEM=virtio\0\
                    MODALIAS=virtio:d00000002v00001AF4\0SEQNUM=1234\0";
        assert_eq!(added_modalias(add), Some("virtio:d00000002v00001AF4"));
        // A device without a modalias (a block device), a bind, a removal,
        // udev's re-sent form and garbage: nothing.
        let block = b"add@/devices/virtual/block/loop0\0ACTION=add\0SUBSYSTEM=block\0";
        assert_eq!(added_modalias(block), None);
        let bind = b"bind@/devices/pci0000:00/0000:00:03.0\0ACTION=bind\0\
                     MODALIAS=pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\0";
        assert_eq!(added_modalias(bind), None);
        assert_eq!(
            added_modalias(b"remove@/devices/x\0MODALIAS=pci:v1\0"),
            None
        );
        assert_eq!(added_modalias(b"libudev\0\xfe\xed\xca\xfe"), None);
        assert_eq!(added_modalias(b""), None);
        assert_eq!(added_modalias(b"add@/devices/x\0MODALIAS=\0"), None);
    }

    /// Opening needs no privilege (the forced buffer size falls back), and
    /// an idle socket has nothing queued.
    #[test]
    fn an_idle_socket_reports_no_devices() {
        let events = Uevents::open().expect("a NETLINK_KOBJECT_UEVENT socket");
        // Something may be added on the host meanwhile; only errors fail.
        assert!(events.added_modaliases().is_ok());
    }
}
