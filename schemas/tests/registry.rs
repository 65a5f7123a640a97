//! The schema registry client and the registry-backed decoder, against a small in-process fake
//! of the Confluent API.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use callsync_schemas::registry::REGISTRY_CONTENT_TYPE;
use callsync_schemas::{
    encode_to_vec, wire_format_for, CallRecord, DecodeError, RegistryDecodeError, RegistryDecoder,
    RegistryError, SchemaRegistryClient, WireFormat,
};
use common::*;
use serde_json::{json, Value};

#[derive(Default)]
struct Fake {
    schemas: Mutex<Vec<String>>,
    subjects: Mutex<HashMap<String, Vec<u32>>>,
    posts: AtomicUsize,
    gets: AtomicUsize,
}

async fn register(
    State(fake): State<Arc<Fake>>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, Json<Value>) {
    fake.posts.fetch_add(1, Ordering::SeqCst);
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some(REGISTRY_CONTENT_TYPE) {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Json(json!({"error_code": 415, "message": "content type"})),
        );
    }
    if subject == "locked-value" {
        return (
            StatusCode::CONFLICT,
            Json(
                json!({"error_code": 409, "message": "Schema being registered is incompatible with an earlier schema"}),
            ),
        );
    }
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error_code": 400})));
    };
    let schema = body["schema"].as_str().unwrap_or_default().to_string();
    let mut schemas = fake.schemas.lock().unwrap();
    let id = match schemas.iter().position(|s| *s == schema) {
        Some(i) => i as u32 + 1,
        None => {
            schemas.push(schema);
            schemas.len() as u32
        }
    };
    fake.subjects
        .lock()
        .unwrap()
        .entry(subject)
        .or_default()
        .push(id);
    (StatusCode::OK, Json(json!({ "id": id })))
}

async fn by_id(State(fake): State<Arc<Fake>>, Path(id): Path<u32>) -> (StatusCode, Json<Value>) {
    fake.gets.fetch_add(1, Ordering::SeqCst);
    let schemas = fake.schemas.lock().unwrap();
    match schemas.get((id as usize).wrapping_sub(1)) {
        Some(s) => (StatusCode::OK, Json(json!({ "schema": s }))),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error_code": 40403, "message": "Schema not found"})),
        ),
    }
}

async fn start() -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let app = Router::new()
        .route("/subjects/{subject}/versions", post(register))
        .route("/schemas/ids/{id}", get(by_id))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), fake)
}

#[tokio::test]
async fn register_and_decode_through_the_registry() {
    let (url, fake) = start().await;
    let client = Arc::new(SchemaRegistryClient::new(&url).unwrap());

    // Producer side: register under calls-value, write Confluent framing.
    let format = wire_format_for::<CallRecord>(Some(&client), "calls")
        .await
        .unwrap();
    let WireFormat::Confluent { schema_id } = format else {
        panic!("{format:?}")
    };
    assert_eq!(schema_id, 1);
    assert_eq!(
        client.register_record::<CallRecord>("calls").await.unwrap(),
        1
    );
    assert_eq!(
        fake.posts.load(Ordering::SeqCst),
        1,
        "registration is cached"
    );
    assert_eq!(
        fake.subjects.lock().unwrap().get("calls-value"),
        Some(&vec![1])
    );
    assert_eq!(
        wire_format_for::<CallRecord>(None, "calls").await.unwrap(),
        WireFormat::SingleObject
    );

    // Consumer side, a fresh client: the unknown id is fetched once, then known.
    let consumer_client = Arc::new(SchemaRegistryClient::new(&url).unwrap());
    let decoder = RegistryDecoder::<CallRecord>::new(Some(consumer_client));
    let bytes = encode_to_vec(&full_record(), format).unwrap();
    assert_eq!(decoder.decode(&bytes).await.unwrap(), full_record());
    assert_eq!(decoder.decode(&bytes).await.unwrap(), full_record());
    assert_eq!(
        fake.gets.load(Ordering::SeqCst),
        1,
        "schema lookups are cached"
    );
    assert!(decoder.decoder().knows_schema_id(1));

    // Single-object values need no registry.
    let so = encode_to_vec(&minimal_record(), WireFormat::SingleObject).unwrap();
    assert_eq!(decoder.decode(&so).await.unwrap(), minimal_record());
}

