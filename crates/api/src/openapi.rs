//! The OpenAPI 3.1 document, generated from the handlers' annotations (utoipa), served at
//! `/api/v1/openapi.json`, and a Swagger UI at `/docs` from vendored assets.

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use utoipa::Modify;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

pub(crate) const API_KEY_SCHEME: &str = "api_key";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "marketing-base API",
        description = "Campaigns, recipients and their delivery state. Every /api/v1 route needs `Authorization: Bearer <API key>` (create one with `marketing api-key create`); errors are application/problem+json.",
    ),
    tags(
        (name = "campaigns", description = "Create, list, read, preview and test-send campaigns"),
        (name = "recipients", description = "A campaign's recipients: adding them (JSON or CSV) and their delivery outcomes"),
        (name = "control", description = "Schedule, send, pause, resume, cancel a campaign and retry its failed recipients"),
        (name = "analytics", description = "A campaign's report: deliveries, bounces, opens, clicks, unsubscribes, complaints"),
        (name = "suppressions", description = "Addresses no campaign sends to"),
        (name = "bounces", description = "Bounce and complaint intake (BOUNCE_WEBHOOK_SECRET, not an API key)"),
        (name = "tracking", description = "The public links in sent messages: open pixel, click redirect, unsubscribe"),
    ),
    modifiers(&ApiKeySecurity),
    components(schemas(crate::problem::ProblemDetails))
)]
pub(crate) struct ApiDoc;

struct ApiKeySecurity;

impl Modify for ApiKeySecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("mbk_<id>_<secret>")
                    .build(),
            ),
        );
    }
}

const SWAGGER_BUNDLE: &str = include_str!("../assets/swagger-ui/swagger-ui-bundle.js");
const SWAGGER_CSS: &str = include_str!("../assets/swagger-ui/swagger-ui.css");
const DOCS_PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>marketing-base API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({ url: "/api/v1/openapi.json", dom_id: "#swagger-ui" });
  </script>
</body>
</html>
"##;

/// `/api/v1/openapi.json` and `/docs`: public, so clients and people can discover the API.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(
    document: utoipa::openapi::OpenApi,
) -> Router<S> {
    let json = std::sync::Arc::new(document.to_json().unwrap_or_else(|_| "{}".to_string()));
    Router::new()
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let json = json.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        json.as_str().to_owned(),
                    )
                }
            }),
        )
        .route("/docs", get(|| async { Html(DOCS_PAGE) }))
        .route(
            "/docs/swagger-ui-bundle.js",
            get(|| async {
                ([(header::CONTENT_TYPE, "text/javascript")], SWAGGER_BUNDLE).into_response()
            }),
        )
        .route(
            "/docs/swagger-ui.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], SWAGGER_CSS).into_response() }),
        )
}
