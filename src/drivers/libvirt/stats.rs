//! A running domain's counters as libvirt reports them, for the
//! per-hosting statistics: CPU time, memory (resident and balloon), the
//! system disk's bytes read and written and its allocation, and the
//! network interface's bytes when libvirt can count them (not for passt's
//! user networking, which has no host-side device: `None`).

use virt::connect::Connect;
use virt::domain::Domain;

use super::lv;
use crate::drivers::{DomainStats, DriverResult};

/// The disk the domain template gives the guest's system disk.
const SYSTEM_DISK: &str = "vda";

/// The counters of each named domain that exists and runs now (others are
/// left out: stopped or gone since the listing).
pub(super) fn read(c: &Connect, names: &[String]) -> DriverResult<Vec<(String, DomainStats)>> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let Ok(d) = c.lookup_domain_by_name(name) else {
            continue;
        };
        if !d.is_active().unwrap_or(false) {
            continue;
        }
        out.push((name.clone(), one(&d)?));
    }
    Ok(out)
}

fn one(d: &Domain) -> DriverResult<DomainStats> {
    let info = d.info().map_err(lv)?;
    let mut rss_kib = None;
    let mut balloon_kib = None;
    if let Ok(stats) = d.memory_stats(0) {
        for s in stats {
            match s.tag {
                virt::sys::VIR_DOMAIN_MEMORY_STAT_RSS => rss_kib = Some(s.val),
                virt::sys::VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON => balloon_kib = Some(s.val),
                _ => {}
            }
        }
    }
    let block = d.block_stats(SYSTEM_DISK).ok();
    let alloc = d.block_info(SYSTEM_DISK, 0).ok();
    let net = interface_stats(d);
    let nonneg = |v: i64| u64::try_from(v).ok();
    Ok(DomainStats {
        cpu_time_ns: info.cpu_time,
        memory_bytes: rss_kib.or(balloon_kib).unwrap_or(info.memory) * 1024,
        disk_read_bytes: block.as_ref().and_then(|b| nonneg(b.rd_bytes)),
        disk_write_bytes: block.as_ref().and_then(|b| nonneg(b.wr_bytes)),
        disk_allocation_bytes: alloc.map(|a| a.allocation),
        net_rx_bytes: net.as_ref().and_then(|n| nonneg(n.rx_bytes)),
        net_tx_bytes: net.as_ref().and_then(|n| nonneg(n.tx_bytes)),
    })
}

/// The first interface's counters, looked up by its MAC address (which
/// every interface type has); `None` where libvirt cannot count them.
fn interface_stats(d: &Domain) -> Option<virt::domain::InterfaceStats> {
    let xml = d.xml_desc(0).ok()?;
    d.interface_stats(&first_interface_mac(&xml)?).ok()
}

/// The MAC address of the first `<interface>` of a domain's XML.
fn first_interface_mac(xml: &str) -> Option<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut in_interface = false;
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) if e.local_name().as_ref() == b"interface" => in_interface = true,
            Event::End(e) if e.local_name().as_ref() == b"interface" => in_interface = false,
            Event::Empty(e) | Event::Start(e)
                if in_interface && e.local_name().as_ref() == b"mac" =>
            {
                let a = e.try_get_attribute("address").ok()??;
                return Some(a.unescape_value().ok()?.to_string());
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_first_interfaces_mac_is_found() {
        let xml = "<domain><devices><disk><mac address='no'/></disk>\
                   <interface type='user'><mac address='52:54:00:aa:bb:cc'/><backend type='passt'/></interface>\
                   <interface type='user'><mac address='52:54:00:00:00:01'/></interface></devices></domain>";
        assert_eq!(
            super::first_interface_mac(xml).as_deref(),
            Some("52:54:00:aa:bb:cc")
        );
        assert_eq!(super::first_interface_mac("<domain/>"), None);
    }
}
