//! JSON-RPC 2.0 envelopes: [`Request`], [`Response`], [`Notification`] and the [`Message`]
//! sum type.
//!
//! Restrictions versus full JSON-RPC 2.0, chosen to keep both peers simple:
//! request ids are unsigned integers (`u64`), and batches (JSON arrays) are not supported.
//! `params` must be an object or array when present. Unknown top-level members are ignored.
//!
//! [`Message`] is decoded by inspecting member *presence* (not by trying each shape in turn),
//! so the classification is unambiguous:
//! - `method` + `id` → [`Request`]; `method` without `id` → [`Notification`]
//!   (`"id": null` with a method is rejected rather than silently treated as a notification);
//! - no `method`, `id` present and exactly one of `result` / `error` → [`Response`]
//!   (`"result": null` is a valid result; `"id": null` is allowed on error responses only).

use serde::de::{self, DeserializeOwned, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The only supported `jsonrpc` version string.
pub const JSONRPC_VERSION: &str = "2.0";

/// Standard JSON-RPC error codes and Apex application codes (`-32000..=-32099` range).
pub mod codes {
    /// Invalid JSON (or invalid UTF-8) was received.
    pub const PARSE_ERROR: i32 = -32700;
    /// The JSON is not a valid request/response/notification object.
    pub const INVALID_REQUEST: i32 = -32600;
    /// The method does not exist.
    pub const METHOD_NOT_FOUND: i32 = -32601;
    /// Invalid method parameters.
    pub const INVALID_PARAMS: i32 = -32602;
    /// Internal error in the peer.
    pub const INTERNAL_ERROR: i32 = -32603;

    /// A referenced object (process id, path, interface) does not exist.
    pub const NOT_FOUND: i32 = -32001;
    /// The container process could not be started; `data` is
    /// [`ProcessStartFailed`](crate::rpc::ProcessStartFailed) (errno and the exit code the host
    /// should report, e.g. 127 for "command not found").
    pub const PROCESS_START_FAILED: i32 = -32002;
    /// An object with that id already exists (e.g. duplicate process id).
    pub const ALREADY_EXISTS: i32 = -32003;
    /// The call is not valid in the object's current state (e.g. `start_process` twice).
    pub const INVALID_STATE: i32 = -32004;
    /// A system call failed; `data` is [`OsErrorData`](crate::rpc::OsErrorData).
    pub const OS_ERROR: i32 = -32005;
}

/// Linux errno values used by the protocol (kept here so the crate needs no libc).
pub mod errno {
    /// Operation not permitted.
    pub const EPERM: i32 = 1;
    /// No such file or directory.
    pub const ENOENT: i32 = 2;
    /// Exec format error.
    pub const ENOEXEC: i32 = 8;
    /// Permission denied.
    pub const EACCES: i32 = 13;
    /// Not a directory.
    pub const ENOTDIR: i32 = 20;
    /// Is a directory.
    pub const EISDIR: i32 = 21;
}

/// A call expecting a [`Response`] with the same `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Correlates the response; unique among the sender's in-flight requests.
    pub id: u64,
    /// Method name, e.g. `"mount"`.
    pub method: String,
    /// Object or array parameters; `Value::Null` means "omitted".
    pub params: Value,
}

/// A one-way message (no `id`, no response); the guest uses these for events.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Event name, e.g. `"process_exited"`.
    pub method: String,
    /// Object or array parameters; `Value::Null` means "omitted".
    pub params: Value,
}

/// The reply to a [`Request`].
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The request's id; `None` (JSON `null`) only for errors where the id was unreadable.
    pub id: Option<u64>,
    /// `Ok(result)` or `Err(error)`; serialized as the `result` or `error` member.
    pub outcome: Result<Value, RpcError>,
}

/// The `error` member of a failed [`Response`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    /// See [`codes`].
    pub code: i32,
    /// Human-readable description.
    pub message: String,
    /// Structured details, e.g. [`ProcessStartFailed`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// `data` of a [`codes::PROCESS_START_FAILED`] error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStartFailed {
    /// The failing errno (from execve, chdir, setuid, ...), if a syscall failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// The exit code the host should report for the container (Docker convention:
    /// 127 command not found, 126 found but not executable).
    pub exit_code: i32,
}

