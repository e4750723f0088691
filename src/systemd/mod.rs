//! systemd over D-Bus (`org.freedesktop.systemd1`, through `zbus_systemd` proxies); never
//! `systemctl`. Production connects with [`zbus::Connection::system`], which honours
//! `DBUS_SYSTEM_BUS_ADDRESS`.

pub mod environment;
