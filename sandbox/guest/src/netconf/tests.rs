use std::process::Command;

use guest_proto::message::RouteConfig;

use super::*;

fn mac(text: &str) -> MacAddr {
    text.parse().expect("mac")
}

fn cidr(text: &str) -> Cidr {
    text.parse().expect("cidr")
}

fn eth0() -> InterfaceConfig {
    InterfaceConfig {
        name: "eth0".into(),
        mac: mac("02:00:00:00:00:01"),
        mtu: 1400,
        addresses: vec![cidr("10.9.0.5/24"), cidr("fd00::5/64")],
        routes: vec![
            RouteConfig { dest: cidr("0.0.0.0/0"), gateway: Some("10.9.0.1".parse().expect("ip")) },
            RouteConfig { dest: cidr("10.10.0.0/16"), gateway: None },
        ],
    }
}

#[test]
fn constants_are_the_kernels() {
    let pairs: [(i64, i64); 23] = [
        (NLMSG_ERROR.into(), libc::NLMSG_ERROR.into()),
        (RTM_NEWLINK.into(), libc::RTM_NEWLINK.into()),
        (RTM_NEWADDR.into(), libc::RTM_NEWADDR.into()),
        (RTM_NEWROUTE.into(), libc::RTM_NEWROUTE.into()),
        (NLM_F_REQUEST.into(), libc::NLM_F_REQUEST.into()),
        (NLM_F_ACK.into(), libc::NLM_F_ACK.into()),
        (NLM_F_REPLACE.into(), libc::NLM_F_REPLACE.into()),
        (NLM_F_CREATE.into(), libc::NLM_F_CREATE.into()),
        (IFLA_IFNAME.into(), libc::IFLA_IFNAME.into()),
        (IFLA_MTU.into(), libc::IFLA_MTU.into()),
        (IFA_ADDRESS.into(), libc::IFA_ADDRESS.into()),
        (IFA_LOCAL.into(), libc::IFA_LOCAL.into()),
        (RTA_DST.into(), libc::RTA_DST.into()),
        (RTA_OIF.into(), libc::RTA_OIF.into()),
        (RTA_GATEWAY.into(), libc::RTA_GATEWAY.into()),
        (IFF_UP.into(), libc::IFF_UP.into()),
        (IFA_F_NODAD.into(), libc::IFA_F_NODAD.into()),
        (AF_INET.into(), libc::AF_INET.into()),
        (AF_INET6.into(), libc::AF_INET6.into()),
        (RT_TABLE_MAIN.into(), libc::RT_TABLE_MAIN.into()),
        (RTPROT_BOOT.into(), libc::RTPROT_BOOT.into()),
        (RT_SCOPE_LINK.into(), libc::RT_SCOPE_LINK.into()),
        (RTN_UNICAST.into(), libc::RTN_UNICAST.into()),
    ];
    for (i, (ours, kernels)) in pairs.iter().enumerate() {
        assert_eq!(ours, kernels, "constant {i}");
    }
}

#[test]
fn a_plan_renames_down_then_configures_up_and_routes_last() {
    let links = [LinkInfo { name: "enp0s3".into(), index: 7, mac: mac("02:00:00:00:00:01") }];
    let ops = plan(&[eth0()], &links).expect("plan");
    assert_eq!(
        ops,
        vec![
            NetOp::SetLink { index: 7, name: Some("eth0".into()), mtu: None, up: false },
            NetOp::SetLink { index: 7, name: None, mtu: Some(1400), up: true },
            NetOp::AddAddress { index: 7, address: cidr("10.9.0.5/24") },
            NetOp::AddAddress { index: 7, address: cidr("fd00::5/64") },
            NetOp::AddRoute { index: 7, dest: cidr("0.0.0.0/0"), gateway: Some("10.9.0.1".parse().expect("ip")) },
            NetOp::AddRoute { index: 7, dest: cidr("10.10.0.0/16"), gateway: None },
        ]
    );
    let named = [LinkInfo { name: "eth0".into(), ..links[0].clone() }];
    assert_eq!(
        plan(&[eth0()], &named).expect("plan")[0],
        NetOp::SetLink { index: 7, name: None, mtu: Some(1400), up: true }
    );
}

#[test]
fn plans_refuse_what_cannot_be_applied() {
    let links = [LinkInfo { name: "eth0".into(), index: 2, mac: mac("02:00:00:00:00:01") }];
    assert!(matches!(
        plan(&[InterfaceConfig { mac: mac("02:00:00:00:00:09"), ..eth0() }], &links),
        Err(NetError::NoSuchMac(_))
    ));
    for name in ["", "a/b", "a b", "averyveryverylongname", "eth0:1"] {
        let bad = InterfaceConfig { name: name.into(), ..eth0() };
        assert!(matches!(plan(&[bad], &links), Err(NetError::Invalid(_))), "{name:?}");
    }
    assert!(matches!(plan(&[eth0(), eth0()], &links), Err(NetError::Invalid(_))), "twice");
    let mixed = InterfaceConfig {
        routes: vec![RouteConfig { dest: cidr("::/0"), gateway: Some("10.9.0.1".parse().expect("ip")) }],
        ..eth0()
    };
    assert!(matches!(plan(&[mixed], &links), Err(NetError::Invalid(_))));
}