impl ProcessStartFailed {
    /// Maps an exec-time errno to the Docker-compatible exit code:
    /// `ENOENT`/`ENOTDIR` → 127, anything else → 126.
    pub fn from_errno(errno: i32) -> Self {
        let exit_code = match errno {
            errno::ENOENT | errno::ENOTDIR => 127,
            _ => 126,
        };
        Self {
            errno: Some(errno),
            exit_code,
        }
    }
}

/// `data` of a [`codes::OS_ERROR`] error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsErrorData {
    /// The failing errno.
    pub errno: i32,
}

impl RpcError {
    /// Creates an error without `data`.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// Attaches `data` (any serializable value).
    pub fn with_data(mut self, data: impl Serialize) -> Self {
        self.data = Some(serde_json::to_value(data).expect("error data must serialize to JSON"));
        self
    }

    /// `METHOD_NOT_FOUND` for `method`.
    pub fn method_not_found(method: &str) -> Self {
        Self::new(
            codes::METHOD_NOT_FOUND,
            format!("method not found: {method}"),
        )
    }

    /// `PROCESS_START_FAILED` carrying [`ProcessStartFailed::from_errno`] as data.
    pub fn process_start_failed(errno: i32, message: impl Into<String>) -> Self {
        Self::new(codes::PROCESS_START_FAILED, message)
            .with_data(ProcessStartFailed::from_errno(errno))
    }

    /// `OS_ERROR` carrying [`OsErrorData`].
    pub fn os_error(errno: i32, message: impl Into<String>) -> Self {
        Self::new(codes::OS_ERROR, message).with_data(OsErrorData { errno })
    }

    /// Decodes `data` as `T`; `None` if absent or of a different shape.
    pub fn data_as<T: DeserializeOwned>(&self) -> Option<T> {
        self.data.as_ref().and_then(|d| T::deserialize(d).ok())
    }
}

impl Response {
    /// A success response.
    pub fn ok(id: u64, result: Value) -> Self {
        Self {
            id: Some(id),
            outcome: Ok(result),
        }
    }

    /// An error response.
    pub fn err(id: Option<u64>, error: RpcError) -> Self {
        Self {
            id,
            outcome: Err(error),
        }
    }
}

/// Any decoded JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A call expecting a response.
    Request(Request),
    /// A reply to a call.
    Response(Response),
    /// A one-way event.
    Notification(Notification),
}

impl From<Request> for Message {
    fn from(r: Request) -> Self {
        Self::Request(r)
    }
}
impl From<Response> for Message {
    fn from(r: Response) -> Self {
        Self::Response(r)
    }
}
impl From<Notification> for Message {
    fn from(n: Notification) -> Self {
        Self::Notification(n)
    }
}

impl Message {
    /// Serializes to compact JSON bytes (a frame payload).
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("JSON-RPC message serialization cannot fail")
    }

    /// Classifies a parsed JSON object; the `Err` string explains an invalid envelope.
    pub fn from_value(value: Value) -> Result<Self, String> {
        let Value::Object(mut obj) = value else {
            return Err(match value {
                Value::Array(_) => "batch requests are not supported".to_owned(),
                other => format!("expected a JSON object, got {}", json_kind(&other)),
            });
        };
        match obj.remove("jsonrpc") {
            Some(Value::String(v)) if v == JSONRPC_VERSION => {}
            Some(v) => return Err(format!("unsupported jsonrpc version {v}, expected \"2.0\"")),
            None => return Err("missing \"jsonrpc\": \"2.0\"".to_owned()),
        }
        let id = obj.remove("id");
        let method = obj.remove("method");
        let result = obj.remove("result");
        let error = obj.remove("error");

        if let Some(method) = method {
            let Value::String(method) = method else {
                return Err(format!(
                    "\"method\" must be a string, got {}",
                    json_kind(&method)
                ));
            };
            if result.is_some() || error.is_some() {
                return Err("message has both \"method\" and \"result\"/\"error\"".to_owned());
            }
            let params = take_params(&mut obj)?;
            return Ok(match id {
                None => Message::Notification(Notification { method, params }),
                Some(Value::Null) => {
                    return Err("request \"id\" is null (omit \"id\" for a notification)".to_owned())
                }
                Some(id) => Message::Request(Request {
                    id: parse_id(&id)?,
                    method,
                    params,
                }),
            });
        }

        let Some(id) = id else {
            return Err(if result.is_some() || error.is_some() {
                "response has no \"id\"".to_owned()
            } else {
                "message has neither \"method\" nor \"result\"/\"error\"".to_owned()
            });
        };
        let id = match id {
            Value::Null => None,
            id => Some(parse_id(&id)?),
        };
        let outcome = match (result, error) {
            (Some(result), None) => Ok(result),
            (None, Some(error)) => Err(RpcError::deserialize(error)
                .map_err(|e| format!("invalid \"error\" object: {e}"))?),
            (Some(_), Some(_)) => {
                return Err("response has both \"result\" and \"error\"".to_owned())
            }
            (None, None) => return Err("response has neither \"result\" nor \"error\"".to_owned()),
        };
        if id.is_none() && outcome.is_ok() {
            return Err("success response has a null \"id\"".to_owned());
        }
        Ok(Message::Response(Response { id, outcome }))
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_id(id: &Value) -> Result<u64, String> {
    id.as_u64()
        .ok_or_else(|| format!("\"id\" must be an unsigned integer, got {id}"))
}

fn take_params(obj: &mut Map<String, Value>) -> Result<Value, String> {
    match obj.remove("params") {
        None => Ok(Value::Null),
        Some(p @ (Value::Object(_) | Value::Array(_))) => Ok(p),
        Some(p) => Err(format!(
            "\"params\" must be an object or array, got {}",
            json_kind(&p)
        )),
    }
}

impl Serialize for Request {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("jsonrpc", JSONRPC_VERSION)?;
        m.serialize_entry("id", &self.id)?;
        m.serialize_entry("method", &self.method)?;
        if !self.params.is_null() {
            m.serialize_entry("params", &self.params)?;
        }
        m.end()
    }
}

