use std::sync::Arc;

use super::*;

fn c(s: &str) -> Cidr {
    s.parse().expect("test address or cidr")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address or cidr")
}

fn open(dir: &Path, ranges: &[&str]) -> Ipam {
    Ipam::open(dir, ranges.iter().map(|r| c(r)).collect()).expect("ipam call")
}

#[test]
fn allocates_distinct_skipping_network_gateway_broadcast() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ipam = open(tmp.path(), &["10.0.0.0/29"]);
    let mut got = Vec::new();
    for i in 0..5 {
        let a = ipam.allocate(&format!("pod{i}")).expect("ipam call");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].prefix, 29);
        assert_eq!(a[0].gateway, ip("10.0.0.1"));
        got.push(a[0].ip);
    }
    let want: Vec<IpAddr> = (2..=6).map(|n| ip(&format!("10.0.0.{n}"))).collect();
    assert_eq!(got, want);
    let err = ipam.allocate("pod5").expect_err("should fail");
    assert!(matches!(err, IpamError::Exhausted { range } if range == c("10.0.0.0/29")), "{err}");
    assert_eq!(err.to_string(), "no free address in range 10.0.0.0/29");
}

#[test]
fn round_robin_continues_after_last_and_wraps() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ipam = open(tmp.path(), &["10.0.0.0/29"]);
    assert_eq!(ipam.allocate("a").expect("ipam call")[0].ip, ip("10.0.0.2"));
    assert_eq!(ipam.allocate("b").expect("ipam call")[0].ip, ip("10.0.0.3"));
    ipam.release("a").expect("ipam call");
    // Not reused at once: continue after the last one handed out.
    assert_eq!(ipam.allocate("c").expect("ipam call")[0].ip, ip("10.0.0.4"));
    assert_eq!(ipam.allocate("d").expect("ipam call")[0].ip, ip("10.0.0.5"));
    assert_eq!(ipam.allocate("e").expect("ipam call")[0].ip, ip("10.0.0.6"));
    // Wraps round to the freed .2.
    assert_eq!(ipam.allocate("f").expect("ipam call")[0].ip, ip("10.0.0.2"));
    assert!(matches!(ipam.allocate("g"), Err(IpamError::Exhausted { .. })));
}

#[test]
fn allocate_is_idempotent_per_owner() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ipam = open(tmp.path(), &["10.88.0.0/16", "fd00:10:88::/64"]);
    let first = ipam.allocate("pod-a").expect("ipam call");
    let again = ipam.allocate("pod-a").expect("ipam call");
    assert_eq!(first, again);
    assert_eq!(ipam.allocations().expect("ipam call").len(), 2);
    let other = ipam.allocate("pod-b").expect("ipam call");
    assert_ne!(first[0].ip, other[0].ip);
    assert_ne!(first[1].ip, other[1].ip);
}

#[test]
fn dual_stack_returns_one_per_family() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ipam = open(tmp.path(), &["10.88.0.0/16", "fd00:10:88::/64"]);
    let a = ipam.allocate("pod").expect("ipam call");
    assert_eq!(
        a,
        vec![
            Allocation { ip: ip("10.88.0.2"), prefix: 16, gateway: ip("10.88.0.1") },
            Allocation { ip: ip("fd00:10:88::2"), prefix: 64, gateway: ip("fd00:10:88::1") },
        ]
    );
    assert!(tmp.path().join("10.88.0.0_16").join("10.88.0.2").is_file());
    assert!(tmp.path().join("fd00:10:88::_64").join("fd00:10:88::2").is_file());
    assert_eq!(fs::read_to_string(tmp.path().join("10.88.0.0_16").join("10.88.0.2")).expect("ipam call"), "pod");
}

#[test]
fn v6_range_uses_last_address() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ipam = open(tmp.path(), &["fd00::/126"]);
    assert_eq!(ipam.allocate("a").expect("ipam call")[0].ip, ip("fd00::2"));
    assert_eq!(ipam.allocate("b").expect("ipam call")[0].ip, ip("fd00::3"));
    assert!(matches!(ipam.allocate("c"), Err(IpamError::Exhausted { .. })));
}

#[test]
fn exhaustion_releases_partial_dual_stack_allocation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The v6 range is large; the v4 /30 has one address besides the gateway.
    let ipam = open(tmp.path(), &["fd00:10:88::/64", "10.0.0.0/30"]);
    let a = ipam.allocate("a").expect("ipam call");
    assert_eq!(a[1].ip, ip("10.0.0.2"));
    let err = ipam.allocate("b").expect_err("should fail");
    assert!(matches!(err, IpamError::Exhausted { range } if range == c("10.0.0.0/30")), "{err}");
    // b's v6 address was given back.
    let all = ipam.allocations().expect("ipam call");
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|(_, who)| who == "a"));
    // Once a leaves, b fits.
    ipam.release("a").expect("ipam call");
    assert_eq!(ipam.allocate("b").expect("ipam call")[1].ip, ip("10.0.0.2"));
}

#[test]
fn release_is_idempotent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ipam = open(tmp.path(), &["10.88.0.0/24", "fd00::/64"]);
    ipam.allocate("a").expect("ipam call");
    ipam.allocate("b").expect("ipam call");
    ipam.release("a").expect("ipam call");
    ipam.release("a").expect("ipam call");
    ipam.release("never-allocated").expect("ipam call");
    let all = ipam.allocations().expect("ipam call");
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|(_, who)| who == "b"));
}

