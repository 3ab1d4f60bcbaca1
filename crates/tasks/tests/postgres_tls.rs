//! The task repository over TLS: DATABASE_URL's `sslmode` and `sslrootcert` are honoured as
//! by the campaign store (whose test covers every mode), against a private TLS-only
//! PostgreSQL started by the test.

mod postgres {
    use testkit::postgres_tls::TlsPostgres;
    use testkit::smtp::TestCertificate;

    #[tokio::test]
    async fn verify_full_with_the_private_ca_connects_and_a_wrong_ca_is_refused() {
        let Some(server) = TlsPostgres::start() else {
            return;
        };
        let url = server.url(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={}", server.ca.display()),
        );
        let tasks = tasks::connect(&url)
            .await
            .unwrap_or_else(|err| panic!("{url}: {err}"));
        let counts = tasks.counts().await.expect("the migrated schema answers");
        assert!(counts.values().all(|count| *count == 0), "{counts:?}");

        let other = TestCertificate::create().expect("a second CA");
        let url = server.url(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={}", other.ca.display()),
        );
        let err = tasks::connect(&url).await.err().expect("wrong CA refused");
        // (Both test CAs bear the same name: rustls tells a bad signature.)
        assert!(
            err.to_string().contains("invalid peer certificate"),
            "{err}"
        );
    }
}
