//! The address this instance announces: `registration.host`, else `$COREOS_PUBLIC_IPV4` (set by
//! CoreOS/Flatcar's metadata agent), else the first non-loopback IPv4 address of an interface
//! that is up, as the kernel lists them (`getifaddrs(3)`). `$COREOS_PUBLIC_IPV4` is checked like
//! `registration.host`: a value that is neither an IP address nor a host name is an error, never
//! announced.

use std::ffi::CStr;
use std::net::Ipv4Addr;

use thiserror::Error;

use crate::config::valid_host;

/// Environment variable naming the host's public IPv4 on CoreOS-style hosts.
pub const PUBLIC_IPV4_ENV: &str = "COREOS_PUBLIC_IPV4";

/// No usable address to announce.
#[derive(Debug, Error)]
pub enum AddressError {
    #[error(
        "no address to announce: registration.host is unset, ${PUBLIC_IPV4_ENV} is unset and no \
         interface has a non-loopback IPv4 address ({detail}); set registration.host"
    )]
    NoAddress { detail: String },
    #[error(
        "${PUBLIC_IPV4_ENV} = {value:?} is neither an IP address nor a host name; fix it (often in \
         /etc/environment) or set registration.host"
    )]
    InvalidPublicIpv4 { value: String },
}

impl AddressError {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            AddressError::NoAddress { .. } => "no_address",
            AddressError::InvalidPublicIpv4 { .. } => "invalid_public_ipv4",
        }
    }
}

/// `$COREOS_PUBLIC_IPV4` as given (trimmed), if set and not empty; an error if it is not a host.
pub fn public_ipv4(value: Option<&str>) -> Result<Option<String>, AddressError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) if valid_host(v) => Ok(Some(v.to_string())),
        Some(v) => Err(AddressError::InvalidPublicIpv4 {
            value: v.chars().take(256).collect(),
        }),
    }
}

/// Checks `$COREOS_PUBLIC_IPV4` of this process, for `check-config`.
pub fn check_public_ipv4_env() -> Result<Option<String>, AddressError> {
    public_ipv4(std::env::var(PUBLIC_IPV4_ENV).ok().as_deref())
}

/// An interface address as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub interface: String,
    pub address: Ipv4Addr,
    pub up: bool,
}

/// Picks the announced host from the configured value, the environment value and the
/// interfaces, in that order; an invalid environment value is an error even when interfaces
/// would give an address, so a typo is seen instead of silently announcing another address.
pub fn choose_host(
    configured: Option<&str>,
    env_value: Option<&str>,
    interfaces: &[InterfaceAddress],
) -> Result<Option<String>, AddressError> {
    if let Some(host) = configured.filter(|h| !h.is_empty()) {
        return Ok(Some(host.to_string()));
    }
    if let Some(ip) = public_ipv4(env_value)? {
        return Ok(Some(ip));
    }
    Ok(interfaces
        .iter()
        .find(|i| i.up && !i.address.is_loopback() && !i.address.is_unspecified())
        .map(|i| i.address.to_string()))
}

/// Resolves the announced host for production: reads the environment and the interfaces.
pub fn announced_host(configured: Option<&str>) -> Result<String, AddressError> {
    if let Some(host) = configured.filter(|h| !h.is_empty()) {
        return Ok(host.to_string());
    }
    let env = std::env::var(PUBLIC_IPV4_ENV).ok();
    let (interfaces, detail) = match interface_addresses() {
        Ok(list) => {
            let detail = format!("{} IPv4 interface addresses seen", list.len());
            (list, detail)
        }
        Err(e) => (Vec::new(), format!("getifaddrs failed: {e}")),
    };
    choose_host(None, env.as_deref(), &interfaces)?.ok_or(AddressError::NoAddress { detail })
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
            choose_host(Some("web.internal"), Some("192.0.2.1"), &ifaces).unwrap(),
            Some("web.internal".into())
        );
    }

    #[test]
    fn coreos_public_ipv4_comes_before_interfaces() {
        let ifaces = [iface("eth0", [10, 0, 0, 5], true)];
        assert_eq!(
            choose_host(None, Some(" 192.0.2.1\n"), &ifaces).unwrap(),
            Some("192.0.2.1".into())
        );
    }

    #[test]
    fn coreos_public_ipv4_is_validated_like_registration_host() {
        let ifaces = [iface("eth0", [10, 0, 0, 5], true)];
        for bad in [
            "10.0.0.5:80",
            "http://10.0.0.5",
            "a b",
            "host_name",
            "-x",
            "\u{1b}[31m",
        ] {
            match choose_host(None, Some(bad), &ifaces) {
                Err(err @ AddressError::InvalidPublicIpv4 { .. }) => {
                    assert!(err.to_string().contains("COREOS_PUBLIC_IPV4"), "{err}");
                    assert_eq!(err.kind(), "invalid_public_ipv4");
                }
                other => panic!("{bad:?} accepted: {other:?}"),
            }
        }
        for good in ["10.1.2.3", "::1", "web-1.internal"] {
            assert_eq!(public_ipv4(Some(good)).unwrap(), Some(good.to_string()));
        }
        assert_eq!(public_ipv4(Some("  ")).unwrap(), None);
    }

    #[test]
    fn first_up_non_loopback_interface_address_is_the_fallback() {
        let ifaces = [
            iface("lo", [127, 0, 0, 1], true),
            iface("eth1", [10, 0, 1, 5], false),
            iface("eth0", [10, 0, 0, 5], true),
        ];
        assert_eq!(
            choose_host(None, None, &ifaces).unwrap(),
            Some("10.0.0.5".into())
        );
        assert_eq!(choose_host(None, Some(""), &ifaces[..2]).unwrap(), None);
    }

    #[test]
    fn the_kernel_lists_the_loopback_address() {
        let found = interface_addresses().expect("getifaddrs");
        assert!(found.iter().any(|i| i.address.is_loopback()), "{found:?}");
    }
}
