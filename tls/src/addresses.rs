//! The host names and IP addresses a node's certificate may name besides its
//! identity, so NBD clients can verify the node by the address they dial.
//! One rule, checked where a node is configured and again where the
//! registry signs.

use crate::TlsError;

/// Most addresses one node certificate may name.
pub const MAX_CERTIFICATE_ADDRESSES: usize = 8;

/// Checks and normalises (lowercase, IPs canonical, sorted, deduplicated)
/// the addresses a certificate should name. Names under `.tether` are
/// Tether identities (`node-2.node.CLUSTER.tether`) and are never granted
/// this way: a node must not become valid as another.
pub fn certificate_addresses(addresses: &[String]) -> Result<Vec<String>, TlsError> {
    let bad = |address: &str, reason: &str| TlsError::BadAddress {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    if addresses.len() > MAX_CERTIFICATE_ADDRESSES {
        return Err(TlsError::BadAddress {
            address: addresses.join(","),
            reason: format!(
                "{} addresses; a certificate names at most {MAX_CERTIFICATE_ADDRESSES}",
                addresses.len()
            ),
        });
    }
    let mut granted = Vec::with_capacity(addresses.len());
    for address in addresses {
        if let Ok(ip) = address.parse::<std::net::IpAddr>() {
            if ip.is_unspecified() {
                return Err(bad(address, "a wildcard address names no host"));
            }
            granted.push(ip.to_string());
            continue;
        }
        let name = address.to_ascii_lowercase();
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(bad(address, "neither an IP address nor a host name"));
        }
        if name == "tether" || name.ends_with(".tether") {
            return Err(bad(address, "the .tether namespace is for identities"));
        }
        granted.push(name);
    }
    granted.sort();
    granted.dedup();
    Ok(granted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn hosts_and_ips_are_granted_but_no_tether_identity_or_wildcard() {
        assert_eq!(
            certificate_addresses(&names(&["10.0.0.7", "Storage-1.example.com", "::1"])).unwrap(),
            names(&["10.0.0.7", "::1", "storage-1.example.com"])
        );
        for refused in [
            "node-2.node.central.tether",
            "TETHER",
            "*.example.com",
            "0.0.0.0",
            "bad host",
            "-x.example.com",
            "",
        ] {
            assert!(
                matches!(
                    certificate_addresses(&names(&[refused])),
                    Err(TlsError::BadAddress { .. })
                ),
                "{refused:?} was granted"
            );
        }
        let many: Vec<String> = (0..=MAX_CERTIFICATE_ADDRESSES)
            .map(|i| format!("10.0.0.{i}"))
            .collect();
        assert!(certificate_addresses(&many).is_err());
    }
}
