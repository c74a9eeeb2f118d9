use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("/etc/crius/crius.toml"))
}

#[test]
fn empty_file_gives_the_defaults() {
    let config = parse("").expect("empty config parses");
    assert_eq!(config, Config::default());
    assert_eq!(config.socket, Path::new("/run/crius/crius.sock"));
    assert_eq!(config.root, Path::new("/var/lib/crius"));
    assert_eq!(config.run_root, Path::new("/run/crius"));
    assert_eq!(config.server.socket_mode, 0o660);
    config.validate().expect("defaults are valid");
}

#[test]
fn missing_default_file_is_fine_but_missing_explicit_file_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.toml");
    assert_eq!(Config::load(&missing, false).expect("defaults"), Config::default());
    let err = Config::load(&missing, true).expect_err("explicit file must exist");
    assert!(err.to_string().contains("nope.toml"), "{err}");
}

#[test]
fn file_values_are_read() {
    let config = parse(
        "socket = \"/tmp/x.sock\"\nroot = \"/srv/crius\"\n[log]\nlevel = \"debug\"\nformat = \"json\"\n\
         [server]\nsocket_mode = \"600\"\n",
    )
    .expect("valid config");
    assert_eq!(config.socket, Path::new("/tmp/x.sock"));
    assert_eq!(config.root, Path::new("/srv/crius"));
    assert_eq!(config.log.level, LogLevel::Debug);
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.server.socket_mode, 0o600);
    assert_eq!(config.run_root, Path::new("/run/crius"), "unset keys keep defaults");
}

#[test]
fn unknown_top_level_key_is_named_with_the_allowed_keys() {
    let err = parse("sockett = \"/x\"\n").expect_err("unknown key");
    let text = err.to_string();
    assert!(text.contains("sockett"), "{text}");
    assert!(text.contains("socket") && text.contains("run_root"), "allowed keys listed: {text}");
    assert!(text.contains("/etc/crius/crius.toml"), "file named: {text}");
}

#[test]
fn unknown_nested_key_is_named() {
    let err = parse("[log]\nlevell = \"info\"\n").expect_err("unknown key");
    let text = err.to_string();
    assert!(text.contains("levell") && text.contains("level"), "{text}");
}

#[test]
fn bad_enum_value_lists_the_allowed_values() {
    let err = parse("[log]\nformat = \"xml\"\n").expect_err("bad format");
    let text = err.to_string();
    assert!(text.contains("xml") && text.contains("text") && text.contains("json"), "{text}");
    assert!(text.contains("format"), "key shown: {text}");

    let err = parse("[log]\nlevel = \"loud\"\n").expect_err("bad level");
    assert!(err.to_string().contains("debug"), "{err}");
}

#[test]
fn wrong_type_is_refused() {
    let err = parse("[server]\nshutdown_timeout_secs = \"soon\"\n").expect_err("bad type");
    assert!(err.to_string().contains("shutdown_timeout_secs"), "{err}");
}

#[test]
fn bad_socket_mode_is_refused() {
    let err = parse("[server]\nsocket_mode = \"rw\"\n").expect_err("not octal");
    assert!(err.to_string().contains("octal"), "{err}");
    let config = parse("[server]\nsocket_mode = \"7777\"\n").expect("parses");
    let err = config.validate().expect_err("too many bits");
    assert!(err.to_string().contains("server.socket_mode"), "{err}");
}

#[test]
fn relative_paths_are_refused_with_the_key() {
    let config = parse("root = \"var/lib/crius\"\n").expect("parses");
    let err = config.validate().expect_err("relative root");
    assert!(err.to_string().contains("`root`") && err.to_string().contains("absolute"), "{err}");
}

#[test]
fn overlong_socket_path_is_refused() {
    let long = format!("/{}", "s".repeat(120));
    let config = parse(&format!("socket = \"{long}\"\n")).expect("parses");
    let err = config.validate().expect_err("too long");
    assert!(err.to_string().contains("107 bytes"), "{err}");
}

