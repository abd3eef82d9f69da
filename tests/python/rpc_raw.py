#!/usr/bin/env python3
"""A raw JSON-RPC client for tidepoold, written against the wire format only (standard library).

    rpc_raw.py SOCKET SCENARIO [SCRATCH_DIR]

Scenarios: methods, errors, framing, concurrent. Each checks what it sees and exits 1 with
the reason on the first mismatch; it prints one line per check it passed.
"""
import json
import os
import socket
import sys
import threading
import time

SOCK = sys.argv[1]


def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(SOCK)
    return s


class Conn:
    """One connection; reads responses as back-to-back JSON values."""

    def __init__(self):
        self.s = connect()
        self.buf = b""
        self.dec = json.JSONDecoder()

    def send(self, data):
        self.s.sendall(data if isinstance(data, bytes) else data.encode())

    def recv(self, timeout=10):
        self.s.settimeout(timeout)
        while True:
            text = self.buf.decode("utf-8", "replace").lstrip()
            if text:
                try:
                    value, end = self.dec.raw_decode(text)
                    self.buf = text[end:].encode()
                    return value
                except json.JSONDecodeError:
                    pass
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buf += chunk

    def call(self, method, params=None, rid=1):
        req = {"jsonrpc": "2.0", "method": method, "id": rid}
        if params is not None:
            req["params"] = params
        self.send(json.dumps(req))
        return self.recv()

    def closed_by_server(self, timeout=5):
        self.s.settimeout(timeout)
        try:
            while True:
                if not self.s.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False


def check(cond, what, detail=""):
    if not cond:
        print(f"FAILED: {what}: {detail}")
        sys.exit(1)
    print(f"ok: {what}")


def result(resp, what):
    check("result" in resp, what, json.dumps(resp))
    return resp["result"]


def error(resp, code, what, needle=None):
    err = resp.get("error") or {}
    check(err.get("code") == code, f"{what} -> {code}", json.dumps(resp))
    if needle:
        check(needle in err.get("message", ""), f"{what}: message names '{needle}'", err.get("message"))


def still_serving(what):
    c = Conn()
    check(isinstance(result(c.call("rpc_get_methods"), "rpc_get_methods"), list), f"still serving after {what}")


