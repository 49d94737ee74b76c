//! The web console and the API's OpenAPI description, built into the binary (no build step,
//! nothing fetched at run time). The console signs in with `POST /v1/login` and calls the
//! API with the token; the files themselves need no sign-in.

use std::sync::Arc;

use axum::Router;

use super::Admin;
use crate::listeners::web::{Asset, CSS, HTML, JS, JSON};

const CONSOLE: &[Asset] = &[
    Asset { path: "/", kind: HTML, body: include_str!("../../web/console/index.html") },
    Asset { path: "/console.js", kind: JS, body: include_str!("../../web/console/console.js") },
    Asset { path: "/console.css", kind: CSS, body: include_str!("../../web/console/console.css") },
    Asset { path: "/v1/openapi.json", kind: JSON, body: include_str!("../../web/openapi.json") },
];

pub(super) fn routes() -> Router<Arc<Admin>> {
    crate::listeners::web::routes(CONSOLE)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The routes the admin listener's sources declare: `METHOD path` for every
    /// `.route("path", method(handler).other(handler))` line.
    fn routed() -> BTreeSet<String> {
        let sources = [
            include_str!("mod.rs"),
            include_str!("users.rs"),
            include_str!("ops.rs"),
            include_str!("reads.rs"),
            include_str!("transfer.rs"),
        ];
        let mut routes = BTreeSet::new();
        for line in sources.iter().flat_map(|s| s.lines()) {
            let Some((_, rest)) = line.split_once(".route(\"") else { continue };
            let Some((path, handlers)) = rest.split_once('"') else { continue };
            for method in ["get", "post", "put", "patch", "delete"] {
                let called = [" ", "(", "."].iter().any(|before| handlers.contains(&format!("{before}{method}(")));
                if called {
                    routes.insert(format!("{} {path}", method.to_uppercase()));
                }
            }
        }
        routes
    }

    /// Every route of the API is described in the OpenAPI file, and the file describes no
    /// route the listener lacks.
    #[test]
    fn the_openapi_description_covers_every_route() {
        let spec: serde_json::Value = serde_json::from_str(include_str!("../../web/openapi.json")).unwrap();
        let mut described = BTreeSet::new();
        for (path, item) in spec["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                    described.insert(format!("{} {path}", method.to_uppercase()));
                }
            }
        }
        let mut routed = routed();
        assert!(routed.len() > 30, "the parse found the routes: {routed:?}");
        routed.insert("GET /v1/openapi.json".into());
        assert_eq!(routed, described);
    }
}
