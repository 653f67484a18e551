//! Property tests: no text, valid TOML or not, makes `Config::parse` panic, and every error it
//! gives says something and, when it is about a key, names the key's line.

use proptest::prelude::*;

use super::parse;

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "domain",
            "listen",
            "admin_listen",
            "data_dir",
            "drain_timeout",
            "max_body",
            "header_timeout",
            "keepalive_timeout",
            "max_connections",
            "preserve_header_case",
            "log_max_line",
            "log_max_bytes",
            "log_max_rows",
            "log_retention",
            "health_check_interval",
            "metrics",
            "metrics_token",
            "command",
            "args",
            "directory",
            "env",
            "health",
            "startup_timeout",
            "stop_timeout",
            "restart",
            "max_restarts",
            "restart_window",
            "backoff_base_ms",
            "backoff_max_ms",
            "idle_timeout",
            "plugins",
            "upstreams",
            "socket",
            "memory_limit_mb",
            "cpu_shares",
            "storage_quota_mb",
            "weight",
            "request_timeout",
            "failover",
            "cert",
            "key",
            "api",
            "web",
            "tls",
        ])
        .prop_map(str::to_string),
        "\"[a-zA-Z0-9.:/{}_ -]{0,20}\"",
        "[a-z_]{1,8}",
    ]
}

fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        prop::sample::select(vec![
            "\"10s\"",
            "\"0\"",
            "\"-1s\"",
            "\"99999999999y\"",
            "\"1TiB\"",
            "\"2TiB\"",
            "\"1.5GB\"",
            "\"\"",
            "\"port\"",
            "\"socket\"",
            "\"/health\"",
            "\"health\"",
            "\"{port}\"",
            "\"{data_dir}\"",
            "\"{{\"",
            "\"api\"",
            "\"api:prod\"",
            "\"web\"",
            "\"127.0.0.1:0\"",
            "\"[::1]:99999\"",
            "\"unix:/tmp/x\"",
            "\"always\"",
            "\"on-failure\"",
            "\"example.com/api\"",
            "\"ten-testapp\"",
            "0",
            "-1",
            "1",
            "100",
            "65536",
            "9223372036854775807",
            "1e300",
            "nan",
            "inf",
            "0.5",
            "true",
            "false",
            "1979-05-27T07:32:00Z",
        ])
        .prop_map(str::to_string),
        "\"[a-zA-Z0-9 ./:{}_-]{0,12}\"",
        "-?[0-9]{1,22}",
    ];
    leaf.prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((key(), inner), 0..4).prop_map(|kv| {
                let kv: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", kv.join(", "))
            }),
        ]
    })
}

fn section() -> impl Strategy<Value = (String, Vec<(String, String)>)> {
    let header = prop_oneof![
        prop::sample::select(vec![
            "[settings]",
            "[settings.tls]",
            "[instances]",
            "[routes]",
            "[fleet]",
            "[process.api]",
            "[process.web]",
            "[process.api.env]",
            "[[process.api.plugins]]",
            "[process.\"a b\"]",
            "[process.API]",
            "",
        ])
        .prop_map(str::to_string),
        "\\[process\\.[a-z_-]{1,6}\\]",
    ];
    (header, prop::collection::vec((key(), value()), 0..6))
}

/// Sections and keys, each at most once (a repeated one is only ever a TOML error).
fn config() -> impl Strategy<Value = String> {
    prop::collection::vec(section(), 0..6).prop_map(|sections| {
        let mut seen = std::collections::HashSet::new();
        let mut out = String::new();
        for (header, lines) in sections {
            if !seen.insert(header.clone()) {
                continue;
            }
            out.push_str(&header);
            out.push('\n');
            let mut keys = std::collections::HashSet::new();
            for (k, v) in lines {
                if keys.insert(k.clone()) {
                    out.push_str(&format!("{k} = {v}\n"));
                }
            }
        }
        out
    })
}

/// What every result must satisfy.
fn check(text: &str) -> Result<(), TestCaseError> {
    if let Err(errors) = parse(text) {
        prop_assert!(!errors.is_empty(), "no error for a refused config:\n{text}");
        for e in &errors {
            prop_assert!(!e.message.is_empty(), "an empty message for:\n{text}");
            prop_assert!(
                e.line.is_some() || e.path.is_empty(),
                "{e} names a key but no line, for:\n{text}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_a_config_or_errors(text in prop_oneof![
        "\\PC{0,200}",
        "[\\[\\]a-z_.=\"'{}, 0-9\\n#:/\\\\-]{0,200}",
    ]) {
        check(&text)?;
    }

    #[test]
    fn config_shaped_text_is_a_config_or_errors(text in config()) {
        check(&text)?;
    }
}