def scenario_methods(scratch):
    c = Conn()
    methods = result(c.call("rpc_get_methods"), "rpc_get_methods")
    for m in ["rpc_get_methods", "framework_get_reactors", "framework_get_subsystems",
              "framework_get_config", "save_config", "bdev_get_bdevs",
              "bdev_get_iostat", "bdev_malloc_create", "bdev_malloc_delete", "bdev_null_create",
              "bdev_null_delete", "bdev_uring_create", "bdev_uring_delete", "bdev_error_create",
              "bdev_error_delete", "bdev_error_inject_error", "bdev_delay_create",
              "bdev_delay_delete", "bdev_delay_update_latency", "bdev_nvme_attach_controller",
              "bdev_nvme_detach_controller", "bdev_nvme_get_controllers",
              "nvmf_create_transport", "nvmf_get_transports", "nvmf_create_subsystem",
              "nvmf_delete_subsystem", "nvmf_get_subsystems", "nvmf_subsystem_add_ns",
              "nvmf_subsystem_remove_ns", "nvmf_subsystem_add_listener",
              "nvmf_subsystem_remove_listener", "nvmf_subsystem_add_host",
              "nvmf_subsystem_remove_host", "nvmf_subsystem_allow_any_host",
              "nvmf_subsystem_get_controllers", "nvmf_subsystem_get_qpairs",
              "nvmf_subsystem_get_listeners"]:
        check(m in methods, f"rpc_get_methods lists {m}")
    reactors = result(c.call("framework_get_reactors"), "framework_get_reactors")
    check(reactors["tick_rate"] > 0 and len(reactors["reactors"]) >= 1, "reactors reported")
    r0 = reactors["reactors"][0]
    check(all(k in r0 for k in ("lcore", "busy", "idle")), "lcore, busy, idle present", json.dumps(r0))

    check(result(c.call("bdev_malloc_create", {"name": "RawM", "num_blocks": 1024, "block_size": 4096}), "malloc") == "RawM", "bdev_malloc_create returns the name")
    check(result(c.call("bdev_malloc_create", {"num_blocks": 256, "block_size": 512}), "unnamed malloc").startswith("Malloc"), "unnamed malloc gets MallocN")
    check(result(c.call("bdev_null_create", {"name": "RawN", "num_blocks": 100, "block_size": 512}), "null") == "RawN", "bdev_null_create")
    path = os.path.join(scratch, "raw-uring.img")
    with open(path, "wb") as f:
        f.truncate(4 << 20)
    check(result(c.call("bdev_uring_create", {"name": "RawU", "filename": path, "block_size": 4096}), "uring") == "RawU", "bdev_uring_create")
    check(result(c.call("bdev_error_create", {"base_name": "RawM"}), "error") == "EE_RawM", "bdev_error_create makes EE_<base>")
    check(result(c.call("bdev_delay_create", {"base_bdev_name": "RawN", "name": "RawD", "avg_read_latency": 10, "p99_read_latency": 20, "avg_write_latency": 30, "p99_write_latency": 60}), "delay") == "RawD", "bdev_delay_create")

    bdevs = {b["name"]: b for b in result(c.call("bdev_get_bdevs"), "bdev_get_bdevs")}
    for name in ["RawM", "RawN", "RawU", "EE_RawM", "RawD"]:
        check(name in bdevs, f"bdev_get_bdevs lists {name}")
    m = bdevs["RawM"]
    for key in ["name", "product_name", "block_size", "num_blocks", "uuid", "claimed", "supported_io_types", "driver_specific"]:
        check(key in m, f"bdev_get_bdevs has '{key}'")
    check(m["claimed"] is True and bdevs["EE_RawM"]["claimed"] is False, "the base of an error bdev is claimed")
    check(m["product_name"] == "Malloc disk" and m["num_blocks"] == 1024 and m["block_size"] == 4096, "malloc geometry")
    one = result(c.call("bdev_get_bdevs", {"name": "RawU"}), "bdev_get_bdevs by name")
    check(len(one) == 1 and one[0]["driver_specific"]["uring"]["filename"] == path, "uring driver_specific names the file")

    check(result(c.call("bdev_error_inject_error", {"name": "EE_RawM", "io_type": "read", "error_type": "failure", "num": 3}), "inject") is True, "bdev_error_inject_error")
    check(result(c.call("bdev_error_inject_error", {"name": "EE_RawM", "io_type": "clear", "error_type": "failure"}), "clear") is True, "bdev_error_inject_error clear")
    check(result(c.call("bdev_delay_update_latency", {"delay_bdev_name": "RawD", "latency_type": "avg_read", "latency_us": 15}), "update") is True, "bdev_delay_update_latency")
    d = result(c.call("bdev_get_bdevs", {"name": "RawD"}), "delay info")[0]
    check(d["driver_specific"]["delay"]["avg_read_latency"] == 15, "the new latency shows", json.dumps(d["driver_specific"]))

    stat = result(c.call("bdev_get_iostat"), "bdev_get_iostat")
    check("tick_rate" in stat and any(b["name"] == "RawM" for b in stat["bdevs"]), "bdev_get_iostat lists bdevs")
    one = result(c.call("bdev_get_iostat", {"name": "RawM"}), "iostat by name")["bdevs"]
    check(len(one) == 1 and "num_read_ops" in one[0] and "bytes_written" in one[0], "iostat has SPDK's fields")

    cfg = result(c.call("save_config"), "save_config")
    methods_saved = [e["method"] for s in cfg["subsystems"] for e in s["config"]]
    check(methods_saved.count("bdev_malloc_create") >= 2 and "bdev_delay_create" in methods_saved, "save_config lists the bdevs")

    for method, name in [("bdev_delay_delete", "RawD"), ("bdev_error_delete", "EE_RawM"), ("bdev_malloc_delete", "RawM"),
                         ("bdev_null_delete", "RawN"), ("bdev_uring_delete", "RawU")]:
        check(result(c.call(method, {"name": name}), method) is True, f"{method} {name}")
    left = [b["name"] for b in result(c.call("bdev_get_bdevs"), "after deletes")]
    check(not any(n.startswith("Raw") or n == "EE_RawM" for n in left), "deleted bdevs are gone", str(left))


