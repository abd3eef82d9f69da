use super::*;
use crate::rpc::methods::nvmf::call;
use crate::rpc::INVALID_PARAMS;
use serde_json::json;
use std::sync::Mutex;

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:6f1f6e3a-94ba-4e0b-bb1d-3f1c1f9c1a01";

fn registry_with(bdevs: &[&str]) -> Arc<BdevRegistry> {
    let registry = Arc::new(BdevRegistry::new());
    for name in bdevs {
        let p = json!({"name": name, "num_blocks": 256, "block_size": 512});
        crate::config::create_bdev(&registry, "bdev_malloc_create", p).unwrap();
    }
    registry
}

fn ok(nvmf: &Subsystems, method: &str, params: Value) -> Value {
    call(nvmf, method, Some(params.clone())).unwrap_or_else(|e| panic!("{method} {params}: {e}"))
}

fn claimed_by(registry: &BdevRegistry, name: &str) -> Option<String> {
    registry
        .list()
        .into_iter()
        .find(|l| l.bdev.info().name == name)
        .and_then(|l| l.claimed_by)
}

/// A subsystem with a host, two namespaces and a listener, on a TCP transport.
fn populated(registry: &Arc<BdevRegistry>) -> Subsystems {
    let nvmf = Subsystems::new(Arc::clone(registry));
    ok(
        &nvmf,
        "nvmf_create_transport",
        json!({"trtype": "tcp", "max_queue_depth": 64}),
    );
    ok(
        &nvmf,
        "nvmf_create_subsystem",
        json!({"nqn": NQN, "serial_number": "SN1", "model_number": "M1", "max_namespaces": 4}),
    );
    ok(
        &nvmf,
        "nvmf_subsystem_add_host",
        json!({"nqn": NQN, "host": HOST}),
    );
    ok(
        &nvmf,
        "nvmf_subsystem_add_ns",
        json!({"nqn": NQN, "namespace": {"bdev_name": "M0"}}),
    );
    ok(
        &nvmf,
        "nvmf_subsystem_add_ns",
        json!({"nqn": NQN, "namespace": {"bdev_name": "M1", "nsid": 3, "read_only": true}}),
    );
    ok(
        &nvmf,
        "nvmf_subsystem_add_listener",
        json!({"nqn": NQN, "listen_address": {"trtype": "tcp", "adrfam": "ipv4",
            "traddr": "127.0.0.1", "trsvcid": "4420"}}),
    );
    nvmf
}