impl Serialize for Notification {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("jsonrpc", JSONRPC_VERSION)?;
        m.serialize_entry("method", &self.method)?;
        if !self.params.is_null() {
            m.serialize_entry("params", &self.params)?;
        }
        m.end()
    }
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("jsonrpc", JSONRPC_VERSION)?;
        m.serialize_entry("id", &self.id)?;
        match &self.outcome {
            Ok(result) => m.serialize_entry("result", result)?,
            Err(error) => m.serialize_entry("error", error)?,
        }
        m.end()
    }
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Message::Request(r) => r.serialize(s),
            Message::Response(r) => r.serialize(s),
            Message::Notification(n) => n.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Message::from_value(Value::deserialize(d)?).map_err(de::Error::custom)
    }
}

macro_rules! deserialize_variant {
    ($ty:ident, $what:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                match Message::deserialize(d)? {
                    Message::$ty(v) => Ok(v),
                    _ => Err(de::Error::custom(concat!("expected a JSON-RPC ", $what))),
                }
            }
        }
    };
}
deserialize_variant!(Request, "request");
deserialize_variant!(Response, "response");
deserialize_variant!(Notification, "notification");

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn classify(v: Value) -> Result<Message, String> {
        Message::from_value(v)
    }

    #[test]
    fn envelopes_round_trip() {
        let msgs: Vec<Message> = vec![
            Request {
                id: 7,
                method: "mkdir".into(),
                params: json!({"path": "/a", "mode": 493}),
            }
            .into(),
            Request {
                id: u64::MAX,
                method: "ping".into(),
                params: Value::Null,
            }
            .into(),
            Notification {
                method: "oom".into(),
                params: json!({"id": "c1"}),
            }
            .into(),
            Notification {
                method: "tick".into(),
                params: json!([1, 2]),
            }
            .into(),
            Response::ok(7, json!({"x": 1})).into(),
            Response::ok(8, Value::Null).into(),
            Response::err(Some(9), RpcError::method_not_found("nope")).into(),
            Response::err(None, RpcError::new(codes::PARSE_ERROR, "bad json")).into(),
            Response::err(
                Some(1),
                RpcError::process_start_failed(errno::ENOENT, "no sh"),
            )
            .into(),
        ];
        for m in msgs {
            let bytes = m.to_vec();
            let back: Message = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(back, m, "{}", String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn wire_shape_is_exact() {
        let r = Request {
            id: 1,
            method: "ping".into(),
            params: Value::Null,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#
        );
        let e = Response::err(None, RpcError::new(-32700, "x"));
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}"#
        );
        let ok = Response::ok(3, Value::Null);
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"jsonrpc":"2.0","id":3,"result":null}"#
        );
    }

    #[test]
    fn ambiguous_cases() {
        // method + id → request; method without id → notification.
        assert!(matches!(
            classify(json!({"jsonrpc":"2.0","id":0,"method":"m"})),
            Ok(Message::Request(Request { id: 0, .. }))
        ));
        assert!(matches!(
            classify(json!({"jsonrpc":"2.0","method":"m","params":{}})),
            Ok(Message::Notification(_))
        ));
        // null result is a valid success response, not "missing result".
        assert_eq!(
            classify(json!({"jsonrpc":"2.0","id":4,"result":null})).unwrap(),
            Message::Response(Response::ok(4, Value::Null))
        );
        // A result that itself looks like a request is still a response.
        let m = classify(json!({"jsonrpc":"2.0","id":5,"result":{"method":"x","id":1}})).unwrap();
        assert!(matches!(
            m,
            Message::Response(Response {
                id: Some(5),
                outcome: Ok(_)
            })
        ));
        // Params that contain result/error keys do not confuse classification.
        let m =
            classify(json!({"jsonrpc":"2.0","id":6,"method":"m","params":{"result":1,"error":2}}))
                .unwrap();
        assert!(matches!(m, Message::Request(_)));
        // Unknown extra members are ignored.
        assert!(classify(json!({"jsonrpc":"2.0","id":1,"result":1,"extra":true})).is_ok());

        let bad = [
            (json!({"jsonrpc":"2.0","id":null,"method":"m"}), "null"),
            (
                json!({"jsonrpc":"2.0","id":1,"method":"m","result":1}),
                "both",
            ),
            (
                json!({"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":"m"}}),
                "both",
            ),
            (json!({"jsonrpc":"2.0","id":1}), "neither"),
            (json!({"jsonrpc":"2.0","result":1}), "no \"id\""),
            (json!({"jsonrpc":"2.0","id":null,"result":1}), "null \"id\""),
            (json!({"jsonrpc":"2.0"}), "neither"),
            (json!({"jsonrpc":"1.0","id":1,"method":"m"}), "version"),
            (json!({"id":1,"method":"m"}), "jsonrpc"),
            (json!({"jsonrpc":"2.0","id":-1,"method":"m"}), "unsigned"),
            (json!({"jsonrpc":"2.0","id":"abc","method":"m"}), "unsigned"),
            (json!({"jsonrpc":"2.0","id":1.5,"method":"m"}), "unsigned"),
            (json!({"jsonrpc":"2.0","id":1,"method":3}), "string"),
            (
                json!({"jsonrpc":"2.0","id":1,"method":"m","params":3}),
                "params",
            ),
            (
                json!({"jsonrpc":"2.0","id":1,"error":{"code":"x"}}),
                "error",
            ),
            (json!([{"jsonrpc":"2.0","id":1,"method":"m"}]), "batch"),
            (json!("hello"), "object"),
        ];
        for (v, needle) in bad {
            let err = classify(v.clone()).expect_err(&v.to_string());
            assert!(err.contains(needle), "{v}: error {err:?} lacks {needle:?}");
        }
    }

    #[test]
    fn typed_envelope_deserialize_checks_kind() {
        let req: Request =
            serde_json::from_str(r#"{"jsonrpc":"2.0","id":2,"method":"sync"}"#).unwrap();
        assert_eq!(req.method, "sync");
        let err = serde_json::from_str::<Response>(r#"{"jsonrpc":"2.0","id":2,"method":"sync"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("expected a JSON-RPC response"));
        assert!(
            serde_json::from_str::<Notification>(r#"{"jsonrpc":"2.0","method":"oom"}"#).is_ok()
        );
    }

    #[test]
    fn error_helpers_and_data() {
        let e = RpcError::process_start_failed(errno::ENOENT, "exec: \"nope\": not found");
        assert_eq!(e.code, codes::PROCESS_START_FAILED);
        let d: ProcessStartFailed = e.data_as().unwrap();
        assert_eq!(
            d,
            ProcessStartFailed {
                errno: Some(2),
                exit_code: 127
            }
        );
        assert_eq!(ProcessStartFailed::from_errno(errno::EACCES).exit_code, 126);
        assert_eq!(
            ProcessStartFailed::from_errno(errno::ENOTDIR).exit_code,
            127
        );
        let e = RpcError::os_error(errno::EPERM, "mount failed");
        assert_eq!(e.data_as::<OsErrorData>(), Some(OsErrorData { errno: 1 }));
        assert_eq!(e.data_as::<ProcessStartFailed>(), None);
        assert_eq!(e.to_string(), "mount failed (code -32005)");
        assert_eq!(RpcError::new(1, "x").data_as::<OsErrorData>(), None);
    }
}