def scenario_errors(scratch):
    c = Conn()
    c.send("{this is not json}")
    error(c.recv(), -32700, "garbage inside braces")
    check(result(c.call("rpc_get_methods"), "same connection after a parse error") is not None, "a parse error keeps the connection")
    c.send(json.dumps({"method": "rpc_get_methods", "id": 5}))
    error(c.recv(), -32600, "missing jsonrpc", "jsonrpc")
    c.send(json.dumps({"jsonrpc": "2.0", "method": 7, "id": 6}))
    resp = c.recv()
    error(resp, -32600, "method not a string", "method")
    check(resp.get("id") == 6, "the invalid request's id comes back")
    c.send("[]")
    error(c.recv(), -32600, "empty batch")
    # A key given twice is ambiguous: refused, nothing made (serde_json alone keeps the last).
    c.send('{"jsonrpc":"2.0","id":9,"method":"bdev_null_create","params":{"name":"D1","name":"D2","num_blocks":8,"block_size":512}}')
    error(c.recv(), -32700, "duplicate key", "duplicate key 'name'")
    names = [b["name"] for b in result(c.call("bdev_get_bdevs"), "bdevs after a duplicate key")]
    check("D1" not in names and "D2" not in names, "a request with a duplicate key makes nothing", names)
    error(c.call("no_such_method"), -32601, "unknown method", "no_such_method")
    error(c.call("bdev_null_create", {"name": "E", "num_blocks": "many", "block_size": 512}), -32602, "num_blocks a string", "num_blocks")
    error(c.call("bdev_null_create", {"name": "E", "block_size": 512}), -32602, "num_blocks missing", "num_blocks")
    error(c.call("bdev_null_create", {"name": "E", "num_blocks": 8, "block_size": 512, "colour": 1}), -32602, "unknown parameter", "colour")
    error(c.call("bdev_null_create", {"name": "E", "num_blocks": 8, "block_size": 1000}), -32602, "block size not a power of two", "block_size")
    error(c.call("bdev_error_inject_error", {"name": "x", "io_type": "sideways", "error_type": "failure"}), -32602, "bad io_type", "io_type")
    error(c.call("bdev_delay_create", {"base_bdev_name": "nope", "name": "D", "avg_read_latency": 1, "p99_read_latency": 1, "avg_write_latency": 1, "p99_write_latency": 1}), -19, "delay on a missing base", "nope")
    result(c.call("bdev_malloc_create", {"name": "EM", "num_blocks": 64, "block_size": 4096}), "create EM")
    error(c.call("bdev_malloc_create", {"name": "EM", "num_blocks": 64, "block_size": 4096}), -17, "duplicate name", "EM")
    result(c.call("bdev_error_create", {"base_name": "EM"}), "create EE_EM")
    error(c.call("bdev_malloc_delete", {"name": "EM"}), -16, "deleting a claimed bdev", "EE_EM")
    check(any(b["name"] == "EM" for b in result(c.call("bdev_get_bdevs"), "list")), "the refused delete changed nothing")
    error(c.call("bdev_error_create", {"base_name": "EM"}), -17, "second error bdev on the same base")
    error(c.call("bdev_null_delete", {"name": "EM"}), -19, "null delete on a malloc bdev", "not a null bdev")
    error(c.call("bdev_malloc_delete", {"name": "ghost"}), -19, "deleting a missing bdev", "ghost")
    error(c.call("bdev_get_bdevs", {"name": "ghost"}), -19, "get a missing bdev", "ghost")
    error(c.call("bdev_delay_update_latency", {"delay_bdev_name": "EM", "latency_type": "avg_read", "latency_us": 5}), -19, "update latency of a non-delay bdev", "not a delay bdev")
    # The NVMe methods' bad input (the guest tests attach real controllers).
    pcie = {"name": "Nv", "trtype": "PCIe"}
    error(c.call("bdev_nvme_attach_controller", {**pcie, "traddr": "00:01.0"}), -32602, "malformed PCI address", "not a PCI address")
    error(c.call("bdev_nvme_attach_controller", {**pcie, "traddr": "0000:ff:1f.7"}), -32602, "no such PCI device", "no PCI device 0000:ff:1f.7")
    error(c.call("bdev_nvme_attach_controller", pcie), -32602, "traddr missing", "traddr")
    error(c.call("bdev_nvme_attach_controller", {**pcie, "trtype": "RDMA", "traddr": "0000:00:01.0"}), -32602, "another transport", "PCIe or TCP")
    tcp = {"name": "Nt", "trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": "4420", "subnqn": "nqn.2016-06.io.spdk:cnode1"}
    error(c.call("bdev_nvme_attach_controller", {**tcp, "trsvcid": None}), -32602, "TCP without a port", "trsvcid")
    error(c.call("bdev_nvme_attach_controller", {**tcp, "subnqn": "cnode1"}), -32602, "TCP with a bad subsystem NQN", "subnqn")
    error(c.call("bdev_nvme_attach_controller", {**tcp, "ctrlr_loss_timeout_sec": 5}), -32602, "a loss timeout without a reconnect delay", "reconnect_delay_sec")
    error(c.call("bdev_nvme_attach_controller", {**pcie, "traddr": "0000:00:01.0", "subnqn": "nqn.2016-06.io.spdk:cnode1"}), -32602, "a TCP option on PCIe", "TCP only")
    error(c.call("bdev_nvme_attach_controller", {**pcie, "traddr": "0000:00:01.0", "io_queue_entries": 1}), -32602, "a one-entry queue", "io_queue_entries")
    error(c.call("bdev_nvme_attach_controller", {**pcie, "traddr": "0000:00:01.0", "colour": 1}), -32602, "unknown parameter", "colour")
    error(c.call("bdev_nvme_attach_controller", {"name": "bad name", "trtype": "PCIe", "traddr": "0000:00:01.0"}), -32602, "a name with a space", "name")
    error(c.call("bdev_nvme_detach_controller", {"name": "ghost"}), -19, "detaching a missing controller", "no NVMe controller named 'ghost'")
    error(c.call("bdev_nvme_get_controllers", {"name": "ghost"}), -19, "a missing controller", "ghost")
    check(result(c.call("bdev_nvme_get_controllers"), "no controllers") == [], "no controller is attached")
    names = [b["name"] for b in result(c.call("bdev_get_bdevs"), "bdevs after the NVMe refusals")]
    check(not any(n.startswith("Nv") for n in names), "refused attaches made nothing", names)
    c.send(json.dumps({"jsonrpc": "2.0", "method": "rpc_get_methods", "params": 5, "id": 9}))
    error(c.recv(), -32600, "params neither object nor array", "params")
    result(c.call("bdev_error_delete", {"name": "EE_EM"}), "delete EE_EM")
    result(c.call("bdev_malloc_delete", {"name": "EM"}), "delete EM")

    big = Conn()
    payload = '{"jsonrpc":"2.0","method":"rpc_get_methods","params":{"pad":"' + "x" * (2 << 20) + '"},"id":1}'
    try:
        big.send(payload)
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        error(big.recv(), -32600, "request over 1 MiB", "larger than")
    except (ConnectionError, ConnectionResetError):
        check(False, "request over 1 MiB gets an error before the close")
    check(big.closed_by_server(), "the oversized client's connection is closed")
    still_serving("an oversized request")

    bad = Conn()
    bad.send(b"\x00\x01\x02 hello")
    error(bad.recv(), -32700, "bytes that cannot start a request")
    check(bad.closed_by_server(), "the garbage client's connection is closed")
    still_serving("binary garbage")