#[test]
fn nqns_are_checked_as_the_base_specification_says() {
    for good in [
        NQN,
        DISCOVERY_NQN,
        HOST,
        "nqn.2024-12.com.example",
        "nqn.1992-01.com.example:storage:disk-1.a_b",
        &format!("nqn.2016-06.io.spdk:{}", "x".repeat(MAX_NQN_BYTES - 20)),
    ] {
        check_nqn("nqn", good).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for (bad, needle) in [
        ("", "start with 'nqn.'"),
        ("iqn.2016-06.io.spdk:x", "start with 'nqn.'"),
        ("nqn.2016-6.io.spdk:x", "date yyyy-mm"),
        ("nqn.2016-13.io.spdk:x", "date yyyy-mm"),
        ("nqn.16-06.io.spdk:x", "date yyyy-mm"),
        ("nqn.2016-06io.spdk:x", "date yyyy-mm"),
        ("nqn.2016-06.", "date yyyy-mm"),
        ("nqn.2016-06.:x", "empty"),
        ("nqn.2016-06.1io.spdk:x", "reverse domain"),
        ("nqn.2016-06.io..spdk:x", "reverse domain"),
        ("nqn.2016-06.io.spdk-:x", "reverse domain"),
        ("nqn.2016-06.io.sp_dk:x", "reverse domain"),
        ("nqn.2014-08.org.nvmexpress:uuid:not-a-uuid", "UUID"),
        ("nqn.2014-08.org.nvmexpress:uuid:", "UUID"),
        ("nqn.2016-06.io.spdk:a\u{7}b", "control character"),
        (
            &format!("nqn.2016-06.io.spdk:{}", "x".repeat(MAX_NQN_BYTES - 19)),
            "at most 223",
        ),
    ] {
        let err = check_nqn("nqn", bad).unwrap_err().to_string();
        assert!(err.contains(needle), "{bad:?}: '{err}' lacks '{needle}'");
    }
}

/// Everything `nvmf_get_*` shows, and who holds each bdev: what a refused call must leave
/// as it was.
fn snapshot(
    nvmf: &Subsystems,
    registry: &BdevRegistry,
) -> (Value, Value, Vec<Option<String>>, u64) {
    let claims = ["M0", "M1", "M2"]
        .iter()
        .map(|n| claimed_by(registry, n))
        .collect();
    (
        nvmf.subsystems_json(None).unwrap(),
        nvmf.transports_json(),
        claims,
        nvmf.generation(),
    )
}

#[test]
fn every_refusal_names_the_problem_and_changes_nothing() {
    let registry = registry_with(&["M0", "M1", "M2", "Taken"]);
    registry.claim("Taken", "NBD export 'x'").unwrap();
    let nvmf = populated(&registry);
    let before = snapshot(&nvmf, &registry);
    let addr = json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "4420"});
    let eexist = -libc::EEXIST;
    let enodev = -libc::ENODEV;
    let enospc = -libc::ENOSPC;
    let cases: Vec<(&str, Value, i32, &str)> = vec![
        // The transport.
        (
            "nvmf_create_transport",
            json!({"trtype": "TCP"}),
            eexist,
            "already exists",
        ),
        (
            "nvmf_create_transport",
            json!({"trtype": "RDMA"}),
            INVALID_PARAMS,
            "only TCP",
        ),
        ("nvmf_create_transport", json!({}), INVALID_PARAMS, "trtype"),
        (
            "nvmf_create_transport",
            json!({"trtype": "TCP", "max_queue_depth": 1}),
            INVALID_PARAMS,
            "max_queue_depth",
        ),
        (
            "nvmf_create_transport",
            json!({"trtype": "TCP", "in_capsule_data_size": 100}),
            INVALID_PARAMS,
            "multiple of 16",
        ),
        (
            "nvmf_create_transport",
            json!({"trtype": "TCP", "io_unit_size": 3000}),
            INVALID_PARAMS,
            "io_unit_size",
        ),
        (
            "nvmf_create_transport",
            json!({"trtype": "TCP", "bogus": 1}),
            INVALID_PARAMS,
            "bogus",
        ),
        (
            "nvmf_get_transports",
            json!({"trtype": "RDMA"}),
            enodev,
            "RDMA",
        ),
        // Subsystems.
        (
            "nvmf_create_subsystem",
            json!({"nqn": NQN}),
            eexist,
            "already exists",
        ),
        (
            "nvmf_create_subsystem",
            json!({"nqn": DISCOVERY_NQN}),
            INVALID_PARAMS,
            "always exists",
        ),
        (
            "nvmf_create_subsystem",
            json!({"nqn": "nqn.2016-06-io.spdk:x"}),
            INVALID_PARAMS,
            "date",
        ),
        (
            "nvmf_create_subsystem",
            json!({"nqn": "cnode2"}),
            INVALID_PARAMS,
            "nqn.",
        ),
        (
            "nvmf_create_subsystem",
            json!({"nqn": "nqn.2016-06.io.spdk:c2", "serial_number": "x".repeat(21)}),
            INVALID_PARAMS,
            "serial_number",
        ),
        (
            "nvmf_create_subsystem",
            json!({"nqn": "nqn.2016-06.io.spdk:c2", "model_number": "é"}),
            INVALID_PARAMS,
            "model_number",
        ),
        (
            "nvmf_create_subsystem",
            json!({"nqn": "nqn.2016-06.io.spdk:c2", "max_namespaces": 0}),
            INVALID_PARAMS,
            "max_namespaces",
        ),
        (
            "nvmf_create_subsystem",
            json!({"nqn": "nqn.2016-06.io.spdk:c2", "max_namespaces": MAX_NAMESPACES + 1}),
            INVALID_PARAMS,
            "max_namespaces",
        ),
        (
            "nvmf_create_subsystem",
            json!({"nqn": 7}),
            INVALID_PARAMS,
            "nqn",
        ),
        (
            "nvmf_delete_subsystem",
            json!({"nqn": DISCOVERY_NQN}),
            INVALID_PARAMS,
            "cannot be deleted",
        ),
        (
            "nvmf_delete_subsystem",
            json!({"nqn": "nqn.2016-06.io.spdk:none"}),
            enodev,
            "not found",
        ),
        (
            "nvmf_get_subsystems",
            json!({"nqn": "nqn.2016-06.io.spdk:none"}),
            enodev,
            "not found",
        ),
        // Namespaces.
        (
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "nope"}}),
            enodev,
            "nope",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "M0"}}),
            -libc::EBUSY,
            "in use by NVMe-oF subsystem",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "Taken"}}),
            -libc::EBUSY,
            "NBD export",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "M2", "nsid": 3}}),
            eexist,
            "nsid 3",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "M2", "nsid": 0}}),
            INVALID_PARAMS,
            "nsid",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "M2", "nsid": 5}}),
            INVALID_PARAMS,
            "max_namespaces",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "M2", "uuid": "xyz"}}),
            INVALID_PARAMS,
            "uuid",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "M2", "eui64": "00"}}),
            INVALID_PARAMS,
            "eui64",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "bdev_name": "M2"}),
            INVALID_PARAMS,
            "bdev_name",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({"nqn": DISCOVERY_NQN, "namespace": {"bdev_name": "M2"}}),
            INVALID_PARAMS,
            "discovery",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({"nqn": "nqn.2016-06.io.spdk:none", "namespace": {"bdev_name": "M2"}}),
            enodev,
            "not found",
        ),
        (
            "nvmf_subsystem_remove_ns",
            json!({"nqn": NQN, "nsid": 2}),
            enodev,
            "nsid 2",
        ),
        (
            "nvmf_subsystem_remove_ns",
            json!({"nqn": NQN, "nsid": -1}),
            INVALID_PARAMS,
            "nsid",
        ),
        // Hosts.
        (
            "nvmf_subsystem_add_host",
            json!({"nqn": NQN, "host": HOST}),
            eexist,
            "already exists",
        ),
        (
            "nvmf_subsystem_add_host",
            json!({"nqn": NQN, "host": "host1"}),
            INVALID_PARAMS,
            "host",
        ),
        (
            "nvmf_subsystem_add_host",
            json!({"nqn": DISCOVERY_NQN, "host": HOST}),
            INVALID_PARAMS,
            "discovery",
        ),
        (
            "nvmf_subsystem_remove_host",
            json!({"nqn": NQN, "host": "nqn.2016-06.io.spdk:other"}),
            enodev,
            "not found",
        ),
        (
            "nvmf_subsystem_allow_any_host",
            json!({"nqn": NQN}),
            INVALID_PARAMS,
            "allow_any_host",
        ),
        (
            "nvmf_subsystem_allow_any_host",
            json!({"nqn": NQN, "allow_any_host": "yes"}),
            INVALID_PARAMS,
            "allow_any_host",
        ),
        // Listeners.
        (
            "nvmf_subsystem_add_listener",
            json!({"nqn": NQN, "listen_address": addr}),
            eexist,
            "already exists",
        ),
        (
            "nvmf_subsystem_add_listener",
            json!({"nqn": NQN, "listen_address": {"trtype": "RDMA", "traddr": "127.0.0.1", "trsvcid": "4421"}}),
            INVALID_PARAMS,
            "only TCP",
        ),
        (
            "nvmf_subsystem_add_listener",
            json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IB", "traddr": "127.0.0.1", "trsvcid": "4421"}}),
            INVALID_PARAMS,
            "adrfam",
        ),
        (
            "nvmf_subsystem_add_listener",
            json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "traddr": "::1", "trsvcid": "4421"}}),
            INVALID_PARAMS,
            "not an IPv4 address",
        ),
        (
            "nvmf_subsystem_add_listener",
            json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "traddr": "localhost", "trsvcid": "4421"}}),
            INVALID_PARAMS,
            "traddr",
        ),
        (
            "nvmf_subsystem_add_listener",
            json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": "0"}}),
            INVALID_PARAMS,
            "trsvcid",
        ),
        (
            "nvmf_subsystem_add_listener",
            json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": "65536"}}),
            INVALID_PARAMS,
            "trsvcid",
        ),
        (
            "nvmf_subsystem_add_listener",
            json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "traddr": "127.0.0.1"}}),
            INVALID_PARAMS,
            "trsvcid",
        ),
        (
            "nvmf_subsystem_remove_listener",
            json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": "4499"}}),
            enodev,
            "not found",
        ),
        // Connections of an unknown subsystem.
        (
            "nvmf_subsystem_get_controllers",
            json!({"nqn": "nqn.2016-06.io.spdk:none"}),
            enodev,
            "not found",
        ),
        (
            "nvmf_subsystem_get_qpairs",
            json!({}),
            INVALID_PARAMS,
            "nqn",
        ),
    ];
    for (method, params, code, needle) in cases {
        let Err(err) = call(&nvmf, method, Some(params.clone())) else {
            panic!("{method} {params} was accepted");
        };
        assert_eq!(err.code, code, "{method} {params}: {err}");
        assert!(
            err.message.contains(needle),
            "{method} {params}: '{}' lacks '{needle}'",
            err.message
        );
        assert_eq!(
            snapshot(&nvmf, &registry),
            before,
            "{method} {params} changed something"
        );
    }

    // Limits: the namespaces of a full subsystem, and the hosts.
    ok(
        &nvmf,
        "nvmf_subsystem_add_ns",
        json!({"nqn": NQN, "namespace": {"bdev_name": "M2"}}),
    );
    crate::config::create_bdev(
        &registry,
        "bdev_malloc_create",
        json!({"name": "M3", "num_blocks": 8, "block_size": 512}),
    )
    .unwrap();
    crate::config::create_bdev(
        &registry,
        "bdev_malloc_create",
        json!({"name": "M4", "num_blocks": 8, "block_size": 512}),
    )
    .unwrap();
    ok(
        &nvmf,
        "nvmf_subsystem_add_ns",
        json!({"nqn": NQN, "namespace": {"bdev_name": "M3"}}),
    );
    let full = snapshot(&nvmf, &registry);
    let err = call(
        &nvmf,
        "nvmf_subsystem_add_ns",
        Some(json!({"nqn": NQN, "namespace": {"bdev_name": "M4"}})),
    )
    .unwrap_err();
    assert_eq!(err.code, enospc, "{err}");
    assert_eq!(
        claimed_by(&registry, "M4"),
        None,
        "a refused namespace claims nothing"
    );
    assert_eq!(snapshot(&nvmf, &registry), full);
    for i in 1..MAX_HOSTS {
        nvmf.add_host(NQN, &format!("nqn.2016-06.io.example:h{i}"))
            .unwrap();
    }
    let err = nvmf
        .add_host(NQN, "nqn.2016-06.io.example:one-more")
        .unwrap_err();
    assert!(matches!(err, NvmfError::Limit(_)), "{err}");
}

