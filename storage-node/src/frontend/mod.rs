//! How volumes reach their consumers: NBD over Unix sockets and TCP (with
//! STARTTLS).

pub mod endpoint;
pub mod nbd;
mod negotiate;
