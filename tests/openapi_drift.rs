//! `openapi/openapi.json` must match what the code generates. Regenerate with
//! `SAFEHOLD_UPDATE_OPENAPI=1 cargo test --test openapi_drift`.

#[test]
fn committed_openapi_document_matches_the_code() {
    let generated = safehold_api::openapi::document_json() + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    if std::env::var_os("SAFEHOLD_UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/openapi.json is out of date: run SAFEHOLD_UPDATE_OPENAPI=1 cargo test --test openapi_drift"
    );
}