#[tokio::test]
async fn a_newer_writer_schema_from_the_registry_is_resolved() {
    let (url, _fake) = start().await;
    let client = Arc::new(SchemaRegistryClient::new(&url).unwrap());
    let mut newer: Value =
        serde_json::from_str(callsync_schemas::schema::CALL_RECORD_AVSC).unwrap();
    newer["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "sentiment", "type": ["null", "string"], "default": null}));
    let newer = newer.to_string();
    let id = client.register("calls-value", &newer).await.unwrap();

    let writer = apache_avro::Schema::parse_str(&newer).unwrap();
    let apache_avro::types::Value::Record(mut fields) =
        callsync_schemas::AvroRecord::to_avro_value(&full_record()).unwrap()
    else {
        unreachable!()
    };
    fields.push((
        "sentiment".into(),
        apache_avro::types::Value::Union(
            1,
            Box::new(apache_avro::types::Value::String("ok".into())),
        ),
    ));
    let mut bytes = vec![0];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend(
        apache_avro::to_avro_datum(&writer, apache_avro::types::Value::Record(fields)).unwrap(),
    );

    let decoder = RegistryDecoder::<CallRecord>::new(Some(Arc::new(
        SchemaRegistryClient::new(&url).unwrap(),
    )));
    assert_eq!(decoder.decode(&bytes).await.unwrap(), full_record());
}

#[tokio::test]
async fn errors_name_url_subject_and_status() {
    let (url, fake) = start().await;
    let client = SchemaRegistryClient::new(&url).unwrap();

    let e = client
        .register("locked-value", "\"string\"")
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("POST {url}/subjects/locked-value/versions")),
        "{msg}"
    );
    assert!(
        msg.contains("(subject locked-value)") && msg.contains("HTTP 409"),
        "{msg}"
    );
    assert!(msg.contains("incompatible with an earlier schema"), "{msg}");

    let e = client.schema_by_id(77).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("GET {url}/schemas/ids/77"))
            && msg.contains("HTTP 404")
            && msg.contains("40403"),
        "{msg}"
    );
    // The 404 is remembered briefly.
    let _ = client.schema_by_id(77).await.unwrap_err();
    assert_eq!(fake.gets.load(Ordering::SeqCst), 1);

    let decoder = RegistryDecoder::<CallRecord>::new(Some(Arc::new(client)));
    let e = decoder.decode(&[0, 0, 0, 0, 77, 0]).await.unwrap_err();
    assert!(matches!(e, RegistryDecodeError::Registry { .. }), "{e}");
    assert!(!e.is_transient());

    // Without a registry an unknown id is a plain decode error.
    let offline = RegistryDecoder::<CallRecord>::new(None);
    let e = offline.decode(&[0, 0, 0, 0, 77, 0]).await.unwrap_err();
    assert!(
        matches!(
            e,
            RegistryDecodeError::Decode(DecodeError::UnknownSchemaId { schema_id: 77, .. })
        ),
        "{e}"
    );
}

#[tokio::test]
async fn unreachable_registry_is_transient_and_credentials_stay_out_of_messages() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client =
        SchemaRegistryClient::new(&format!("http://key:s3cret@127.0.0.1:{port}/prefix/")).unwrap();
    assert!(!format!("{client:?}").contains("s3cret"));
    let decoder = RegistryDecoder::<CallRecord>::new(Some(Arc::new(client)));
    let e = decoder.decode(&[0, 0, 0, 0, 9, 0]).await.unwrap_err();
    let msg = e.to_string();
    assert!(e.is_transient(), "{msg}");
    assert!(
        msg.contains(&format!("GET http://127.0.0.1:{port}/prefix/schemas/ids/9")),
        "{msg}"
    );
    assert!(!msg.contains("s3cret"), "{msg}");

    assert!(matches!(
        SchemaRegistryClient::new("not a url"),
        Err(RegistryError::BadUrl { .. })
    ));
    assert!(matches!(
        SchemaRegistryClient::new("ftp://x"),
        Err(RegistryError::BadUrl { .. })
    ));
}