#[test]
fn nsids_are_the_lowest_free_and_are_reused() {
    let registry = registry_with(&["A", "B", "C", "D", "E"]);
    let nvmf = Subsystems::new(Arc::clone(&registry));
    ok(
        &nvmf,
        "nvmf_create_subsystem",
        json!({"nqn": NQN, "max_namespaces": 5}),
    );
    let add = |bdev: &str, nsid: Option<u32>| {
        let mut ns = json!({"bdev_name": bdev});
        if let Some(n) = nsid {
            ns["nsid"] = json!(n);
        }
        ok(
            &nvmf,
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": ns}),
        )
    };
    assert_eq!(add("A", None), 1);
    assert_eq!(add("B", Some(4)), 4);
    assert_eq!(add("C", None), 2);
    ok(
        &nvmf,
        "nvmf_subsystem_remove_ns",
        json!({"nqn": NQN, "nsid": 1}),
    );
    assert_eq!(add("D", None), 1, "a freed nsid is the lowest free again");
    assert_eq!(add("A", None), 3);
    let nsids: Vec<u32> = nvmf
        .subsystem(NQN)
        .unwrap()
        .namespaces
        .iter()
        .map(|n| n.nsid)
        .collect();
    assert_eq!(nsids, [1, 2, 3, 4], "listed by nsid");
    let ns = nvmf.namespace(NQN, 3).unwrap();
    assert_eq!(
        (ns.bdev_name.as_str(), ns.block_size, ns.num_blocks),
        ("A", 512, 256)
    );
    assert_eq!(ns.bdev, registry.lookup("A").unwrap().0);
    assert_eq!(
        ns.uuid,
        registry.lookup("A").unwrap().1.info().uuid,
        "the bdev's uuid by default"
    );
}

