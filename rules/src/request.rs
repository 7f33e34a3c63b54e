//! What a connection brings to bucket resolution: its verified token, its client parameters and,
//! for sync streams, its subscriptions.

use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};

use crate::functions::{Json, parse_json};
use crate::value::SqliteValue;

/// A request value's JSON text, parsed on first use and kept for every later `->`/`->>` on it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ParsedOnce(OnceLock<Option<Json>>);

impl ParsedOnce {
    pub(crate) fn get(&self, text: &str) -> Option<&Json> {
        self.0.get_or_init(|| parse_json(text).ok()).as_ref()
    }
}

/// The authenticated request values of one connection (SYNC_RULES.md §5.4).
#[derive(Debug, Clone)]
pub struct RequestParameters {
    pub(crate) user_id: SqliteValue,
    pub(crate) raw_token_payload: Arc<str>,
    pub(crate) token_payload: Map<String, Value>,
    /// `token_parameters.*`: the JWT's `parameters` claim, with `user_id` set to `sub`.
    pub(crate) token_parameters: Map<String, Value>,
    pub(crate) raw_client_parameters: Arc<str>,
    pub(crate) client_parameters: Map<String, Value>,
    pub(crate) parsed_token_payload: ParsedOnce,
    pub(crate) parsed_client_parameters: ParsedOnce,
}

impl RequestParameters {
    /// `token_payload` is the verified JWT payload; `client_parameters` the client's global parameters
    /// (a JSON object; anything else counts as no parameters).
    pub fn new(token_payload: &Value, client_parameters: &Value) -> Self {
        let token_payload = token_payload.as_object().cloned().unwrap_or_default();
        let client_parameters = client_parameters.as_object().cloned().unwrap_or_default();
        let sub = token_payload.get("sub").cloned().unwrap_or(Value::Null);
        let mut token_parameters = match token_payload.get("parameters") {
            Some(Value::Object(map)) => map.clone(),
            _ => Map::new(),
        };
        // `sub` takes precedence over an embedded `parameters.user_id`.
        token_parameters.insert("user_id".to_string(), sub.clone());
        RequestParameters {
            user_id: SqliteValue::from_json(&sub),
            raw_token_payload: Arc::from(Value::Object(token_payload.clone()).to_string()),
            token_payload,
            token_parameters,
            raw_client_parameters: Arc::from(Value::Object(client_parameters.clone()).to_string()),
            client_parameters,
            parsed_token_payload: ParsedOnce::default(),
            parsed_client_parameters: ParsedOnce::default(),
        }
    }

    pub fn user_id(&self) -> &SqliteValue {
        &self.user_id
    }
}

/// The parameters of one stream subscription (unauthenticated).
#[derive(Debug, Clone)]
pub struct SubscriptionParameters {
    pub(crate) raw: Arc<str>,
    pub(crate) parsed: Map<String, Value>,
    pub(crate) parsed_json: ParsedOnce,
}

impl SubscriptionParameters {
    pub fn new(parameters: Option<&Value>) -> Self {
        let parsed = parameters.and_then(Value::as_object).cloned().unwrap_or_default();
        SubscriptionParameters {
            raw: Arc::from(Value::Object(parsed.clone()).to_string()),
            parsed,
            parsed_json: ParsedOnce::default(),
        }
    }
}

/// An explicit stream subscription from the sync request.
#[derive(Debug, Clone)]
pub struct StreamSubscription {
    pub stream: String,
    pub parameters: Option<Value>,
    pub override_priority: Option<u8>,
}

/// Everything bucket resolution needs to know about a connection.
#[derive(Debug, Clone)]
pub struct ConnectionRequest {
    pub parameters: RequestParameters,
    /// Whether the client wants `auto_subscribe` streams (default true).
    pub include_defaults: bool,
    pub subscriptions: Vec<StreamSubscription>,
}

impl ConnectionRequest {
    pub fn new(token_payload: &Value, client_parameters: &Value) -> Self {
        ConnectionRequest {
            parameters: RequestParameters::new(token_payload, client_parameters),
            include_defaults: true,
            subscriptions: Vec::new(),
        }
    }
}
