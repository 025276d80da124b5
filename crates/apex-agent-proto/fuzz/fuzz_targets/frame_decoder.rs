//! Feeds arbitrary bytes, in arbitrary chunks, into `FrameDecoder`, then decodes every frame.
//!
//! Run: `cargo +nightly fuzz run frame_decoder` from crates/apex-agent-proto.
#![no_main]

use apex_agent_proto::{decode_message, frame, Call, Event, FrameDecoder, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks a chunk size so split points get exercised too.
    let (chunk, data) = match data.split_first() {
        Some((&c, rest)) => (usize::from(c).max(1), rest),
        None => return,
    };
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut failed = false;
    for piece in data.chunks(chunk) {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            break;
        }
    }
    if !failed {
        let _ = decoder.finish();
    }

    // The blocking reader must agree with the incremental decoder on the frames it yields.
    let mut reader = data;
    for f in &frames {
        let got = frame::read_frame(&mut reader).expect("decoder accepted this frame");
        assert_eq!(got.as_deref(), Some(f.as_slice()));
    }

    for f in frames {
        assert!(!f.is_empty() && f.len() <= frame::MAX_FRAME);
        let Ok(msg) = decode_message(&f) else {
            continue;
        };
        // Whatever decodes must re-encode into something that decodes as the same kind of
        // message. (Not full equality: params may hold floats, whose text round trip is not
        // exact without serde_json's `float_roundtrip`.)
        let again = decode_message(&msg.to_vec()).expect("re-encoded message decodes");
        assert_eq!(std::mem::discriminant(&again), std::mem::discriminant(&msg));
        match msg {
            Message::Request(r) => {
                if let Ok(call) = Call::parse(&r.method, r.params) {
                    let bytes = apex_agent_proto::encode_request(r.id, &call);
                    let Ok(Message::Request(r2)) = decode_message(&bytes) else {
                        panic!("encoded call does not decode")
                    };
                    assert_eq!(Call::parse(&r2.method, r2.params).ok(), Some(call));
                }
            }
            Message::Notification(n) => {
                let _ = Event::parse(&n.method, n.params);
            }
            Message::Response(r) => {
                let _ = r.into_result::<serde_json::Value>();
            }
        }
    }
});