#[test]
fn a_served_bdev_is_claimed_until_its_namespace_or_subsystem_goes() {
    let registry = registry_with(&["M0", "M1"]);
    let nvmf = Subsystems::new(Arc::clone(&registry));
    ok(&nvmf, "nvmf_create_subsystem", json!({"nqn": NQN}));
    ok(
        &nvmf,
        "nvmf_create_subsystem",
        json!({"nqn": "nqn.2016-06.io.spdk:cnode2"}),
    );
    assert_eq!(
        ok(
            &nvmf,
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "M0"}})
        ),
        1
    );
    let err = registry
        .unregister("M0")
        .err()
        .expect("a served bdev stays")
        .to_string();
    assert!(
        err.contains("NVMe-oF subsystem") && err.contains(NQN),
        "{err}"
    );
    let err = call(
        &nvmf,
        "nvmf_subsystem_add_ns",
        Some(json!({"nqn": "nqn.2016-06.io.spdk:cnode2", "namespace": {"bdev_name": "M0"}})),
    )
    .unwrap_err();
    assert_eq!(err.code, -libc::EBUSY, "one bdev, one namespace: {err}");
    ok(
        &nvmf,
        "nvmf_subsystem_remove_ns",
        json!({"nqn": NQN, "nsid": 1}),
    );
    assert_eq!(claimed_by(&registry, "M0"), None);
    registry.unregister("M0").unwrap();

    ok(
        &nvmf,
        "nvmf_subsystem_add_ns",
        json!({"nqn": NQN, "namespace": {"bdev_name": "M1"}}),
    );
    assert!(registry.unregister("M1").is_err());
    ok(&nvmf, "nvmf_delete_subsystem", json!({"nqn": NQN}));
    registry.unregister("M1").unwrap();
}