#[test]
fn messages_have_the_rtnetlink_layout() {
    let link = encode(&NetOp::SetLink { index: 7, name: Some("eth0".into()), mtu: Some(1400), up: true }, 9);
    // Header 16, ifinfomsg 16, IFLA_IFNAME 4+5 padded to 12, IFLA_MTU 8.
    assert_eq!(link.len(), 52);
    assert_eq!(u32::from_ne_bytes(link[0..4].try_into().expect("len")), 52);
    assert_eq!(u16::from_ne_bytes(link[4..6].try_into().expect("type")), RTM_NEWLINK);
    assert_eq!(u16::from_ne_bytes(link[6..8].try_into().expect("flags")), NLM_F_REQUEST | NLM_F_ACK);
    assert_eq!(u32::from_ne_bytes(link[8..12].try_into().expect("seq")), 9);
    assert_eq!(i32::from_ne_bytes(link[20..24].try_into().expect("index")), 7);
    assert_eq!(&link[36..41], b"eth0\0");
    let address = encode(&NetOp::AddAddress { index: 3, address: cidr("10.9.0.5/24") }, 1);
    assert_eq!(&address[16..20], &[AF_INET, 24, 0, RT_SCOPE_UNIVERSE]);
    assert_eq!(&address[28..32], &[10, 9, 0, 5], "IFA_LOCAL");
    let default = encode(&NetOp::AddRoute { index: 3, dest: cidr("0.0.0.0/0"), gateway: None }, 1);
    // Header, rtmsg 12, RTA_OIF 8: no RTA_DST for a default route.
    assert_eq!(default.len(), 36);
    assert_eq!(default[22], RT_SCOPE_LINK);
    assert_eq!(ack(&[36, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), Some(0));
    assert_eq!(ack(&(-17i32).to_ne_bytes()), None, "too short");
}

/// One end of a veth pair in a scratch network namespace gets configured; run on
/// a thread that enters the namespace (and a mount namespace of its own,
/// for a sysfs that lists the namespace's interfaces).
#[test]
fn an_interface_is_configured_through_netlink() {
    let test = "an_interface_is_configured_through_netlink";
    if !testkit::require_root(test)
        || !testkit::require_tool(test, "ip", "iproute2")
        || !testkit::require_tool(test, "unshare", "util-linux")
    {
        return;
    }
    let mut holder = Command::new("unshare").args(["--net", "sleep", "60"]).spawn().expect("unshare");
    let netns = format!("/proc/{}/ns/net", holder.id());
    let own = fs::read_link("/proc/self/ns/net").expect("own netns");
    while fs::read_link(&netns).is_ok_and(|ns| ns == own) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let sysfs = tempfile::tempdir().expect("tempdir");
    let sys_path = sysfs.path().to_path_buf();
    let result = std::thread::spawn(move || -> Result<String, String> {
        use nix::mount::{MsFlags, mount};
        use nix::sched::{CloneFlags, setns, unshare};
        let file = fs::File::open(&netns).map_err(|e| e.to_string())?;
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
        unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS).map_err(|e| e.to_string())?;
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
            .map_err(|e| e.to_string())?;
        mount(Some("sysfs"), &sys_path, Some("sysfs"), MsFlags::empty(), None::<&str>).map_err(|e| e.to_string())?;
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        ip(&["link", "add", "d0", "address", "02:00:00:00:00:01", "type", "veth", "peer", "name", "d1"])?;
        ip(&["link", "set", "d1", "up"])?;
        let interfaces = [eth0()];
        configure_in(&interfaces, &sys_path.join("class/net")).map_err(|e| crius_sandbox::error_report(&e))?;
        configure_in(&interfaces, &sys_path.join("class/net"))
            .map_err(|e| format!("again: {}", crius_sandbox::error_report(&e)))?;
        Ok(ip(&["-o", "link", "show", "eth0"])? + &ip(&["-o", "addr", "show", "eth0"])? + &ip(&["route"])?)
    })
    .join()
    .expect("thread");
    let _ = holder.kill();
    let _ = holder.wait();
    let text = result.unwrap_or_else(|e| panic!("{e}"));
    for wanted in
        ["mtu 1400", "inet 10.9.0.5/24", "inet6 fd00::5/64", "default via 10.9.0.1 dev eth0", "10.10.0.0/16 dev eth0"]
    {
        assert!(text.contains(wanted), "{wanted:?} not in:\n{text}");
    }
    assert!(text.contains(",UP"), "up:\n{text}");
}
