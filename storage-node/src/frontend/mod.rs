//! How volumes reach their consumers. Today: NBD over TCP and Unix sockets.

pub mod nbd;