#[test]
fn save_config_entries_recreate_the_same_subsystems_on_a_fresh_registry() {
    let registry = registry_with(&["M0", "M1", "M2"]);
    let nvmf = populated(&registry);
    ok(
        &nvmf,
        "nvmf_create_subsystem",
        json!({"nqn": "nqn.2016-06.io.spdk:cnode0", "allow_any_host": true}),
    );
    ok(
        &nvmf,
        "nvmf_subsystem_add_ns",
        json!({"nqn": "nqn.2016-06.io.spdk:cnode0", "namespace": {"bdev_name": "M2", "nsid": 7, "uuid": "AAAAAAAA-0000-4000-8000-000000000001"}}),
    );
    ok(
        &nvmf,
        "nvmf_subsystem_add_listener",
        json!({"nqn": DISCOVERY_NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv6", "traddr": "::1", "trsvcid": "8009"}}),
    );
    let entries = nvmf.config_entries();
    let methods: Vec<&str> = entries
        .iter()
        .map(|e| e["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods[0], "nvmf_create_transport", "{methods:?}");
    assert_eq!(*methods.last().unwrap(), "nvmf_subsystem_add_listener");

    // The same bdev names, new uuids: the namespaces keep theirs from the config.
    let registry2 = registry_with(&["M0", "M1", "M2"]);
    let nvmf2 = Subsystems::new(Arc::clone(&registry2));
    for e in &entries {
        ok(&nvmf2, e["method"].as_str().unwrap(), e["params"].clone());
    }
    let listed = nvmf.subsystems_json(None).unwrap();
    assert_eq!(nvmf2.subsystems_json(None).unwrap(), listed);
    assert_eq!(nvmf2.transports_json(), nvmf.transports_json());
    assert_eq!(nvmf2.transports_json()[0]["max_queue_depth"], 64);
    assert_eq!(nvmf2.config_entries(), entries);
    // And the listing is SPDK's shape.
    assert_eq!(listed[0]["nqn"], DISCOVERY_NQN);
    assert_eq!(listed[0]["subtype"], "Discovery");
    assert_eq!(listed[0]["listen_addresses"][0]["adrfam"], "IPv6");
    let s = &listed[1];
    assert_eq!(s["subtype"], "NVMe");
    assert_eq!(s["serial_number"], "SN1");
    assert_eq!(s["model_number"], "M1");
    assert_eq!(s["max_namespaces"], 4);
    assert_eq!(s["allow_any_host"], false);
    assert_eq!(s["hosts"], json!([{ "nqn": HOST }]));
    assert_eq!(
        s["listen_addresses"],
        json!([{"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "4420"}])
    );
    assert_eq!(s["namespaces"][1]["nsid"], 3);
    assert_eq!(s["namespaces"][1]["bdev_name"], "M1");
    assert_eq!(s["namespaces"][1]["name"], "M1");
    assert_eq!(
        listed[2]["namespaces"][0]["uuid"],
        "aaaaaaaa-0000-4000-8000-000000000001"
    );
}

#[test]
fn the_discovery_subsystem_always_exists_and_takes_listeners_only() {
    let nvmf = Subsystems::new(registry_with(&[]));
    let listed = nvmf.subsystems_json(None).unwrap();
    assert_eq!(
        listed,
        json!([{"nqn": DISCOVERY_NQN, "subtype": "Discovery",
        "listen_addresses": [], "allow_any_host": true, "hosts": []}])
    );
    let addr = json!({"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": "8009"});
    let err = call(
        &nvmf,
        "nvmf_subsystem_add_listener",
        Some(json!({"nqn": DISCOVERY_NQN, "listen_address": addr})),
    )
    .unwrap_err();
    assert_eq!(err.code, -libc::EINVAL, "no transport yet: {err}");
    assert!(err.message.contains("nvmf_create_transport"), "{err}");
    ok(&nvmf, "nvmf_create_transport", json!({"trtype": "TCP"}));
    ok(
        &nvmf,
        "nvmf_subsystem_add_listener",
        json!({"nqn": DISCOVERY_NQN, "listen_address": addr}),
    );
    assert!(nvmf.check_host(DISCOVERY_NQN, HOST).is_ok());
    ok(
        &nvmf,
        "nvmf_subsystem_remove_listener",
        json!({"nqn": DISCOVERY_NQN, "listen_address": addr}),
    );
    assert_eq!(nvmf.listeners(DISCOVERY_NQN).unwrap(), []);
}

#[test]
fn hosts_decide_who_connects_and_discovery_lists_what_a_host_may_reach() {
    let nvmf = populated(&registry_with(&["M0", "M1"]));
    ok(
        &nvmf,
        "nvmf_create_subsystem",
        json!({"nqn": "nqn.2016-06.io.spdk:open", "allow_any_host": true}),
    );
    ok(
        &nvmf,
        "nvmf_subsystem_add_listener",
        json!({"nqn": "nqn.2016-06.io.spdk:open",
        "listen_address": {"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": "4420"}}),
    );
    let stranger = "nqn.2016-06.io.example:stranger";
    assert!(nvmf.check_host(NQN, HOST).is_ok());
    assert!(matches!(
        nvmf.check_host(NQN, stranger),
        Err(NvmfError::HostNotAllowed { .. })
    ));
    assert!(matches!(
        nvmf.check_host("nqn.2016-06.io.spdk:none", HOST),
        Err(NvmfError::NotFound(_))
    ));
    let reach = |host: &str| -> Vec<String> {
        nvmf.discovery_entries(host)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    };
    assert_eq!(reach(HOST), [NQN, "nqn.2016-06.io.spdk:open"]);
    assert_eq!(reach(stranger), ["nqn.2016-06.io.spdk:open"]);
    ok(
        &nvmf,
        "nvmf_subsystem_allow_any_host",
        json!({"nqn": NQN, "allow_any_host": true}),
    );
    assert!(nvmf.check_host(NQN, stranger).is_ok());
    ok(
        &nvmf,
        "nvmf_subsystem_allow_any_host",
        json!({"nqn": NQN, "allow_any_host": false}),
    );
    ok(
        &nvmf,
        "nvmf_subsystem_remove_host",
        json!({"nqn": NQN, "host": HOST}),
    );
    assert!(nvmf.check_host(NQN, HOST).is_err());
    assert_eq!(nvmf.listen_addresses().len(), 1, "one address, listed once");
    let err = call(
        &nvmf,
        "nvmf_subsystem_add_listener",
        Some(
            json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "traddr": "127.000.0.1",
            "trsvcid": "4420"}}),
        ),
    );
    assert!(err.is_err(), "not an address Rust reads: {err:?}");
    ok(
        &nvmf,
        "nvmf_subsystem_add_listener",
        json!({"nqn": NQN, "listen_address":
        {"trtype": "TCP", "adrfam": "IPv6", "traddr": "0:0::1", "trsvcid": "4420"}}),
    );
    let err = call(&nvmf, "nvmf_subsystem_add_listener", Some(json!({"nqn": NQN,
        "listen_address": {"trtype": "TCP", "adrfam": "IPv6", "traddr": "::1", "trsvcid": "4420"}})))
        .unwrap_err();
    assert_eq!(
        err.code,
        -libc::EEXIST,
        "one address however it is written: {err}"
    );
    assert_eq!(nvmf.listeners(NQN).unwrap()[1].traddr, "::1");
}

#[test]
fn connections_are_counted_and_hold_off_what_would_pull_state_from_under_them() {
    let registry = registry_with(&["M0", "M1"]);
    let nvmf = populated(&registry);
    let stranger = "nqn.2016-06.io.example:stranger";
    assert!(matches!(
        nvmf.connect_controller(NQN, stranger, "id"),
        Err(NvmfError::HostNotAllowed { .. })
    ));
    let c1 = nvmf.connect_controller(NQN, HOST, "hostid-1").unwrap();
    let c2 = nvmf.connect_controller(NQN, HOST, "hostid-2").unwrap();
    assert_eq!((c1, c2), (1, 2));
    let listen = nvmf.listeners(NQN).unwrap()[0].clone();
    let qpair = |cntlid, qid| QpairInfo {
        cntlid,
        qid,
        listen_address: listen.clone(),
        peer_address: "127.0.0.1:50000".into(),
    };
    nvmf.add_qpair(NQN, qpair(c1, 0)).unwrap();
    nvmf.add_qpair(NQN, qpair(c1, 1)).unwrap();
    assert!(matches!(
        nvmf.add_qpair(NQN, qpair(c1, 1)),
        Err(NvmfError::Exists(_))
    ));
    assert!(matches!(
        nvmf.add_qpair(NQN, qpair(9, 1)),
        Err(NvmfError::NotFound(_))
    ));
    assert!(
        matches!(
            nvmf.add_qpair(NQN, qpair(c1, 128)),
            Err(NvmfError::Limit(_))
        ),
        "above max_io_qpairs_per_ctrlr 127"
    );
    let listed = ok(&nvmf, "nvmf_subsystem_get_controllers", json!({"nqn": NQN}));
    assert_eq!(
        listed,
        json!([
        {"cntlid": 1, "hostnqn": HOST, "hostid": "hostid-1", "num_io_qpairs": 1},
        {"cntlid": 2, "hostnqn": HOST, "hostid": "hostid-2", "num_io_qpairs": 0}])
    );
    assert_eq!(
        ok(&nvmf, "nvmf_subsystem_get_qpairs", json!({"nqn": NQN}))
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let before = snapshot(&nvmf, &registry);
    for (method, params) in [
        ("nvmf_delete_subsystem", json!({"nqn": NQN})),
        ("nvmf_subsystem_remove_ns", json!({"nqn": NQN, "nsid": 1})),
        (
            "nvmf_subsystem_remove_host",
            json!({"nqn": NQN, "host": HOST}),
        ),
        (
            "nvmf_subsystem_remove_listener",
            json!({"nqn": NQN, "listen_address": listen}),
        ),
    ] {
        let err = call(&nvmf, method, Some(params)).unwrap_err();
        assert_eq!(err.code, -libc::EBUSY, "{method}: {err}");
        assert_eq!(snapshot(&nvmf, &registry), before, "{method}");
    }
    ok(
        &nvmf,
        "nvmf_subsystem_allow_any_host",
        json!({"nqn": NQN, "allow_any_host": true}),
    );
    let _c3 = nvmf.connect_controller(NQN, stranger, "x").unwrap();
    let err = call(
        &nvmf,
        "nvmf_subsystem_allow_any_host",
        Some(json!({"nqn": NQN, "allow_any_host": false})),
    )
    .unwrap_err();
    assert_eq!(
        err.code,
        -libc::EBUSY,
        "the stranger would lose its access: {err}"
    );

    nvmf.disconnect_controller(NQN, c1);
    nvmf.disconnect_controller(NQN, c2);
    assert_eq!(
        nvmf.connect_controller(NQN, HOST, "again").unwrap(),
        1,
        "the lowest free cntlid"
    );
    nvmf.disconnect_controller(NQN, 1);
    nvmf.disconnect_controller(NQN, 3);
    assert_eq!(
        ok(&nvmf, "nvmf_subsystem_get_qpairs", json!({"nqn": NQN})),
        json!([])
    );
    ok(&nvmf, "nvmf_delete_subsystem", json!({"nqn": NQN}));
    assert_eq!(claimed_by(&registry, "M0"), None);
}

/// Records what it was asked to open and close; fails on port 4999.
#[derive(Default)]
struct FakeBinder {
    log: Mutex<Vec<String>>,
}

impl ListenerBinder for FakeBinder {
    fn listen(&self, a: &ListenAddress) -> Result<(), String> {
        if a.trsvcid == "4999" {
            return Err("address in use".into());
        }
        self.log
            .lock()
            .unwrap()
            .push(format!("listen {}", a.socket_address()));
        Ok(())
    }

    fn stop_listening(&self, a: &ListenAddress) {
        self.log
            .lock()
            .unwrap()
            .push(format!("stop {}", a.socket_address()));
    }
}

#[test]
fn the_binder_opens_an_address_once_and_closes_it_with_its_last_listener() {
    let registry = registry_with(&["M0", "M1"]);
    let nvmf = populated(&registry);
    let binder = Arc::new(FakeBinder::default());
    nvmf.set_binder(binder.clone()).unwrap();
    let log = || std::mem::take(&mut *binder.log.lock().unwrap());
    assert_eq!(
        log(),
        ["listen 127.0.0.1:4420"],
        "what was listed before opens at once"
    );
    let two = "nqn.2016-06.io.spdk:two";
    ok(&nvmf, "nvmf_create_subsystem", json!({"nqn": two}));
    let addr = json!({"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": "4420"});
    ok(
        &nvmf,
        "nvmf_subsystem_add_listener",
        json!({"nqn": two, "listen_address": addr}),
    );
    assert!(log().is_empty(), "already open");
    let err = call(
        &nvmf,
        "nvmf_subsystem_add_listener",
        Some(json!({"nqn": two,
        "listen_address": {"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": "4999"}})),
    )
    .unwrap_err();
    assert_eq!(err.code, -libc::EADDRINUSE, "{err}");
    assert_eq!(
        nvmf.listeners(two).unwrap().len(),
        1,
        "a listener that failed to open is not added"
    );
    ok(
        &nvmf,
        "nvmf_subsystem_remove_listener",
        json!({"nqn": NQN, "listen_address": addr}),
    );
    assert!(log().is_empty(), "'two' still listens there");
    ok(&nvmf, "nvmf_delete_subsystem", json!({"nqn": two}));
    assert_eq!(log(), ["stop 127.0.0.1:4420"]);
}