#[test]
fn unusable_network_and_streaming_settings_are_refused() {
    for (text, key, why) in [
        ("[network]\nsubnets = [\"10.0.0.0/31\"]\n", "`network`", "no room for pods"),
        ("[network]\nsubnets = [\"10.0.0.0/16\", \"10.1.0.0/16\"]\n", "`network`", "one per address family"),
        ("[network]\nbridge = \"way-too-long-bridge\"\n", "`network`", "1-15 characters"),
        ("[network]\nsubnets = [\"not a cidr\"]\n", "`network`", "not a cidr"),
        ("[streaming]\naddress = \"localhost\"\n", "`streaming.address`", "IP address and port"),
        ("[streaming]\ntls_cert_file = \"/c.pem\"\n", "`streaming.tls_cert_file`", "or neither"),
    ] {
        let err = parse(text).expect("parses").validate().expect_err(text).to_string();
        assert!(err.contains(key) && err.contains(why), "{text}: {err}");
    }
    let mut none = Config::default();
    none.network.mode = NetworkMode::None;
    none.network.subnets = vec!["garbage".into()];
    none.validate().expect("subnets are not used without the bridge");
}

#[test]
fn invalid_toml_is_reported_with_a_line() {
    let err = parse("socket = \n").expect_err("syntax");
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[test]
fn printed_config_parses_back_to_itself() {
    let mut config = Config::default();
    config.log.format = LogFormat::Json;
    config.server.socket_mode = 0o600;
    let again = parse(&config.to_toml()).expect("round trip");
    assert_eq!(again, config);
}

#[test]
fn runtime_handlers_are_named_and_typed() {
    let config = parse("[runtime.handlers.runc]\ntype = \"namespaces\"\n").expect("valid");
    assert_eq!(config.runtime.handlers.get("runc"), Some(&HandlerConfig::Namespaces {}));
    config.validate().expect("a namespaces handler is valid");
    let err = parse("[runtime.handlers.x]\ntype = \"firecracker\"\n").expect_err("unknown type");
    assert!(err.to_string().contains("firecracker"), "{err}");
    let err = parse("[runtime.handlers.x]\ntype = \"namespaces\"\nkernel = \"/k\"\n").expect_err("unknown key");
    assert!(err.to_string().contains("kernel"), "{err}");
    for bad in ["Upper", "-x", "a_b"] {
        let config = parse(&format!("[runtime.handlers.{bad}]\ntype = \"namespaces\"\n")).expect("parses");
        let err = config.validate().expect_err(bad);
        assert!(err.to_string().contains("runtime.handlers"), "{err}");
    }
    let kvm = parse("[runtime.handlers.kvm]\ntype = \"kvm\"\n").expect("parses");
    let err = kvm.validate().expect_err("no kvm backend yet");
    assert!(err.to_string().contains("not built into this crius yet"), "{err}");
    let test = parse("[runtime.handlers.kvm-test]\ntype = \"kvm-test\"\nguest_agent = \"/g\"\n").expect("parses");
    test.validate().expect("kvm-test is built in");
    let relative = parse("[runtime.handlers.kvm-test]\ntype = \"kvm-test\"\nguest_agent = \"g\"\n").expect("parses");
    assert!(relative.validate().is_err(), "a relative guest agent path");
}

#[test]
fn image_limits_default_to_what_a_node_holds_and_are_validated() {
    let config = Config::default();
    assert_eq!(config.images.max_layer_unpacked_bytes, 16 << 30);
    assert_eq!(config.images.min_free_percent, 5);
    let config = parse("[images]\nmin_free_percent = 25\nmax_layer_unpacked_bytes = 1048576\n").expect("parses");
    config.validate().expect("valid");
    assert_eq!((config.images.min_free_percent, config.images.max_layer_unpacked_bytes), (25, 1 << 20));
    let err = parse("[images]\nmin_free_percent = 100\n").expect("parses").validate().expect_err("no room left");
    assert!(err.to_string().contains("`images.min_free_percent`") && err.to_string().contains("0"), "{err}");
    parse("[images]\nmin_free_percent = 300\n").expect_err("not a u8");
}
