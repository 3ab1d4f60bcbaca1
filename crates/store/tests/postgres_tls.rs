//! TLS to PostgreSQL: `sslmode` and `sslrootcert` in DATABASE_URL, against a private
//! PostgreSQL started by the test that accepts TLS connections only, its certificate signed
//! by a private CA.

mod postgres {
    use testkit::postgres_tls::TlsPostgres;
    use testkit::smtp::TestCertificate;

    fn root_cert(path: &std::path::Path) -> String {
        format!("sslrootcert={}", path.display())
    }

    #[tokio::test]
    async fn verify_full_with_the_private_ca_connects_and_a_wrong_ca_or_host_is_refused() {
        let Some(server) = TlsPostgres::start() else {
            return;
        };
        let trusted = root_cert(&server.ca);

        // Verified CA and host name: the store connects and applies its migrations.
        let url = server.url("127.0.0.1", &format!("sslmode=verify-full&{trusted}"));
        let store = store::connect(&url)
            .await
            .unwrap_or_else(|err| panic!("{url}: {err}"));
        let listed = store
            .list_campaigns(&store::CampaignFilter::default())
            .await
            .expect("the migrated schema answers");
        assert!(listed.items.is_empty(), "{:?}", listed.items);
        drop(store);

        // The server takes TLS only: without it the connection is refused, so the connection
        // above was encrypted.
        let plain = server.url("127.0.0.1", "sslmode=disable");
        let err = store::connect(&plain).await.err().expect("plain refused");
        assert!(err.to_string().contains("no pg_hba.conf entry"), "{err}");

        // A CA that did not sign the server's certificate.
        let other = TestCertificate::create().expect("a second CA");
        let url = server.url(
            "127.0.0.1",
            &format!("sslmode=verify-full&{}", root_cert(&other.ca)),
        );
        // (Both test CAs bear the same name, so rustls tells a bad signature rather than an
        // unknown issuer.)
        let err = store::connect(&url).await.err().expect("wrong CA refused");
        let text = err.to_string();
        assert!(text.contains("invalid peer certificate"), "{text}");

        // The right CA, but an address the certificate does not name: verify-full refuses,
        // verify-ca (the CA only) accepts.
        let url = server.url("127.0.0.2", &format!("sslmode=verify-full&{trusted}"));
        let err = store::connect(&url)
            .await
            .err()
            .expect("wrong host refused");
        let text = err.to_string();
        assert!(text.contains("invalid peer certificate"), "{text}");
        assert!(text.contains("not valid for name \"127.0.0.2\""), "{text}");
        let url = server.url("127.0.0.2", &format!("sslmode=verify-ca&{trusted}"));
        store::connect(&url)
            .await
            .unwrap_or_else(|err| panic!("{url}: {err}"));

        // require: encrypted, the certificate not checked (libpq's meaning).
        let url = server.url("127.0.0.1", "sslmode=require");
        store::connect(&url)
            .await
            .unwrap_or_else(|err| panic!("{url}: {err}"));
    }
}
