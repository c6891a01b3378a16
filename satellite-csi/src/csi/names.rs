//! CSI volume names (any string up to 128 characters, e.g. `pvc-<uuid>`)
//! as Tether volume names (1–63 of `[a-z0-9._-]`) under the plugin's prefix.

/// The Tether volume for CSI name `name` under `prefix`: the name in
/// lowercase with other characters as `-`, and when that is too long, its
/// start and a hash of the whole name, so distinct names stay distinct.
pub fn volume_name(prefix: &str, name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.' | '_' | '-') => c,
            _ => '-',
        })
        .collect();
    let whole = format!("{prefix}{cleaned}");
    if whole.len() <= 63 && cleaned == name {
        return whole;
    }
    let hash = blake3::hash(name.as_bytes()).to_hex();
    let room = 63usize.saturating_sub(prefix.len() + 9);
    let start: String = cleaned.chars().take(room).collect();
    format!("{prefix}{start}-{}", &hash[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_tether_and_stay_distinct() {
        assert_eq!(volume_name("edge-", "pvc-1234"), "edge-pvc-1234");
        let long = format!("pvc-{}", "a".repeat(120));
        let other = format!("pvc-{}b", "a".repeat(119));
        let (a, b) = (volume_name("edge-", &long), volume_name("edge-", &other));
        assert!(a.len() <= 63 && b.len() <= 63 && a != b, "{a} {b}");
        assert!(tether_proto::admin::valid_volume_name(&a));
        // Case and odd characters are folded, but the hash keeps them apart.
        let (upper, lower) = (volume_name("e-", "PVC/X"), volume_name("e-", "pvc-x"));
        assert_ne!(upper, lower);
        assert!(tether_proto::admin::valid_volume_name(&upper), "{upper}");
    }
}