#[test]
fn new_open_sees_persisted_allocations() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let before = {
        let ipam = open(tmp.path(), &["10.88.0.0/24", "fd00::/64"]);
        ipam.allocate("a").expect("ipam call");
        ipam.allocate("b").expect("ipam call")
    };
    let ipam = open(tmp.path(), &["10.88.0.0/24", "fd00::/64"]);
    assert_eq!(ipam.allocate("b").expect("ipam call"), before);
    let mut all = ipam.allocations().expect("ipam call");
    all.sort();
    assert_eq!(
        all,
        vec![
            (ip("10.88.0.2"), "a".to_owned()),
            (ip("10.88.0.3"), "b".to_owned()),
            (ip("fd00::2"), "a".to_owned()),
            (ip("fd00::3"), "b".to_owned()),
        ]
    );
    // Round-robin state persisted too.
    assert_eq!(ipam.allocate("c").expect("ipam call")[0].ip, ip("10.88.0.4"));
}

#[test]
fn reconcile_releases_dead_owners() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ipam = open(tmp.path(), &["10.88.0.0/24", "fd00::/64"]);
    ipam.allocate("live").expect("ipam call");
    ipam.allocate("dead").expect("ipam call");
    let live: HashSet<String> = ["live".to_owned()].into();
    let mut released = ipam.reconcile(&live).expect("ipam call");
    released.sort();
    assert_eq!(released, vec![(ip("10.88.0.3"), "dead".to_owned()), (ip("fd00::3"), "dead".to_owned())]);
    assert!(ipam.allocations().expect("ipam call").iter().all(|(_, who)| who == "live"));
    assert!(ipam.reconcile(&live).expect("ipam call").is_empty());
}

#[test]
fn ignores_foreign_files_in_range_dir() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ipam = open(tmp.path(), &["10.88.0.0/24"]);
    ipam.allocate("a").expect("ipam call");
    let rdir = tmp.path().join("10.88.0.0_24");
    fs::write(rdir.join("lock"), "").expect("ipam call");
    fs::write(rdir.join("192.168.0.9"), "x").expect("ipam call");
    fs::write(rdir.join(LAST_RESERVED), "garbage").expect("ipam call");
    assert_eq!(ipam.allocations().expect("ipam call"), vec![(ip("10.88.0.2"), "a".to_owned())]);
    // Unreadable last_reserved: start again from the bottom, skipping taken ones.
    assert_eq!(ipam.allocate("b").expect("ipam call")[0].ip, ip("10.88.0.3"));
}

#[test]
fn validates_owner_ids() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ipam = open(tmp.path(), &["10.88.0.0/24"]);
    let long = "a".repeat(129);
    for bad in ["", "../x", "a/b", "a b", "pod\n", "é", long.as_str()] {
        assert!(matches!(ipam.allocate(bad), Err(IpamError::InvalidOwner { .. })), "{bad:?}");
        assert!(matches!(ipam.release(bad), Err(IpamError::InvalidOwner { .. })), "{bad:?}");
    }
    ipam.allocate(&"a".repeat(128)).expect("ipam call");
    ipam.allocate("Pod_1-x").expect("ipam call");
}

#[test]
fn validates_ranges() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (ranges, small) in [(vec!["10.0.0.0/31"], true), (vec!["10.0.0.0/32"], true), (vec!["fd00::/127"], true)] {
        let err = Ipam::open(tmp.path(), ranges.iter().map(|r| c(r)).collect()).expect_err("should fail");
        assert_eq!(matches!(err, IpamError::RangeTooSmall { .. }), small, "{err}");
    }
    assert!(matches!(Ipam::open(tmp.path(), vec![]), Err(IpamError::NoRanges)));
    let dup = Ipam::open(tmp.path(), vec![c("10.0.0.0/24"), c("10.0.0.7/24")]).expect_err("should fail");
    assert!(matches!(dup, IpamError::DuplicateRange { .. }), "{dup}");
    Ipam::open(tmp.path(), vec![c("10.0.0.0/30"), c("fd00::/126")]).expect("ipam call");
}

#[test]
fn concurrent_allocations_are_distinct() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Two allocators on the same directory stand in for two processes: only the
    // O_EXCL files keep them apart.
    let a = Arc::new(open(tmp.path(), &["10.88.0.0/24", "fd00::/64"]));
    let b = Arc::new(open(tmp.path(), &["10.88.0.0/24", "fd00::/64"]));
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let ipam = if i % 2 == 0 { Arc::clone(&a) } else { Arc::clone(&b) };
            std::thread::spawn(move || ipam.allocate(&format!("pod-{i}")).expect("ipam call"))
        })
        .collect();
    let mut v4 = HashSet::new();
    let mut v6 = HashSet::new();
    for h in handles {
        let got = h.join().expect("thread");
        assert!(v4.insert(got[0].ip));
        assert!(v6.insert(got[1].ip));
    }
    assert_eq!(v4.len(), 50);
    assert_eq!(v6.len(), 50);
    assert_eq!(a.allocations().expect("ipam call").len(), 100);
}
