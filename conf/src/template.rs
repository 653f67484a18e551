//! Per-instance template expansion: `{process}` (alias `{name}`), `{id}`, `{version}` (= id),
//! `{data_dir}`, `{socket}`, `{port}`.

/// The values a template may name.
#[derive(Debug, Clone, Default)]
pub struct Vars<'a> {
    pub process: &'a str,
    pub id: &'a str,
    pub data_dir: &'a str,
    pub socket: &'a str,
    pub port: &'a str,
}

/// The placeholder names a template may use.
pub const NAMES: &[&str] = &[
    "process", "name", "id", "version", "data_dir", "socket", "port",
];

/// Expand every `{name}` in `template`. Unknown names are left as they are (validation rejects
/// them before this is ever called); `{{` and `}}` are literal braces.
pub fn expand(template: &str, vars: &Vars<'_>) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('{') {
            if let Some(end) = tail.find('}') {
                let name = &tail[1..end];
                let value = match name {
                    "process" | "name" => Some(vars.process),
                    "id" | "version" => Some(vars.id),
                    "data_dir" => Some(vars.data_dir),
                    "socket" => Some(vars.socket),
                    "port" => Some(vars.port),
                    _ => None,
                };
                match value {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&tail[..=end]),
                }
                rest = &tail[end + 1..];
                continue;
            }
        }
        out.push_str(&tail[..1]);
        rest = &tail[1..];
    }
    out.push_str(rest);
    out
}

/// The placeholder names used in `template` that are not known, for validation.
pub fn unknown_names(template: &str) -> Vec<String> {
    placeholders(template)
        .into_iter()
        .filter(|name| !NAMES.contains(&name.as_str()))
        .collect()
}

/// Every `{name}` used in `template`, known or not, in order (`{{` and `}}` are literal braces).
pub fn placeholders(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            rest = after;
            continue;
        }
        match tail.find('}') {
            Some(end) => {
                names.push(tail[1..end].to_string());
                rest = &tail[end + 1..];
            }
            None => break,
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars<'static> {
        Vars {
            process: "api",
            id: "v2",
            data_dir: "/d",
            socket: "/d/api-v2.sock",
            port: "4000",
        }
    }

    #[test]
    fn expands_every_name_and_alias() {
        assert_eq!(
            expand(
                "{process} {name} {id} {version} {data_dir} {socket} {port}",
                &vars()
            ),
            "api api v2 v2 /d /d/api-v2.sock 4000"
        );
    }

    #[test]
    fn keeps_unknown_and_literal_braces() {
        assert_eq!(expand("{nope} {{x}} {", &vars()), "{nope} {x} {");
        assert_eq!(
            unknown_names("{nope} {port} {{lit}}"),
            vec!["nope".to_string()]
        );
        assert_eq!(placeholders("{nope} {port} {{lit}}"), vec!["nope", "port"]);
    }
}
