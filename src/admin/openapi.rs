//! `GET /admin/openapi.json`: an OpenAPI 3.1 document of every admin route (SPEC §2.4). Written
//! by hand beside the handlers; a unit test checks its operations against `routes::ROUTES` both
//! ways, and tests/openapi.rs checks every documented operation against the running router.

use serde_json::{json, Map, Value};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn json_body(schema: Value) -> Value {
    json!({"required": false, "content": {"application/json": {"schema": schema}}})
}

fn id_param(what: &str) -> Value {
    json!({"name": "id", "in": "path", "required": true, "description": format!("The {what}'s id."), "schema": {"type": "string", "minLength": 1}})
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

/// An operation: summary, its parameters and body, its answers; admin-token auth unless `public`.
fn op(summary: &str, params: Vec<Value>, body: Option<Value>, responses: Vec<(&str, Value)>, public: bool) -> Value {
    let mut o = Map::new();
    o.insert("summary".into(), summary.into());
    if !params.is_empty() {
        o.insert("parameters".into(), Value::Array(params));
    }
    if let Some(b) = body {
        o.insert("requestBody".into(), b);
    }
    let mut r: Map<String, Value> = responses.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    if !public {
        r.insert("401".into(), error_response("Missing or wrong admin token."));
        o.insert("security".into(), json!([{"adminToken": []}]));
    } else {
        o.insert("security".into(), json!([]));
    }
    o.insert("responses".into(), Value::Object(r));
    Value::Object(o)
}

fn duration_schema() -> Value {
    json!({"oneOf": [
        {"type": "string", "description": "A duration such as \"90s\", \"2h\", \"30d\"."},
        {"type": "integer", "minimum": 1, "description": "Seconds."}
    ]})
}

fn limit(description: &str, max: u64) -> Value {
    json!({"type": "integer", "minimum": 1, "maximum": max, "description": description})
}

/// The document.
pub fn document() -> Value {
    let ok_json = |d: &str| json_response(d, json!({"type": "object"}));
    let key_written = || json_response("The key as it is now.", json!({"$ref": "#/components/schemas/Key"}));
    let mut paths: Map<String, Value> = Map::new();
    let mut add = |path: &str, method: &str, o: Value| {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry.as_object_mut().expect("an object").insert(method.to_string(), o);
    };
    add("/healthz", "get", op("Liveness.", vec![], None, vec![("200", ok_json("Alive."))], true));
    add(
        "/readyz",
        "get",
        op(
            "Readiness: a provider has an address and a usable key, and the server is not stopping.",
            vec![],
            None,
            vec![("200", ok_json("Ready.")), ("503", ok_json("Not ready."))],
            true,
        ),
    );
    add(
        "/metrics",
        "get",
        op(
            "Prometheus metrics (text exposition format).",
            vec![],
            None,
            vec![(
                "200",
                json!({"description": "Metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}}),
            )],
            true,
        ),
    );
    add("/admin/openapi.json", "get", op("This document.", vec![], None, vec![("200", ok_json("OpenAPI 3.1."))], true));
    add(
        "/admin/keys",
        "get",
        op(
            "List keys (masked; never the key itself).",
            vec![
                query(
                    "status",
                    "Only keys in this state.",
                    json!({"enum": ["active", "cooling", "disabled", "invalid", "expired"]}),
                ),
                query("search", "Id, label or category contains this.", json!({"type": "string"})),
                query("provider", "Only this provider's keys.", json!({"type": "string"})),
                query("page", "Page number, from 1.", json!({"type": "integer", "minimum": 1})),
                query("page_size", "Keys per page.", json!({"type": "integer", "minimum": 1, "maximum": 1000})),
            ],
            None,
            vec![
                ("200", json_response("A page of keys.", json!({"$ref": "#/components/schemas/KeyList"}))),
                ("400", error_response("A bad parameter (named in the message).")),
            ],
            false,
        ),
    );
    add(
        "/admin/keys",
        "post",
        op(
            "Add a key (durable before the answer).",
            vec![],
            Some(json!({"required": true, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": false, "required": ["key"],
                "properties": {
                    "key": {
                        "type": "string", "minLength": 8, "pattern": "^[!-~]+$",
                        "description": "8 to keys.max_key_bytes bytes of printable ASCII, no spaces."
                    },
                    "label": {"type": ["string", "null"]},
                    "ttl": duration_schema(),
                    "provider": {"type": ["string", "null"]}
                }
            }}}})),
            vec![
                ("201", json_response("Added.", json!({"type": "object", "properties": {"id": {"type": "string"}}}))),
                ("400", error_response("Not a key, or a bad field.")),
                ("409", error_response("The key is already present.")),
            ],
            false,
        ),
    );
    add(
        "/admin/keys/import",
        "post",
        op(
            "Import keys: a key file (text/plain, the ollama.txt formats) or JSON {keys:[...]}.",
            vec![
                query("validate", "Probe each new key and add only valid ones.", json!({"type": "boolean"})),
                query("dry_run", "Report what would happen; write nothing.", json!({"type": "boolean"})),
                query("provider", "The provider the keys belong to.", json!({"type": "string"})),
            ],
            Some(json!({"required": true, "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/json": {"schema": {"oneOf": [
                    {"type": "object", "properties": {"keys": {"type": "array", "items": {"type": "string"}}}},
                    {"type": "array", "items": {"type": "string"}}
                ]}}
            }})),
            vec![
                ("200", json_response("What was added, duplicated or invalid (by line).", json!({"type": "object"}))),
                ("400", error_response("Not text or JSON, or an unknown provider.")),
                ("413", error_response("Body over 16 MiB.")),
            ],
            false,
        ),
    );
    add(
        "/admin/keys/{id}",
        "delete",
        op(
            "Remove a key (it stays removed although a key file lists it).",
            vec![id_param("key")],
            None,
            vec![("204", json!({"description": "Removed."})), ("404", error_response("No such key."))],
            false,
        ),
    );
    add(
        "/admin/keys/{id}/disable",
        "post",
        op(
            "Disable a key, for a while or until enabled.",
            vec![id_param("key")],
            Some(json_body(
                json!({"type": "object", "additionalProperties": false, "properties": {"for": duration_schema()}}),
            )),
            vec![
                ("200", key_written()),
                ("400", error_response("A bad duration.")),
                ("404", error_response("No such key.")),
            ],
            false,
        ),
    );
    add(
        "/admin/keys/{id}/enable",
        "post",
        op(
            "Enable a disabled key.",
            vec![id_param("key")],
            None,
            vec![("200", key_written()), ("404", error_response("No such key."))],
            false,
        ),
    );
    add(
        "/admin/health-check",
        "post",
        op(
            "Probe keys now (all, or these ids).",
            vec![],
            Some(json_body(json!({"type": "object", "additionalProperties": false, "properties": {
                "ids": {"type": ["array", "null"], "items": {"type": "string"}}
            }}))),
            vec![
                ("200", json_response("Per-key results.", json!({"type": "object"}))),
                ("400", error_response("Invalid JSON.")),
                ("404", error_response("An id is not a key.")),
            ],
            false,
        ),
    );
    add(
        "/admin/tokens",
        "get",
        op(
            "List client tokens (names and ids, limits, budgets used and remaining; never the token).",
            vec![],
            None,
            vec![("200", json_response("Tokens.", json!({"$ref": "#/components/schemas/TokenList"})))],
            false,
        ),
    );
    add(
        "/admin/tokens",
        "post",
        op(
            "Create a client token; the answer is the only place it is shown.",
            vec![],
            Some(json!({"required": true, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": false, "required": ["name"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "expires_in": duration_schema(),
                    "models": {"type": "array", "items": {"type": "string"}},
                    "rpm": limit("Requests per minute.", u32::MAX as u64),
                    "tpm": limit("Budget: tokens per minute.", 1 << 37),
                    "daily_tokens": limit("Budget: tokens per UTC day.", 1 << 37),
                    "monthly_tokens": limit("Budget: tokens per UTC calendar month.", 1 << 37)
                }
            }}}})),
            vec![
                (
                    "201",
                    json_response(
                        "Created.",
                        json!({"type": "object", "required": ["id", "name", "token"], "properties": {
                            "id": {"type": "string"}, "name": {"type": "string"}, "token": {"type": "string"},
                            "expires_at": {"type": ["string", "null"]}
                        }}),
                    ),
                ),
                ("400", error_response("A bad field (named in the message): empty name, a limit below 1.")),
            ],
            false,
        ),
    );
    add(
        "/admin/tokens/{id}",
        "delete",
        op(
            "Revoke a client token.",
            vec![id_param("token")],
            None,
            vec![("204", json!({"description": "Revoked."})), ("404", error_response("No such token."))],
            false,
        ),
    );
    add(
        "/admin/stats",
        "get",
        op(
            "Global counters, success rate, keys by status, and which instance answered (`fleet.instance`).",
            vec![],
            None,
            vec![("200", ok_json("Stats."))],
            false,
        ),
    );
    add(
        "/admin/providers",
        "get",
        op(
            "Per provider: name, kind, URL, keys by status, known models.",
            vec![],
            None,
            vec![("200", ok_json("Providers."))],
            false,
        ),
    );
    add(
        "/admin/usage",
        "get",
        op(
            "Usage by UTC day, client, provider and model: requests, errors, prompt and completion tokens.",
            vec![
                query(
                    "from",
                    "First day, YYYY-MM-DD (default: 29 days before `to`).",
                    json!({"type": "string", "format": "date"}),
                ),
                query("to", "Last day, YYYY-MM-DD (default: today, UTC).", json!({"type": "string", "format": "date"})),
                query("client", "Only this client name.", json!({"type": "string"})),
                query("provider", "Only this provider.", json!({"type": "string"})),
                query("model", "Only this model.", json!({"type": "string"})),
                query(
                    "group_by",
                    "Comma-separated: day, client, provider, model (default: all four).",
                    json!({"type": "string"}),
                ),
                query("format", "json (default) or csv (also Accept: text/csv).", json!({"enum": ["json", "csv"]})),
            ],
            None,
            vec![
                (
                    "200",
                    json!({"description": "The report.", "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Usage"}},
                        "text/csv": {"schema": {"type": "string"}}
                    }}),
                ),
                ("400", error_response("A bad parameter (named first in the message).")),
            ],
            false,
        ),
    );
    add(
        "/admin/reload",
        "post",
        op(
            "Re-read the config file; apply it whole, or change nothing.",
            vec![],
            None,
            vec![
                (
                    "200",
                    json_response(
                        "Applied.",
                        json!({"type": "object", "properties": {
                            "generation": {"type": "integer"},
                            "applied": {"type": "array", "items": {"type": "string"}},
                            "restart_required": {"type": "array", "items": {"type": "string"}},
                            "keys_added": {"type": "integer"}, "keys_removed": {"type": "integer"}
                        }}),
                    ),
                ),
                (
                    "400",
                    json_response(
                        "Problems; nothing changed.",
                        json!({"type": "object", "properties": {
                            "problems": {"type": "array", "items": {"type": "object", "properties": {
                                "path": {"type": "string"}, "message": {"type": "string"}
                            }}}
                        }}),
                    ),
                ),
                ("404", error_response("The server was not started from a config file.")),
            ],
            false,
        ),
    );
    add(
        "/admin/events",
        "get",
        op(
            "Key and pool events, live, as Server-Sent Events (`event: <type>`, `data: <notice>`).",
            vec![],
            None,
            vec![(
                "200",
                json!({"description": "An endless event stream.", "content": {"text/event-stream": {"schema": {"type": "string"}}}}),
            )],
            false,
        ),
    );

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "ollama-pool admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Keys, client tokens, usage, events and reload of an ollama-pool instance. \
                Keys are shown as id and masked form only; a client token is shown once, when created."
        },
        "paths": Value::Object(paths),
        "components": {
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer", "description": "admin.token"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Key": {"type": "object", "required": ["id", "masked", "status"], "properties": {
                    "id": {"type": "string"}, "masked": {"type": "string"}, "provider": {"type": "string"},
                    "label": {"type": ["string", "null"]},
                    "status": {"enum": ["active", "cooling", "disabled", "invalid", "expired"]},
                    "reason": {"type": ["string", "null"]}, "until": {"type": ["string", "null"]},
                    "models": {"type": "array", "items": {"type": "string"}},
                    "created_at": {"type": ["string", "null"]}, "expires_at": {"type": ["string", "null"]},
                    "stats": {"type": "object"}
                }},
                "KeyList": {"type": "object", "properties": {
                    "keys": {"type": "array", "items": {"$ref": "#/components/schemas/Key"}},
                    "total": {"type": "integer"}, "page": {"type": "integer"}, "page_size": {"type": "integer"}
                }},
                "TokenList": {"type": "object", "properties": {"tokens": {"type": "array", "items": {"type": "object", "properties": {
                    "id": {"type": "string"}, "name": {"type": "string"},
                    "source": {"enum": ["store", "config"]},
                    "rpm": {"type": ["integer", "null"]}, "tpm": {"type": ["integer", "null"]},
                    "daily_tokens": {"type": ["integer", "null"]}, "monthly_tokens": {"type": ["integer", "null"]},
                    "budgets": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                        "limit": {"type": "integer"}, "used": {"type": "integer"},
                        "remaining": {"type": "integer"}, "resets_at": {"type": "string"}
                    }}}
                }}}}},
                "Usage": {"type": "object", "properties": {
                    "from": {"type": "string"}, "to": {"type": "string"},
                    "group_by": {"type": "array", "items": {"type": "string"}},
                    "rows": {"type": "array", "items": {"type": "object"}},
                    "totals": {"type": "object"}
                }}
            }
        }
    })
}

/// (method, path) of every operation in the document, upper-case methods.
pub fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
            out.push((method.to_ascii_uppercase(), path.clone()));
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_and_the_router_name_the_same_routes() {
        let doc = document();
        let mut router: Vec<(String, String)> =
            super::super::routes::ROUTES.iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
        router.sort();
        assert_eq!(operations(&doc), router);
        assert_eq!(doc["openapi"], "3.1.0");
        // Every authenticated operation says so; the public ones say they are not.
        for (m, p, op) in super::super::routes::ROUTES {
            let o = &doc["paths"][p][m.to_ascii_lowercase()];
            assert_eq!(o["security"].as_array().unwrap().is_empty(), op.is_public(), "{m} {p}");
        }
    }
}
