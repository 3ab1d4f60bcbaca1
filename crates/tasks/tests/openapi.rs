//! The task repository's OpenAPI document: served without the token, describing every
//! route the service has, each with a unique operationId, a summary, the `tasks` tag and the
//! bearer scheme.

use serde_json::Value;
use std::collections::BTreeSet;

const TOKEN: &str = "s3cret-token";

mod http_sqlite {
    use super::*;

    #[tokio::test]
    async fn the_openapi_document_is_served_open_and_describes_every_route() {
        let database = testkit::SqliteDatabase::create();
        let repo = tasks::connect(&database.url).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, tasks::http::router(repo, Some(TOKEN.to_string()))).await
        });

        // No token: the document holds no data, and clients are generated from it.
        let response = reqwest::get(format!("{base}/api/v1/openapi.json"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let served: Value = response.json().await.unwrap();
        assert_eq!(
            served,
            serde_json::to_value(tasks::http::openapi_document()).unwrap()
        );
        assert!(served["openapi"].as_str().unwrap().starts_with("3.1"));
        assert_eq!(
            served["components"]["securitySchemes"]["task_repo_token"]["scheme"],
            "bearer"
        );
        // The self-contained campaign task's payload, for services that submit one.
        let submit = &served["components"]["schemas"]["SubmitCampaign"];
        assert_eq!(
            submit["required"],
            serde_json::json!(["version", "campaign"]),
            "{submit}"
        );
        assert_eq!(
            submit["properties"]["campaign"]["$ref"],
            "#/components/schemas/CampaignDocument"
        );

        let mut described = Vec::new();
        let mut ids = BTreeSet::new();
        for (path, operations) in served["paths"].as_object().unwrap() {
            for (method, operation) in operations.as_object().unwrap() {
                let name = format!("{} {path}", method.to_uppercase());
                let id = operation["operationId"].as_str().unwrap_or_default();
                assert!(id.contains('_'), "{name}: operationId {id:?}");
                assert!(ids.insert(id.to_string()), "{name}: {id} is not unique");
                let summary = operation["summary"].as_str().unwrap_or_default();
                assert!(
                    !summary.is_empty() && !summary.contains('\n'),
                    "{name}: summary {summary:?}"
                );
                assert_eq!(operation["tags"], serde_json::json!(["tasks"]), "{name}");
                assert_eq!(
                    operation["security"],
                    serde_json::json!([{"task_repo_token": []}]),
                    "{name}"
                );
                for status in ["401", "404", "422"] {
                    assert!(
                        operation["responses"][status]["content"]["application/problem+json"]
                            .is_object(),
                        "{name} describes {status} as problem+json"
                    );
                }
                // Every described route is served, and refuses a caller without the token.
                let url = format!(
                    "{base}{}",
                    path.replace("{id}", &uuid::Uuid::nil().to_string())
                );
                let anonymous = reqwest::Client::new()
                    .request(method.to_uppercase().parse().unwrap(), &url)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(anonymous.status(), 401, "{name}");
                described.push(name);
            }
        }
        described.sort();
        let mut expected = [
            "GET /api/v1/tasks",
            "POST /api/v1/tasks",
            "POST /api/v1/tasks/batch",
            "GET /api/v1/tasks/counts",
            "GET /api/v1/tasks/oldest-due",
            "POST /api/v1/tasks/claim",
            "POST /api/v1/tasks/heartbeat",
            "POST /api/v1/tasks/complete",
            "GET /api/v1/tasks/{id}",
            "POST /api/v1/tasks/{id}/complete",
            "POST /api/v1/tasks/{id}/fail",
            "POST /api/v1/tasks/{id}/requeue",
        ];
        expected.sort();
        assert_eq!(described, expected);
        let schemas = served["components"]["schemas"].as_object().unwrap();
        for schema in [
            "Task",
            "NewTask",
            "TaskStatus",
            "Lease",
            "Problem",
            "ClaimBody",
        ] {
            assert!(schemas.contains_key(schema), "{schema} is described");
        }
        server.abort();
    }
}
