#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (corpus/<target>/) from the real
files and answers the tests use: k3s's net-conf.json templates and
kube-flannel.yml's, upstream's backend-data shapes, subnet.env as the seed
article shows it, the conflist entries k3s and kube-flannel.yml give the
flannel plugin, netlink datagrams the kernel sends (captured in a network
namespace this script makes), wireguard-go's API answers (captured from a
wireguard-go it starts in that namespace, with a private /run/wireguard)
and `wg genkey` output. Run as root from anywhere; it deletes what it
made. The seeds are committed; this script records how they were made.

    python3 integration/fuzz/make-seeds.py
"""

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    directory = os.path.join(CORPUS, target)
    os.makedirs(directory, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


# ---- net-conf.json ---------------------------------------------------------

K3S_TEMPLATE = '{\n\t"Network": "%s",\n\t"EnableIPv6": %s,\n\t"EnableIPv4": %s,\n\t"IPv6Network": "%s",\n\t"Backend": %s\n}\n'
K3S_BACKENDS = {
    "vxlan": '{\n\t"Type": "vxlan"\n}',
    "host-gw": '{\n\t"Type": "host-gw"\n}',
    "wireguard-native": '{\n\t"Type": "wireguard",\n\t"PersistentKeepaliveInterval": 25\n}',
}
for backend, block in K3S_BACKENDS.items():
    write("netconf", f"k3s-{backend}-v4", K3S_TEMPLATE % ("10.42.0.0/16", "false", "true", "::/0", block))
    write("netconf", f"k3s-{backend}-dual", K3S_TEMPLATE % ("10.42.0.0/16", "true", "true", "fd00:42::/56", block))
    write("netconf", f"k3s-{backend}-v6", K3S_TEMPLATE % ("0.0.0.0/0", "true", "false", "fd00:42::/56", block))
# kube-flannel.yml's ConfigMap and the shapes flannel's documentation shows.
write("netconf", "kube-flannel-yml", '{\n  "Network": "10.244.0.0/16",\n  "EnableNFTables": false,\n  "Backend": {\n    "Type": "vxlan"\n  }\n}\n')
write("netconf", "seed-article", '{\n  "Network": "10.42.0.0/16",\n  "Backend": {\n    "Type": "vxlan"\n  }\n}\n')
write("netconf", "vxlan-options", json.dumps({"Network": "10.42.0.0/16", "SubnetLen": 24, "SubnetMin": "10.42.1.0", "SubnetMax": "10.42.200.0", "Backend": {"Type": "vxlan", "VNI": 4096, "Port": 4789, "MTU": 1400, "GBP": True, "Learning": False, "DirectRouting": True, "MacPrefix": "0E:2A"}}))
write("netconf", "wireguard-options", json.dumps({"Network": "10.42.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00:42::/56", "IPv6SubnetLen": 64, "Backend": {"Type": "wireguard", "ListenPort": 51820, "ListenPortV6": 51821, "PSK": "EEl0GML7McbBo7lbd0ebJHDWB2lGKrP5EI8a8BrWVUE=", "PersistentKeepaliveInterval": 25, "MTU": 1420, "Mode": "auto"}}))
write("netconf", "lowercase-keys", '{"network": "10.244.0.0/16", "backend": {"type": "vxlan", "vni": 4}}')
write("netconf", "duplicate-keys", '{"Network": "10.1.0.0/16", "network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}')
write("netconf", "no-backend", '{"Network": "10.42.0.0/16"}')
write("netconf", "nftables", '{"Network": "10.42.0.0/16", "EnableNFTables": true, "Backend": {"Type": "vxlan"}}')

# ---- subnet.env ------------------------------------------------------------

write("subnet_env", "seed-article", "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
write("subnet_env", "dual-stack", "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.1.1/24\nFLANNEL_IPV6_NETWORK=fd00:42::/56\nFLANNEL_IPV6_SUBNET=fd00:42:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
write("subnet_env", "ipv6-only", "FLANNEL_IPV6_NETWORK=fd00:42::/56\nFLANNEL_IPV6_SUBNET=fd00:42:0:1::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n")
write("subnet_env", "several-networks", "# by hand\nFLANNEL_NETWORK=10.42.0.0/16,10.50.0.0/16\nFLANNEL_SUBNET=10.42.3.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n")

# ---- Nodes -----------------------------------------------------------------

P = "flannel.alpha.coreos.com/"


def node(name, annotations, cidrs, extra=None):
    n = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
            "resourceVersion": "1234",
            "creationTimestamp": "2026-11-30T10:00:00Z",
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "node-role.kubernetes.io/control-plane": "true"},
            "annotations": annotations,
        },
        "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs, "providerID": "k3s://" + name},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "192.168.1.12"}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": "2026-11-30T10:05:00Z", "lastTransitionTime": "2026-11-30T10:00:10Z", "message": "kubelet is posting ready status"}],
            "images": [{"names": ["docker.io/rancher/mirrored-pause@sha256:74c4244427b7312c5b901fe0f67cbc53683d06f4f24c6faee65d4182bf0fa893", "docker.io/rancher/mirrored-pause:3.6"], "sizeBytes": 301463}],
            "nodeInfo": {"kubeletVersion": "v1.33.5+k3s1", "architecture": "amd64", "operatingSystem": "linux"},
        },
    }
    if extra:
        n["metadata"]["annotations"].update(extra)
    return n


vxlan = {P + "kube-subnet-manager": "true", P + "backend-type": "vxlan", P + "backend-data": '{"VNI":1,"VtepMAC":"9a:5c:2b:1e:37:c4"}', P + "public-ip": "192.168.1.12"}
k3s_extra = {"k3s.io/node-args": '["server","--flannel-backend","vxlan"]', "k3s.io/node-config-hash": "5RG2C4O6X4BPRA7QPHQ2YSQFOQEYHW5JXK3OJ2R5VWOSL5RH6OHQ====", "node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"}
raw = {
    "vxlan-k3s": node("ubuntu-dev2", dict(vxlan), ["10.42.1.0/24"], k3s_extra),
    "vxlan-dual": node("dual", dict(vxlan, **{P + "backend-v6-data": '{"VNI":1,"VtepMAC":"9a:5c:2b:1e:37:c5"}', P + "public-ipv6": "fd00:1::12"}), ["10.42.2.0/24", "fd00:42:0:2::/64"]),
    "host-gw": node("hostgw", {P + "kube-subnet-manager": "true", P + "backend-type": "host-gw", P + "backend-data": "null", P + "public-ip": "192.168.1.13"}, ["10.42.3.0/24"]),
    "wireguard": node("wg", {P + "kube-subnet-manager": "true", P + "backend-type": "wireguard", P + "backend-data": '{"PublicKey":"Fyf0JkJKkqjs6EWcwG2N65se7tmZeU9IqV/M7z6XpEg=","Port":51820}', P + "public-ip": "192.168.1.14", P + "backend-v6-data": '{"PublicKey":"Fyf0JkJKkqjs6EWcwG2N65se7tmZeU9IqV/M7z6XpEg=","Port":51821}', P + "public-ipv6": "fd00:1::14"}, ["10.42.4.0/24", "fd00:42:0:4::/64"]),
    "overwrite": node("ow", dict(vxlan, **{P + "public-ip-overwrite": "203.0.113.7"}), ["10.42.5.0/24"]),
    "not-flannel": node("calico", {"projectcalico.org/IPv4Address": "192.168.1.20/24"}, ["10.42.6.0/24"]),
    "deleting": dict(node("going", dict(vxlan), ["10.42.7.0/24"]), **{}),
}
raw["deleting"]["metadata"]["deletionTimestamp"] = "2026-11-30T11:00:00Z"
for name, n in raw.items():
    write("node_peer", "raw-" + name, b"\x00" + json.dumps(n).encode())
structured = {
    "vxlan": ["peer", "true", "vxlan", '{"VNI":1,"VtepMAC":"0a:58:0a:2a:01:00"}', "192.168.1.11", "", "", "", "", "10.42.1.0/24", "10.42.1.0/24", "5"],
    "wireguard-dual": ["peer", "true", "wireguard", '{"PublicKey":"Fyf0JkJKkqjs6EWcwG2N65se7tmZeU9IqV/M7z6XpEg=","Port":51820}', "192.168.1.11", '{"PublicKey":"Fyf0JkJKkqjs6EWcwG2N65se7tmZeU9IqV/M7z6XpEg="}', "fd00:1::11", "", "", "", "10.42.1.0/24,fd00:42:0:1::/64", "7"],
    "host-gw": ["peer", "true", "host-gw", "null", "192.168.1.11", "", "", "203.0.113.1", "", "10.42.9.0/24", "", "1"],
    "own-lease": ["peer", "true", "vxlan", '{"VNI":1,"VtepMAC":"0a:58:0a:2a:01:00"}', "192.168.1.11", "", "", "", "", "10.42.0.0/24", "", "2"],
}
for name, fields in structured.items():
    write("node_peer", "structured-" + name, b"\x01" + "\n".join(fields).encode())
write("peer_resolver", "overlaps", bytes([0, 0, 1, 1, 2, 2, 3, 3, 1, 0xff, 0, 8, 4, 5, 5, 7, 0, 0]))
write("peer_resolver", "flapping", bytes([0, 0, 0, 8] * 8 + [1, 1, 1, 0xff]))

# ---- the CNI plugin's invocations -----------------------------------------

k3s_entry = {"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel", "delegate": {"hairpinMode": True, "forceAddress": True, "isDefaultGateway": True}}
upstream_entry = {"cniVersion": "0.3.1", "name": "cbr0", "type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}}
dual_env = "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.1.1/24\nFLANNEL_IPV6_NETWORK=fd00:42::/56\nFLANNEL_IPV6_SUBNET=fd00:42:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
seed_env = "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
runtime = "CNI_CONTAINERID=e4239ab2706ed9191543a5c7f1ef06fc1f0a56346b0c3f2c742d52607ea271f0\nCNI_NETNS=/var/run/netns/cni-44bb41bd-7c41-4860-3c55-4323bc279628\nCNI_IFNAME=eth0\nCNI_PATH=/opt/cni/bin\n"
for command in ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"]:
    for label, entry, env in [("k3s", k3s_entry, dual_env), ("upstream", upstream_entry, seed_env)]:
        body = dict(entry)
        if command in ("CHECK",):
            body["prevResult"] = {"cniVersion": body["cniVersion"], "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}], "ips": [{"address": "10.42.0.5/24", "gateway": "10.42.0.1", "interface": 0}]}
        if command == "GC":
            body["cniVersion"] = "1.1.0"
            body["cni.dev/valid-attachments"] = [{"containerID": "abc", "ifname": "eth0"}]
        data = f"CNI_COMMAND={command}\n{runtime}".encode() + b"\x00" + json.dumps(body).encode() + b"\x00" + env.encode()
        write("cni_invocation", f"{command.lower()}-{label}", data)
write("cni_invocation", "add-runtime-config", f"CNI_COMMAND=ADD\n{runtime}".encode() + b"\x00" + json.dumps(dict(k3s_entry, runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}, ipam={"routes": [{"dst": "0.0.0.0/0"}]})).encode() + b"\x00" + seed_env.encode())

# ---- wg key files ----------------------------------------------------------

def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, timeout=30, **kw).stdout


key = run("wg", "genkey")
write("wg_key_file", "wg-genkey", key)
write("wg_key_file", "no-newline", key.strip())
write("wg_key_file", "crlf", key.strip() + b"\r\n")
write("wg_key_file", "hex", run("sh", "-c", "wg genkey | base64 -d | od -An -tx1 | tr -d ' \\n'"))

# ---- captures in a namespace of our own ------------------------------------

ns = "fl-seeds-%d" % os.getpid()


def in_ns(*args):
    return run("ip", "netns", "exec", ns, *args)


NETLINK_ROUTE = 0
RTM_GETNEXTHOP = 106
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 1, 4, 0x300


def netlink_exchange(request, flags):
    """Sends one request from inside the namespace, returns the datagrams."""
    code = (
        "import socket,struct,sys\n"
        "s=socket.socket(socket.AF_NETLINK,socket.SOCK_RAW,0)\n"
        "s.setsockopt(270,11,1)\n"  # NETLINK_EXT_ACK
        "s.bind((0,0))\n"
        "s.send(sys.stdin.buffer.read())\n"
        "s.settimeout(2)\n"
        "out=b''\n"
        "try:\n"
        "  while True:\n"
        "    d=s.recv(65536)\n"
        "    out+=struct.pack('=I',len(d))+d\n"
        "    t=struct.unpack_from('=H',d,4)[0]\n"
        "    if t in (2,3): break\n"
        "except socket.timeout: pass\n"
        "sys.stdout.buffer.write(out)\n"
    )
    raw_out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], input=request, check=True, capture_output=True, timeout=30).stdout
    datagrams, i = [], 0
    while i < len(raw_out):
        (n,) = struct.unpack_from("=I", raw_out, i)
        datagrams.append(raw_out[i + 4:i + 4 + n])
        i += 4 + n
    return datagrams


def message(kind, flags, payload):
    return struct.pack("=IHHII", 16 + len(payload), kind, flags, 1, 0) + payload


wg_process = None
try:
    run("ip", "netns", "add", ns)
    in_ns("ip", "link", "set", "lo", "up")
    in_ns("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    in_ns("ip", "link", "set", "v0", "up")
    in_ns("ip", "link", "set", "v1", "up")
    in_ns("ip", "addr", "add", "192.168.7.1/24", "dev", "v0")
    in_ns("ip", "addr", "add", "fd00:7::1/64", "dev", "v0", "nodad")
    for i in range(1, 6):
        in_ns("ip", "nexthop", "add", "id", str(i), "via", f"192.168.7.{10 + i}", "dev", "v0", "proto", "77")
    in_ns("ip", "nexthop", "add", "id", "9", "via", "fd00:7::9", "dev", "v0")
    in_ns("ip", "nexthop", "add", "id", "10", "blackhole")
    in_ns("ip", "nexthop", "add", "id", "11", "group", "1/2")
    dump = netlink_exchange(message(RTM_GETNEXTHOP, NLM_F_REQUEST | NLM_F_DUMP, struct.pack("=BBBBI", 0, 0, 0, 0, 0)), 0)
    for n, d in enumerate(dump):
        write("netlink_datagram", f"nexthop-dump-{n}", d)
    # A refused request: a nexthop through an address not on the link
    # (NLMSG_ERROR with an extended-ack message).
    bad = struct.pack("=BBBBI", 2, 0, 77, 0, 0)
    bad += struct.pack("=HHI", 8, 1, 42)  # NHA_ID
    bad += struct.pack("=HHI", 8, 5, 99)  # NHA_OIF (no such interface)
    bad += struct.pack("=HH4s", 8, 6, socket.inet_aton("10.9.9.9"))  # NHA_GATEWAY
    for n, d in enumerate(netlink_exchange(message(104, NLM_F_REQUEST | NLM_F_ACK | 0x400 | 0x200, bad), 0)):
        write("netlink_datagram", f"refused-{n}", d)
    ok = struct.pack("=BBBBI", 2, 0, 77, 4, 0) + struct.pack("=HHI", 8, 1, 43)
    ok += struct.pack("=HHI", 8, 5, int(in_ns("cat", "/sys/class/net/v0/ifindex")))
    ok += struct.pack("=HH4s", 8, 6, socket.inet_aton("192.168.7.43"))
    for n, d in enumerate(netlink_exchange(message(104, NLM_F_REQUEST | NLM_F_ACK | 0x400 | 0x200, ok), 0)):
        write("netlink_datagram", f"acked-{n}", d)

    # wireguard-go's API socket, in a private /run/wireguard.
    wg_process = subprocess.Popen(["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private", "sh", "-c", "mount -t tmpfs none /run/wireguard 2>/dev/null || { mkdir -p /run/wireguard && mount -t tmpfs none /run/wireguard; }; exec wireguard-go -f wgseed"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if os.path.exists(f"/proc/{wg_process.pid}/root/run/wireguard/wgseed.sock"):
            break
        time.sleep(0.05)
    socket_path = f"/proc/{wg_process.pid}/root/run/wireguard/wgseed.sock"
    priv = run("wg", "genkey").strip()
    config = "set=1\nprivate_key=%s\nlisten_port=51820\n" % bytes.hex(__import__("base64").b64decode(priv))
    for i in range(3):
        peer_key = __import__("base64").b64decode(run("sh", "-c", "wg genkey | wg pubkey").strip())
        config += f"public_key={peer_key.hex()}\nendpoint=192.168.7.{20 + i}:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.42.{i + 1}.0/24\n"
        if i == 2:
            config += "allowed_ip=fd00:42:0:3::/64\npreshared_key=" + __import__("base64").b64decode(run("wg", "genpsk").strip()).hex() + "\n"
    config += "\n"

    def uapi(text):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(socket_path)
        s.sendall(text.encode())
        out = b""
        while not out.endswith(b"\n\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        s.close()
        return out

    write("wg_uapi", "set-answer", uapi(config))
    write("wg_uapi", "get-answer", uapi("get=1\n\n"))
    write("wg_uapi", "get-empty-peers", uapi("set=1\nreplace_peers=true\n\n") and uapi("get=1\n\n"))
finally:
    if wg_process:
        wg_process.terminate()
        wg_process.wait(timeout=10)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
print("seeds in", CORPUS, ":", {t: len(os.listdir(os.path.join(CORPUS, t))) for t in sorted(os.listdir(CORPUS))})