def scenario_framing(scratch):
    c = Conn()
    two = json.dumps({"jsonrpc": "2.0", "method": "rpc_get_methods", "id": "a"}) + json.dumps({"jsonrpc": "2.0", "method": "bdev_get_bdevs", "id": "b"})
    c.send(two)
    r1, r2 = c.recv(), c.recv()
    check(r1.get("id") == "a" and r2.get("id") == "b", "two requests in one write, answered in order")
    one = json.dumps({"jsonrpc": "2.0", "method": "framework_get_reactors", "id": 42}).encode()
    for i in range(len(one)):
        c.send(one[i:i + 1])
        if i % 16 == 0:
            time.sleep(0.002)
    check(c.recv().get("id") == 42, "one request split into single bytes")
    batch = [
        {"jsonrpc": "2.0", "method": "rpc_get_methods", "id": 1},
        {"jsonrpc": "2.0", "method": "rpc_get_methods"},
        {"jsonrpc": "2.0", "method": "nope", "id": 3},
        {"foo": "bar"},
    ]
    c.send(json.dumps(batch))
    resp = c.recv()
    check(isinstance(resp, list) and len(resp) == 3, "a batch answers every request but the notification", json.dumps(resp))
    by_id = {json.dumps(r.get("id")): r for r in resp}
    check("result" in by_id["1"] and by_id["3"]["error"]["code"] == -32601 and by_id["null"]["error"]["code"] == -32600, "batch members answered by id")
    c.send(json.dumps([{"jsonrpc": "2.0", "method": "rpc_get_methods"}, {"jsonrpc": "2.0", "method": "bdev_get_bdevs"}]))
    c.send(json.dumps({"jsonrpc": "2.0", "method": "rpc_get_methods", "id": "after"}))
    check(c.recv().get("id") == "after", "an all-notification batch gets no response")
    # The NVMe-oF target's bad input: each refused by name, and nothing changes.
    nqn = "nqn.2016-06.io.spdk:raw"
    check(result(c.call("nvmf_create_transport", {"trtype": "TCP"}), "nvmf_create_transport") is True, "nvmf_create_transport")
    result(c.call("nvmf_create_subsystem", {"nqn": nqn}), "nvmf_create_subsystem")
    result(c.call("bdev_malloc_create", {"name": "RawNs", "num_blocks": 64, "block_size": 4096}), "create RawNs")
    check(result(c.call("nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": {"bdev_name": "RawNs"}}), "add_ns") == 1, "nvmf_subsystem_add_ns returns nsid 1")
    listed = result(c.call("nvmf_get_subsystems"), "nvmf_get_subsystems")
    check(listed[0]["nqn"] == "nqn.2014-08.org.nvmexpress.discovery" and listed[0]["subtype"] == "Discovery", "the discovery subsystem comes first", json.dumps(listed[0]))
    check(listed[1]["nqn"] == nqn and listed[1]["subtype"] == "NVMe" and listed[1]["namespaces"][0]["bdev_name"] == "RawNs", "the new subsystem is listed", json.dumps(listed[1]))
    for method, params, code, needle in [
        ("nvmf_create_transport", {"trtype": "TCP"}, -17, "already exists"),
        ("nvmf_create_transport", {"trtype": "PCIe"}, -32602, "only TCP"),
        ("nvmf_create_transport", {"trtype": "TCP", "max_queue_depth": -1}, -32602, "max_queue_depth"),
        ("nvmf_create_subsystem", {"nqn": nqn}, -17, "already exists"),
        ("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk:" + "x" * 210}, -32602, "at most 223"),
        ("nvmf_create_subsystem", {"nqn": "nqn.2014-08.org.nvmexpress.discovery"}, -32602, "always exists"),
        ("nvmf_create_subsystem", {"nqn": ["nqn.2016-06.io.spdk:a"]}, -32602, "nqn"),
        ("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk:b", "allow_any_host": 1}, -32602, "allow_any_host"),
        ("nvmf_delete_subsystem", {"nqn": "nqn.2016-06.io.spdk:ghost"}, -19, "ghost"),
        ("nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": {"bdev_name": "ghost"}}, -19, "ghost"),
        ("nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": {"bdev_name": "RawNs", "nsid": 4294967295}}, -32602, "nsid"),
        ("nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": "RawNs"}, -32602, "namespace"),
        ("nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": {"bdev_name": "RawNs"}}, -16, "in use"),
        ("bdev_malloc_delete", {"name": "RawNs"}, -16, "NVMe-oF subsystem"),
        ("nvmf_subsystem_remove_ns", {"nqn": nqn, "nsid": 2}, -19, "nsid 2"),
        ("nvmf_subsystem_add_listener", {"nqn": nqn, "listen_address": {"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": 4420}}, -32602, "trsvcid"),
        ("nvmf_subsystem_add_listener", {"nqn": nqn, "listen_address": {"trtype": "TCP", "traddr": "300.1.1.1", "trsvcid": "4420"}}, -32602, "traddr"),
        ("nvmf_subsystem_add_host", {"nqn": nqn, "host": "bob"}, -32602, "host"),
        ("nvmf_subsystem_remove_host", {"nqn": nqn, "host": "nqn.2016-06.io.spdk:bob"}, -19, "bob"),
        ("nvmf_subsystem_allow_any_host", {"nqn": nqn, "allow_any_host": None}, -32602, "allow_any_host"),
        ("nvmf_get_subsystems", {"nqn": "nqn.2016-06.io.spdk:ghost"}, -19, "ghost"),
    ]:
        error(c.call(method, params), code, f"{method} {json.dumps(params)}", needle)
    check(result(c.call("nvmf_get_subsystems"), "after the refusals") == listed, "the refusals changed nothing")
    result(c.call("nvmf_delete_subsystem", {"nqn": nqn}), "cleanup")
    check(result(c.call("bdev_malloc_delete", {"name": "RawNs"}), "delete RawNs") is True, "deleting the subsystem released its bdev")
    c.send(json.dumps({"jsonrpc": "2.0", "method": "bdev_null_create", "params": {"name": "NoteN", "num_blocks": 8, "block_size": 512}}))
    names = [b["name"] for b in result(c.call("bdev_get_bdevs", rid=7), "list")]
    check("NoteN" in names, "a notification still runs")
    result(c.call("bdev_null_delete", {"name": "NoteN"}), "cleanup")


def scenario_concurrent(scratch):
    failures = []

    def worker(k):
        try:
            c = Conn()
            for i in range(200):
                rid = k * 1000 + i
                r = c.call("rpc_get_methods", rid=rid)
                if r.get("id") != rid or "result" not in r:
                    failures.append(f"client {k}: {r}")
                    return
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            failures.append(f"client {k}: {e!r}")

    def vandal():
        for _ in range(20):
            try:
                v = Conn()
                v.send(b"]]]]" + os.urandom(64))
                v.closed_by_server(2)
            except OSError:
                pass

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)] + [threading.Thread(target=vandal)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(not failures, "8 clients x 200 calls with a vandal beside them", "; ".join(failures[:3]))


if __name__ == "__main__":
    scratch = sys.argv[3] if len(sys.argv) > 3 else "/tmp"
    {"methods": scenario_methods, "errors": scenario_errors, "framing": scenario_framing,
     "concurrent": scenario_concurrent}[sys.argv[2]](scratch)
    print("PASS")
