//! The netns-aware netlink handle against the real kernel: each test makes
//! its own namespaces and deletes them.

use flannel_embed::config::InterfaceSelector;
use flannel_embed::netlink::NetlinkHandle;
use integration::netns::TestNetns;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_the_uplink_inside_each_namespace_not_the_hosts() {
    let node1 = TestNetns::new("nl1").with_uplink("10.123.0.2/24", "10.123.0.1");
    let node2 = TestNetns::new("nl2").with_uplink("10.124.0.7/24", "10.124.0.1");
    node2.ip(&["link", "set", "eth0", "mtu", "1400"]);

    let (p1, p2) = (node1.path(), node2.path());
    let (h1, h2) = tokio::join!(
        NetlinkHandle::open(Some(&p1)),
        NetlinkHandle::open(Some(&p2))
    );
    let ((h1, d1), (h2, d2)) = (h1.unwrap(), h2.unwrap());
    let drivers = [tokio::spawn(d1), tokio::spawn(d2)];
    let e1 = h1.external_interface(None, true, false).await.unwrap();
    let e2 = h2.external_interface(None, true, false).await.unwrap();
    assert_eq!((e1.name.as_str(), e1.mtu), ("eth0", 1500));
    assert_eq!(e1.ipv4, Some("10.123.0.2".parse().unwrap()));
    assert_eq!((e2.name.as_str(), e2.mtu), ("eth0", 1400));
    assert_eq!(e2.ipv4, Some("10.124.0.7".parse().unwrap()));

    // By address, and by name.
    node1.ip(&["addr", "add", "10.123.9.9/24", "dev", "eth0-peer"]);
    let by_addr = h1
        .external_interface(
            Some(&InterfaceSelector::Address("10.123.9.9".parse().unwrap())),
            true,
            false,
        )
        .await
        .unwrap();
    assert_eq!(by_addr.name, "eth0-peer");
    assert_eq!(by_addr.ipv4, Some("10.123.9.9".parse().unwrap()));
    let missing = h1
        .external_interface(Some(&InterfaceSelector::Name("wlan0".into())), true, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains(node1.name()) && missing.contains("no interface named 'wlan0'"),
        "{missing}"
    );
    drivers.iter().for_each(|d| d.abort());
}

#[tokio::test]
async fn a_namespace_without_default_route_says_to_pass_flannel_iface() {
    let bare = TestNetns::new("nlbare");
    let path = bare.path();
    let (handle, driver) = NetlinkHandle::open(Some(&path)).await.unwrap();
    let _driver = tokio::spawn(driver);
    let error = handle
        .external_interface(None, true, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("pass --flannel-iface"), "{error}");
}

#[tokio::test]
async fn a_missing_namespace_is_an_error_naming_it() {
    let error = NetlinkHandle::open(Some(std::path::Path::new("/run/netns/fe-does-not-exist")))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("/run/netns/fe-does-not-exist"), "{error}");
}
