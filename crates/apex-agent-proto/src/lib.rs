//! The Apex host<->guest protocol, shared by the host runtime and the guest init (`apex-init`).
//!
//! - Transport: a vsock stream; the host connects to the guest's control port
//!   [`CONTROL_PORT`]. Process stdio uses separate connections that the guest opens to the host
//!   (see [`api`]).
//! - [`frame`]: 4-byte big-endian length + one UTF-8 JSON message, at most [`frame::MAX_FRAME`].
//! - [`rpc`]: JSON-RPC 2.0 envelopes ([`Message`]) and error codes.
//! - [`api`]: typed methods ([`Call`]), results and guest events ([`Event`]).
//! - [`forward`]: published-port forwarding on [`FORWARD_PORT`] (a header line, then a TCP
//!   byte stream or length-prefixed UDP datagrams).
//!
//! Typical host side:
//! ```
//! use apex_agent_proto::{api::Call, decode_message, encode_request, frame, Message};
//! # let mut stream = std::io::Cursor::new(Vec::new());
//! frame::write_frame(&mut stream, &encode_request(1, &Call::Ping))?;
//! # stream.set_position(0);
//! let payload = frame::read_frame(&mut stream)?.expect("peer closed");
//! assert!(matches!(decode_message(&payload)?, Message::Request(_)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The crate has no unsafe code and depends only on serde, serde_json and thiserror (plus
//! tokio's I/O traits with the `async` feature), so it builds for the static musl guest.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
mod base64;
pub mod forward;
pub mod frame;
pub mod rpc;

use std::io::{Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use api::{Call, Event};
pub use frame::{FrameDecoder, FrameError, MAX_FRAME};
pub use rpc::{Message, Notification, Request, Response, RpcError};

/// Protocol version reported by `ping`; bump on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;
/// vsock port the guest agent listens on for the control connection.
pub const CONTROL_PORT: u32 = 1024;
/// vsock port the guest agent listens on for published-port forwarding (see [`forward`]).
pub const FORWARD_PORT: u32 = 1025;
/// Host vsock port the guest agent connects to once it listens on [`CONTROL_PORT`]: the
/// host's signal that the guest is ready, so that it sends nothing to a guest that is
/// still booting.
pub const READY_PORT: u32 = 1023;
/// vsock CID of the host, which the guest connects to for process stdio.
pub const HOST_CID: u32 = 2;

/// Errors from decoding messages and typed calls, or from a remote error response.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// Reading or writing a frame failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The frame payload is not UTF-8.
    #[error("message is not valid UTF-8: {0}")]
    Utf8(#[from] std::str::Utf8Error),
    /// The frame payload is not valid JSON.
    #[error("message is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// Valid JSON, but not a valid JSON-RPC 2.0 message.
    #[error("invalid JSON-RPC message: {0}")]
    InvalidMessage(String),
    /// The method (or event) name is not known.
    #[error("unknown method {0:?}")]
    MethodNotFound(String),
    /// The params do not match the method.
    #[error("invalid params for {method:?}: {source}")]
    InvalidParams {
        /// The method whose params were rejected.
        method: String,
        /// What serde rejected.
        #[source]
        source: serde_json::Error,
    },
    /// A success result did not have the expected shape.
    #[error("unexpected result shape: {0}")]
    InvalidResult(#[source] serde_json::Error),
    /// The peer answered with an error response.
    #[error("remote error: {0}")]
    Remote(RpcError),
}

impl ProtoError {
    /// The JSON-RPC error a server should answer with for this decoding failure.
    pub fn to_rpc_error(&self) -> RpcError {
        use rpc::codes;
        let code = match self {
            ProtoError::Utf8(_) | ProtoError::Json(_) => codes::PARSE_ERROR,
            ProtoError::InvalidMessage(_) => codes::INVALID_REQUEST,
            ProtoError::MethodNotFound(_) => codes::METHOD_NOT_FOUND,
            ProtoError::InvalidParams { .. } => codes::INVALID_PARAMS,
            ProtoError::Remote(e) => return e.clone(),
            ProtoError::Frame(_) | ProtoError::InvalidResult(_) => codes::INTERNAL_ERROR,
        };
        RpcError::new(code, self.to_string())
    }
}

impl Response {
    /// Converts into the typed result, or [`ProtoError::Remote`] for an error response.
    pub fn into_result<T: DeserializeOwned>(self) -> Result<T, ProtoError> {
        match self.outcome {
            Ok(v) => T::deserialize(v).map_err(ProtoError::InvalidResult),
            Err(e) => Err(ProtoError::Remote(e)),
        }
    }
}

/// Encodes a typed call as a JSON-RPC request (a frame payload, without the length header).
pub fn encode_request(id: u64, call: &Call) -> Vec<u8> {
    // Serialized directly (not via `Value`) so params keep their declared field order.
    #[derive(Serialize)]
    struct Wire<'a> {
        jsonrpc: &'static str,
        id: u64,
        #[serde(flatten)]
        call: &'a Call,
    }
    serde_json::to_vec(&Wire {
        jsonrpc: rpc::JSONRPC_VERSION,
        id,
        call,
    })
    .expect("calls always serialize")
}

/// Encodes a success response with a typed result (a frame payload).
///
/// # Panics
/// If `result` cannot be represented as JSON (e.g. a map with non-string keys); the
/// protocol's result types always can.
pub fn encode_response<T: Serialize + ?Sized>(id: u64, result: &T) -> Vec<u8> {
    let result = serde_json::to_value(result).expect("result must serialize to JSON");
    Message::Response(Response::ok(id, result)).to_vec()
}

/// Encodes an error response (a frame payload). `id` is `None` only when the request's id
/// could not be read.
pub fn encode_error(id: Option<u64>, error: RpcError) -> Vec<u8> {
    Message::Response(Response::err(id, error)).to_vec()
}

/// Encodes a guest event as a JSON-RPC notification (a frame payload).
pub fn encode_event(event: &Event) -> Vec<u8> {
    #[derive(Serialize)]
    struct Wire<'a> {
        jsonrpc: &'static str,
        #[serde(flatten)]
        event: &'a Event,
    }
    serde_json::to_vec(&Wire {
        jsonrpc: rpc::JSONRPC_VERSION,
        event,
    })
    .expect("events always serialize")
}

