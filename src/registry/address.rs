//! The address this instance announces: `registration.host`, else `$COREOS_PUBLIC_IPV4` (set by
//! CoreOS/Flatcar's metadata agent), else the first non-loopback IPv4 address of an interface
//! that is up, as the kernel lists them (`getifaddrs(3)`).

use std::ffi::CStr;
use std::net::Ipv4Addr;

use thiserror::Error;

/// Environment variable naming the host's public IPv4 on CoreOS-style hosts.
pub const PUBLIC_IPV4_ENV: &str = "COREOS_PUBLIC_IPV4";

/// No address to announce.
#[derive(Debug, Error)]
#[error(
    "no address to announce: registration.host is unset, ${PUBLIC_IPV4_ENV} is unset and no \
     interface has a non-loopback IPv4 address ({detail}); set registration.host"
)]
pub struct NoAddress {
    detail: String,
}

/// An interface address as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub interface: String,
    pub address: Ipv4Addr,
    pub up: bool,
}

/// Picks the announced host from the configured value, the environment value and the
/// interfaces, in that order.
pub fn choose_host(
    configured: Option<&str>,
    public_ipv4: Option<&str>,
    interfaces: &[InterfaceAddress],
) -> Option<String> {
    if let Some(host) = configured.filter(|h| !h.is_empty()) {
        return Some(host.to_string());
    }
    if let Some(ip) = public_ipv4.map(str::trim).filter(|h| !h.is_empty()) {
        return Some(ip.to_string());
    }
    interfaces
        .iter()
        .find(|i| i.up && !i.address.is_loopback() && !i.address.is_unspecified())
        .map(|i| i.address.to_string())
}

/// Resolves the announced host for production: reads the environment and the interfaces.
pub fn announced_host(configured: Option<&str>) -> Result<String, NoAddress> {
    if configured.is_some_and(|h| !h.is_empty()) {
        return choose_host(configured, None, &[]).ok_or_else(|| NoAddress {
            detail: String::new(),
        });
    }
    let env = std::env::var(PUBLIC_IPV4_ENV).ok();
    let (interfaces, detail) = match interface_addresses() {
        Ok(list) => {
            let detail = format!("{} IPv4 interface addresses seen", list.len());
            (list, detail)
        }
        Err(e) => (Vec::new(), format!("getifaddrs failed: {e}")),
    };
    choose_host(None, env.as_deref(), &interfaces).ok_or(NoAddress { detail })
}

/// IPv4 addresses of all interfaces, in the kernel's order.
pub fn interface_addresses() -> std::io::Result<Vec<InterfaceAddress>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` points into the list getifaddrs returned, which is still allocated.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to a sockaddr of the family it names.
        let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
        if family != libc::AF_INET {
            continue;
        }
        // SAFETY: AF_INET addresses are sockaddr_in.
        let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
        let address = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let interface = unsafe { CStr::from_ptr(entry.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let up = entry.ifa_flags & (libc::IFF_UP as libc::c_uint) != 0;
        found.push(InterfaceAddress {
            interface,
            address,
            up,
        });
    }
    // SAFETY: `head` came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, address: [u8; 4], up: bool) -> InterfaceAddress {
        InterfaceAddress {
            interface: name.into(),
            address: Ipv4Addr::from(address),
            up,
        }
    }

    #[test]
    fn configured_host_wins_over_environment_and_interfaces() {
        let ifaces = [iface("eth0", [10, 0, 0, 5], true)];
        assert_eq!(
            choose_host(Some("web.internal"), Some("192.0.2.1"), &ifaces).as_deref(),
            Some("web.internal")
        );
    }

    #[test]
    fn coreos_public_ipv4_comes_before_interfaces() {
        let ifaces = [iface("eth0", [10, 0, 0, 5], true)];
        assert_eq!(
            choose_host(None, Some("192.0.2.1"), &ifaces).as_deref(),
            Some("192.0.2.1")
        );
    }

    #[test]
    fn first_up_non_loopback_interface_address_is_the_fallback() {
        let ifaces = [
            iface("lo", [127, 0, 0, 1], true),
            iface("eth1", [10, 0, 1, 5], false),
            iface("eth0", [10, 0, 0, 5], true),
        ];
        assert_eq!(
            choose_host(None, None, &ifaces).as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(choose_host(None, Some(""), &ifaces[..2]), None);
    }

    #[test]
    fn the_kernel_lists_the_loopback_address() {
        let found = interface_addresses().expect("getifaddrs");
        assert!(found.iter().any(|i| i.address.is_loopback()), "{found:?}");
    }
}
