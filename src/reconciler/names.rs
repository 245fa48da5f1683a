//! Names of a hosting's libvirt objects. The hosting id is the only variable
//! part, so a name never carries user input; the ownership marker inside the
//! domain, not the name, is what proves an object is hostd's.

use crate::domain::HostingId;

/// The libvirt domain of a hosting.
pub fn domain_name(id: HostingId) -> String {
    format!("hostd-{id}")
}

/// Parses a domain name back to its hosting (for domain events).
pub fn domain_owner(name: &str) -> Option<HostingId> {
    let id = name.strip_prefix("hostd-")?;
    if id.len() != 36 {
        return None;
    }
    uuid::Uuid::parse_str(id).ok().map(HostingId)
}

/// The qcow2 overlay holding the hosting's data.
pub fn disk_volume(id: HostingId) -> String {
    format!("hostd-{id}-disk.qcow2")
}

/// The cloud-init NoCloud seed.
pub fn seed_volume(id: HostingId) -> String {
    format!("hostd-{id}-seed.iso")
}

/// The serial console log file name.
pub fn console_log(id: HostingId) -> String {
    format!("{}.log", domain_name(id))
}

/// Parses a volume name back to its hosting (for orphan collection).
pub fn volume_owner(name: &str) -> Option<HostingId> {
    let rest = name.strip_prefix("hostd-")?;
    let (id, suffix) = rest.split_at(rest.len().min(36));
    if suffix != "-disk.qcow2" && suffix != "-seed.iso" {
        return None;
    }
    uuid::Uuid::parse_str(id).ok().map(HostingId)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names_round_trip() {
        let id = HostingId(uuid::Uuid::new_v4());
        assert_eq!(volume_owner(&disk_volume(id)), Some(id));
        assert_eq!(volume_owner(&seed_volume(id)), Some(id));
        assert_eq!(volume_owner("hostd-nope-disk.qcow2"), None);
        assert_eq!(volume_owner(&format!("hostd-{id}-other")), None);
        assert_eq!(domain_owner(&domain_name(id)), Some(id));
        assert_eq!(domain_owner(&format!("hostd-{}", id.0.simple())), None);
        assert_eq!(domain_owner(&format!("hostd-{id}x")), None);
        assert_eq!(domain_owner("stranger"), None);
    }
}