/// Decodes one frame payload into a [`Message`], distinguishing invalid UTF-8, invalid JSON
/// and invalid JSON-RPC envelopes. Method names and params are checked later, by
/// [`Call::parse`] / [`Event::parse`].
pub fn decode_message(payload: &[u8]) -> Result<Message, ProtoError> {
    let text = std::str::from_utf8(payload)?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(ProtoError::Json)?;
    Message::from_value(value).map_err(ProtoError::InvalidMessage)
}

/// Reads one framed message; `Ok(None)` on clean EOF.
pub fn read_message<R: Read + ?Sized>(r: &mut R) -> Result<Option<Message>, ProtoError> {
    match frame::read_frame(r)? {
        Some(payload) => decode_message(&payload).map(Some),
        None => Ok(None),
    }
}

/// Writes one framed message and flushes.
pub fn write_message<W: Write + ?Sized>(w: &mut W, msg: &Message) -> Result<(), ProtoError> {
    Ok(frame::write_frame(w, &msg.to_vec())?)
}

/// Async [`read_message`].
#[cfg(feature = "async")]
pub async fn read_message_async<R: tokio::io::AsyncRead + Unpin + ?Sized>(
    r: &mut R,
) -> Result<Option<Message>, ProtoError> {
    match frame::read_frame_async(r).await? {
        Some(payload) => decode_message(&payload).map(Some),
        None => Ok(None),
    }
}

