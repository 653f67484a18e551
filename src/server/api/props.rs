//! Property tests of what the API reads from outside: JSON bodies into the wire types, the
//! names, weights and timeouts in them, the route of any method and path, the logs query
//! string. None panics; each refusal is an [`ApiError`] (a 4xx) that says what is wrong.

use http::{Method, StatusCode};
use proptest::prelude::*;
use serde_json::Value;

use super::deploy::timeout_of;
use super::instances::check_weight;
use super::route::ApiRoute;
use super::{parse_body, parse_name, ApiError};
use crate::wire::{
    DeployArgs, InstanceInfo, LogsQuery, MigrateArgs, RouteArgs, ServerArgs, SpawnArgs, TenantArgs,
    WeightArgs,
};

/// Any JSON, with the wire types' field names as likely keys.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        prop::sample::select(vec![
            "api", "api:prod", "60s", "0", "99999y", "", ":", "a:b:c"
        ])
        .prop_map(Value::from),
    ];
    let key = prop_oneof![
        prop::sample::select(vec![
            "process", "id", "weight", "version", "timeout", "to", "from", "instance", "name",
            "url", "token", "tenant", "server", "domain", "target",
        ])
        .prop_map(str::to_string),
        "\\PC{0,6}",
    ];
    leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A refusal is a 400 saying something.
fn refused(e: &ApiError) -> Result<(), TestCaseError> {
    prop_assert_eq!(e.0, StatusCode::BAD_REQUEST);
    prop_assert!(!e.1.is_empty());
    Ok(())
}

/// Every wire type the API reads from a body.
fn read_all(body: &[u8]) -> Result<(), TestCaseError> {
    fn one<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<(), TestCaseError> {
        match parse_body::<T>(body) {
            Ok(_) => Ok(()),
            Err(e) => {
                refused(&e)?;
                prop_assert!(e.1.starts_with("invalid JSON body"), "{}", e.1);
                Ok(())
            }
        }
    }
    one::<SpawnArgs>(body)?;
    one::<WeightArgs>(body)?;
    one::<DeployArgs>(body)?;
    one::<RouteArgs>(body)?;
    one::<ServerArgs>(body)?;
    one::<TenantArgs>(body)?;
    one::<MigrateArgs>(body)?;
    one::<InstanceInfo>(body)?;
    if let Ok(d) = parse_body::<DeployArgs>(body) {
        match timeout_of(&d.timeout) {
            Ok(Some(t)) => prop_assert!(!t.is_zero() && t <= tenement_conf::MAX_DURATION),
            Ok(None) => {}
            Err(e) => refused(&e)?,
        }
    }
    Ok(())
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::DELETE),
        Just(Method::PATCH),
        Just(Method::OPTIONS),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_are_a_body_or_a_400(body in prop::collection::vec(any::<u8>(), 0..64)) {
        read_all(&body)?;
    }

    #[test]
    fn any_json_is_a_body_or_a_400(v in json()) {
        read_all(v.to_string().as_bytes())?;
        // A body of the right shape whose fields are anything.
        for k in ["process", "timeout"] {
            let mut body = serde_json::json!({"process": "api:x", "id": "x", "version": "v"});
            body[k] = v.clone();
            read_all(body.to_string().as_bytes())?;
        }
    }

    #[test]
    fn names_and_weights_are_checked_never_panic(s in "\\PC{0,40}", w: u32) {
        match parse_name(&s) {
            Ok(n) => prop_assert_eq!(parse_name(&n.to_string()).ok(), Some(n)),
            Err(e) => refused(&e)?,
        }
        match check_weight(w) {
            Ok(got) => prop_assert!(got == w && w <= 100),
            Err(e) => {
                refused(&e)?;
                prop_assert!(w > 100);
            }
        }
    }

    #[test]
    fn any_method_and_path_has_a_route_or_none(m in method(), path in "(/api)?(/[a-z:%._-]{0,8}){0,5}/?") {
        let _ = ApiRoute::parse(&m, &path);
    }

    #[test]
    fn any_logs_query_string_parses_or_says_why(q in "[a-z_=&%0-9A-F+.-]{0,60}") {
        if let Err(e) = LogsQuery::parse(Some(&q)) {
            prop_assert!(e.contains(':'), "{}", e);
        }
    }

    #[test]
    fn logs_queries_round_trip(
        process in prop::option::of("\\PC{1,12}"),
        id in prop::option::of("\\PC{1,12}"),
        stderr in prop::option::of(any::<bool>()),
        search in prop::option::of("\\PC{1,20}"),
        since_ms in prop::option::of(0u64..=tenement_conf::MAX_DURATION.as_millis() as u64),
        before_id: Option<i64>,
        limit: Option<i64>,
    ) {
        use tenement_supervisor::Stream;
        let q = LogsQuery {
            process,
            id,
            stream: stderr.map(|e| if e { Stream::Stderr } else { Stream::Stdout }),
            search,
            since: since_ms.map(std::time::Duration::from_millis),
            before_id,
            limit,
        };
        prop_assert_eq!(LogsQuery::parse(Some(&q.to_query())), Ok(q));
    }
}