/// Async [`write_message`].
#[cfg(feature = "async")]
pub async fn write_message_async<W: tokio::io::AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    msg: &Message,
) -> Result<(), ProtoError> {
    Ok(frame::write_frame_async(w, &msg.to_vec()).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::{ExitStatus, ProcessRef};
    use rpc::codes;

    #[test]
    fn decode_errors_are_classified() {
        let cases: [(&[u8], i32, &str); 6] = [
            (b"\xff\xfe{}", codes::PARSE_ERROR, "UTF-8"),
            (
                b"{\"jsonrpc\":\"2.0\",\"method\":\"p\xc3\x28\"}",
                codes::PARSE_ERROR,
                "UTF-8",
            ),
            (b"{\"jsonrpc\":", codes::PARSE_ERROR, "JSON"),
            (b"{} trailing", codes::PARSE_ERROR, "JSON"),
            (
                b"{\"id\":1,\"method\":\"ping\"}",
                codes::INVALID_REQUEST,
                "jsonrpc",
            ),
            (b"42", codes::INVALID_REQUEST, "object"),
        ];
        for (bytes, code, needle) in cases {
            let e = decode_message(bytes).unwrap_err();
            assert_eq!(e.to_rpc_error().code, code, "{e}");
            assert!(e.to_string().contains(needle), "{e:?} lacks {needle}");
        }
        assert!(matches!(decode_message(b"\xff"), Err(ProtoError::Utf8(_))));
    }

    #[test]
    fn deeply_nested_json_is_rejected_not_overflowed() {
        let mut s = String::from(r#"{"jsonrpc":"2.0","method":"x","params":"#);
        s.push_str(&"[".repeat(100_000));
        assert!(matches!(
            decode_message(s.as_bytes()),
            Err(ProtoError::Json(_))
        ));
    }

    #[test]
    fn framed_conversation_over_a_stream() {
        let mut wire = Vec::new();
        let call = Call::WaitProcess(ProcessRef { id: "init".into() });
        frame::write_frame(&mut wire, &encode_request(1, &call)).unwrap();
        frame::write_frame(&mut wire, &encode_request(2, &Call::Sync)).unwrap();
        write_message(
            &mut wire,
            &Message::Response(Response::ok(1, serde_json::json!({"exit_code": 3}))),
        )
        .unwrap();
        frame::write_frame(
            &mut wire,
            &encode_error(Some(2), RpcError::new(codes::NOT_FOUND, "no such process")),
        )
        .unwrap();

        let mut r = std::io::Cursor::new(wire);
        let Some(Message::Request(req)) = read_message(&mut r).unwrap() else {
            panic!()
        };
        assert_eq!(Call::parse(&req.method, req.params).unwrap(), call);
        assert!(matches!(
            read_message(&mut r).unwrap(),
            Some(Message::Request(_))
        ));
        let Some(Message::Response(resp)) = read_message(&mut r).unwrap() else {
            panic!()
        };
        assert_eq!(
            resp.into_result::<ExitStatus>().unwrap(),
            ExitStatus {
                exit_code: 3,
                signal: None
            }
        );
        let Some(Message::Response(resp)) = read_message(&mut r).unwrap() else {
            panic!()
        };
        match resp.into_result::<api::Ack>() {
            Err(ProtoError::Remote(e)) => assert_eq!(e.code, codes::NOT_FOUND),
            other => panic!("{other:?}"),
        }
        assert!(read_message(&mut r).unwrap().is_none());
    }

    #[test]
    fn result_shape_mismatch_is_reported() {
        let resp = Response::ok(1, serde_json::json!({"pid": "x"}));
        let e = resp.into_result::<api::ProcessStarted>().unwrap_err();
        assert!(matches!(e, ProtoError::InvalidResult(_)));
        assert_eq!(e.to_rpc_error().code, codes::INTERNAL_ERROR);
    }

    #[test]
    fn frame_errors_surface_through_read_message() {
        let mut r: &[u8] = &[0xFF, 0xFF, 0xFF, 0xFF];
        assert!(matches!(
            read_message(&mut r),
            Err(ProtoError::Frame(FrameError::TooLarge { .. }))
        ));
        let mut r: &[u8] = &[0, 0, 0, 2, 0xC3, 0x28];
        assert!(matches!(read_message(&mut r), Err(ProtoError::Utf8(_))));
    }

    #[cfg(feature = "async")]
    #[tokio::test]
    async fn async_messages() {
        let (mut a, mut b) = tokio::io::duplex(16);
        let msg = Message::Request(Request {
            id: 5,
            method: "ping".into(),
            params: serde_json::Value::Null,
        });
        let sent = msg.clone();
        let t = tokio::spawn(async move { write_message_async(&mut a, &sent).await.unwrap() });
        assert_eq!(read_message_async(&mut b).await.unwrap(), Some(msg));
        t.await.unwrap();
        assert_eq!(read_message_async(&mut b).await.unwrap(), None);
    }
}
