//! Tests of the `:authority` rewrite: on bytes (grpcio's own header blocks, the dynamic
//! table, framing, chunked input) and end to end through tonic on a Unix socket.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// grpcio 1.85.3's first request on a connection to
/// `unix:///tmp/var/lib/kubelet/plugins/csi.iolane.dev/csi.sock` (GetPluginInfo), captured:
/// `:authority` `tmp%2Fvar%2F...%2Fcsi.sock`, added to the dynamic table.
const GRPCIO_FIRST: &str = "40053a706174681e2f6373692e76312e4964656e746974792f476574506c7567696e496e666f400a3a617574686f726974793f746d702532467661722532466c69622532466b7562656c6574253246706c7567696e732532466373692e696f6c616e652e6465762532466373692e736f636b8386400c636f6e74656e742d74797065106170706c69636174696f6e2f677270634002746508747261696c6572734014677270632d6163636570742d656e636f64696e67176964656e746974792c206465666c6174652c20677a6970400c677270632d74696d656f7574023553400a757365722d6167656e7430677270632d707974686f6e2f312e38352e3320677270632d632f35382e302e3020286c696e75783b2063687474703229";
/// Its second request on the same connection (Probe): `:authority` by dynamic index (0xc4).
const GRPCIO_SECOND: &str = "40053a70617468162f6373692e76312e4964656e746974792f50726f6265c48386c3c2c1400c677270632d74696d656f757405353031306dc0";
const GRPCIO_AUTHORITY: &[u8] = b"tmp%2Fvar%2Flib%2Fkubelet%2Fplugins%2Fcsi.iolane.dev%2Fcsi.sock";

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len().to_be_bytes();
    let mut f = len[len.len() - 3..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream_id.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A gRPC message frame with an empty message, ending the stream.
fn empty_message(stream_id: u32) -> Vec<u8> {
    frame(0x0, FLAG_END_STREAM, stream_id, &[0, 0, 0, 0, 0])
}

/// The two grpcio requests as a client sends them after the preface.
fn grpcio_connection() -> Vec<u8> {
    let mut c = PREFACE.to_vec();
    c.extend(frame(0x4, 0, 0, &[]));
    c.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &hex(GRPCIO_FIRST)));
    c.extend(empty_message(1));
    c.extend(frame(
        TYPE_HEADERS,
        FLAG_END_HEADERS,
        3,
        &hex(GRPCIO_SECOND),
    ));
    c.extend(empty_message(3));
    c
}

fn rewrite_in_chunks(input: &[u8], chunk: usize) -> (Vec<u8>, u64) {
    let mut r = Rewriter::default();
    let mut out = Vec::new();
    for c in input.chunks(chunk) {
        r.feed(c, &mut out);
    }
    r.finish(&mut out);
    (out, r.replaced())
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream_id: u32,
    payload: Vec<u8>,
}

fn parse_frames(mut b: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while !b.is_empty() {
        assert!(b.len() >= FRAME_HEADER, "a truncated frame header");
        let len = usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
        assert!(b.len() >= FRAME_HEADER + len, "a truncated frame");
        frames.push(Frame {
            kind: b[3],
            flags: b[4],
            stream_id: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
            payload: b[FRAME_HEADER..FRAME_HEADER + len].to_vec(),
        });
        b = &b[FRAME_HEADER + len..];
    }
    frames
}

/// Every header block in `frames` (CONTINUATIONs joined), decoded in order by one decoder,
/// with its stream; asserts that no frame exceeds MAX_FRAME.
fn header_blocks(frames: &[Frame]) -> Vec<(u32, Fields)> {
    let mut decoder = loona_hpack::Decoder::new();
    let mut blocks = Vec::new();
    let mut block = Vec::new();
    for f in frames {
        assert!(
            f.payload.len() <= MAX_FRAME,
            "a frame of {} bytes",
            f.payload.len()
        );
        if f.kind != TYPE_HEADERS && f.kind != TYPE_CONTINUATION {
            continue;
        }
        block.extend_from_slice(&f.payload);
        if f.flags & FLAG_END_HEADERS != 0 {
            let fields = decoder.decode(&block).expect("the block decodes");
            blocks.push((f.stream_id, fields));
            block.clear();
        }
    }
    blocks
}

fn field<'a>(fields: &'a Fields, name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(n, _)| n == name.as_bytes())
        .map(|(_, v)| v.as_slice())
}

#[test]
fn grpcios_authority_becomes_localhost_in_both_of_its_forms() {
    let input = grpcio_connection();
    let (out, replaced) = rewrite_in_chunks(&input, input.len());
    assert_eq!(replaced, 2);
    assert!(out.starts_with(PREFACE));
    let frames = parse_frames(&out[PREFACE.len()..]);
    let blocks = header_blocks(&frames);
    let mut original = loona_hpack::Decoder::new();
    let want_first = original.decode(&hex(GRPCIO_FIRST)).expect("grpcio's block");
    let want_second = original
        .decode(&hex(GRPCIO_SECOND))
        .expect("grpcio's block");
    assert_eq!(field(&want_second, ":authority"), Some(GRPCIO_AUTHORITY));
    assert_eq!(blocks.len(), 2);
    for ((stream_id, got), (want_stream, want)) in
        blocks.iter().zip([(1, want_first), (3, want_second)])
    {
        assert_eq!(*stream_id, want_stream);
        assert_eq!(got.len(), want.len(), "every field is kept");
        for ((gn, gv), (wn, wv)) in got.iter().zip(&want) {
            assert_eq!(gn, wn);
            if gn == b":authority" {
                assert_eq!(gv, b"localhost");
            } else {
                assert_eq!(gv, wv, "{}", String::from_utf8_lossy(gn));
            }
        }
    }
    // The other frames are there unchanged, in order.
    let kinds: Vec<(u8, u8, u32)> = frames
        .iter()
        .map(|f| (f.kind, f.flags, f.stream_id))
        .collect();
    assert_eq!(
        kinds,
        [
            (0x4, 0, 0),
            (1, FLAG_END_HEADERS, 1),
            (0, 1, 1),
            (1, FLAG_END_HEADERS, 3),
            (0, 1, 3)
        ]
    );
    assert_eq!(frames[2].payload, [0, 0, 0, 0, 0]);
}

#[test]
fn any_chunking_of_the_input_gives_the_same_output() {
    let input = grpcio_connection();
    let (whole, _) = rewrite_in_chunks(&input, input.len());
    for chunk in [1, 2, 7, 9, 24, 100] {
        let (out, replaced) = rewrite_in_chunks(&input, chunk);
        assert_eq!(out, whole, "chunks of {chunk}");
        assert_eq!(replaced, 2);
    }
}

#[test]
fn valid_authorities_and_other_headers_pass_unchanged() {
    let mut encoder = loona_hpack::Encoder::new();
    let mut input = PREFACE.to_vec();
    for (stream, authority) in [
        (1, &b"localhost"[..]),
        (3, b"csi.iolane.dev:443"),
        (5, b"[::1]:9"),
    ] {
        let block = encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":path", b"/csi.v1.Node/NodeGetInfo"),
            (b":authority", authority),
            (b"x-custom", b"value"),
        ]);
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            stream,
            &block,
        ));
    }
    let (out, replaced) = rewrite_in_chunks(&input, 5);
    assert_eq!(replaced, 0);
    let frames = parse_frames(&out[PREFACE.len()..]);
    let blocks = header_blocks(&frames);
    let authorities: Vec<&[u8]> = blocks
        .iter()
        .map(|(_, f)| field(f, ":authority").expect("kept"))
        .collect();
    assert_eq!(
        authorities,
        [&b"localhost"[..], b"csi.iolane.dev:443", b"[::1]:9"]
    );
    assert!(
        frames.iter().all(|f| f.flags & FLAG_END_STREAM != 0),
        "END_STREAM is kept"
    );
}

#[test]
fn the_bare_path_and_an_empty_authority_are_replaced_too() {
    let mut encoder = loona_hpack::Encoder::new();
    let mut input = PREFACE.to_vec();
    for (stream, authority) in [
        (1, &b"/var/lib/kubelet/plugins/csi.iolane.dev/csi.sock"[..]),
        (3, b""),
    ] {
        let block = encoder.encode([(&b":authority"[..], authority)]);
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, stream, &block));
    }
    let (out, replaced) = rewrite_in_chunks(&input, 3);
    assert_eq!(replaced, 2);
    let blocks = header_blocks(&parse_frames(&out[PREFACE.len()..]));
    for (_, fields) in &blocks {
        assert_eq!(field(fields, ":authority"), Some(&b"localhost"[..]));
    }
}

#[test]
fn padding_priority_and_continuation_are_read_and_a_large_block_is_split() {
    let big = vec![b'a'; 40_000];
    let mut encoder = loona_hpack::Encoder::new();
    let block = encoder.encode([
        (&b":authority"[..], GRPCIO_AUTHORITY),
        (b"x-big", big.as_slice()),
    ]);
    // HEADERS with 3 bytes of padding and a priority field, the rest in CONTINUATIONs.
    let (head, rest) = block.split_at(1000);
    let mut payload = vec![3];
    payload.extend_from_slice(&[0, 0, 0, 0, 16]);
    payload.extend_from_slice(head);
    payload.extend_from_slice(&[0, 0, 0]);
    let mut input = PREFACE.to_vec();
    input.extend(frame(
        TYPE_HEADERS,
        FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
        1,
        &payload,
    ));
    let chunks: Vec<&[u8]> = rest.chunks(MAX_FRAME).collect();
    for (i, c) in chunks.iter().enumerate() {
        let flags = if i + 1 == chunks.len() {
            FLAG_END_HEADERS
        } else {
            0
        };
        input.extend(frame(TYPE_CONTINUATION, flags, 1, c));
    }
    let (out, replaced) = rewrite_in_chunks(&input, 4096);
    assert_eq!(replaced, 1);
    let frames = parse_frames(&out[PREFACE.len()..]);
    assert!(frames.len() >= 3, "40 kB in frames of at most 16 kB");
    assert_eq!(frames[0].kind, TYPE_HEADERS);
    assert_eq!(frames[0].flags, FLAG_END_STREAM);
    assert!(
        frames[1..]
            .iter()
            .all(|f| f.kind == TYPE_CONTINUATION && f.stream_id == 1)
    );
    let blocks = header_blocks(&frames);
    assert_eq!(blocks.len(), 1);
    assert_eq!(field(&blocks[0].1, ":authority"), Some(&b"localhost"[..]));
    assert_eq!(field(&blocks[0].1, "x-big"), Some(big.as_slice()));
}

#[test]
fn what_is_not_understood_passes_on_unchanged() {
    // Not HTTP/2 at all.
    let (out, _) = rewrite_in_chunks(b"GET / HTTP/1.1\r\n\r\n", 4);
    assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
    // A DATA frame between HEADERS and its CONTINUATION: from there on, as it came.
    let mut input = PREFACE.to_vec();
    let first = frame(TYPE_HEADERS, 0, 1, &hex(GRPCIO_FIRST)[..10]);
    let rest = [
        empty_message(1),
        frame(
            TYPE_CONTINUATION,
            FLAG_END_HEADERS,
            1,
            &hex(GRPCIO_FIRST)[10..],
        ),
    ]
    .concat();
    input.extend(&first);
    input.extend(&rest);
    let (out, replaced) = rewrite_in_chunks(&input, 3);
    assert_eq!(replaced, 0);
    assert_eq!(out, input);
    // A block that does not decode (an index past both tables).
    let mut input = PREFACE.to_vec();
    input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0xff, 0x7f]));
    input.extend(empty_message(1));
    let (out, _) = rewrite_in_chunks(&input, 1);
    assert_eq!(out, input);
    // The client closed inside its second HEADERS frame: the partial frame is passed on
    // as it came, for h2 to see.
    let input = grpcio_connection();
    let cut = &input[..input.len() - empty_message(3).len() - 3];
    let (out, replaced) = rewrite_in_chunks(cut, 11);
    assert_eq!(replaced, 1);
    let partial = FRAME_HEADER + hex(GRPCIO_SECOND).len() - 3;
    assert!(out.ends_with(&cut[cut.len() - partial..]));
}

/// A tonic server with the Identity service on a fresh socket; `fix` chooses whether its
/// connections go through [`incoming`].
async fn identity_server(dir: &std::path::Path, fix: bool) -> std::path::PathBuf {
    let sock = dir.join(if fix { "fixed.sock" } else { "plain.sock" });
    let listener = UnixListener::bind(&sock).expect("bind");
    let identity = csi_proto::v1::identity_server::IdentityServer::new(
        crate::grpc::IdentityService::new("csi.iolane.dev".to_owned()),
    );
    let router = tonic::transport::Server::builder().add_service(identity);
    if fix {
        tokio::spawn(router.serve_with_incoming(incoming(listener)));
    } else {
        tokio::spawn(router.serve_with_incoming(UnixListenerStream::new(listener)));
    }
    sock
}

/// Sends grpcio's two requests on one connection and reads until both streams ended: per
/// stream, `Ok(grpc-status and the DATA received)` or `Err(RST_STREAM's code)`.
async fn grpcio_calls(sock: &std::path::Path) -> Vec<(u32, Result<(String, Vec<u8>), u32>)> {
    let mut conn = UnixStream::connect(sock).await.expect("connect");
    conn.write_all(&grpcio_connection()).await.expect("write");
    let mut buf = Vec::new();
    let mut ended = std::collections::BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ended.len() < 2 {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, conn.read(&mut chunk))
            .await
            .expect("both streams end within 10 s")
            .expect("read");
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        // Whole frames only: parse what is complete so far.
        let mut complete = 0;
        while buf.len() >= complete + FRAME_HEADER {
            let h = &buf[complete..];
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            if h.len() < FRAME_HEADER + len {
                break;
            }
            complete += FRAME_HEADER + len;
        }
        let frames = parse_frames(&buf[..complete]);
        let blocks = header_blocks(&frames);
        ended.clear();
        for f in &frames {
            if f.kind == 0x3 {
                let code =
                    u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]]);
                ended.insert(f.stream_id, Err(code));
            }
        }
        for (stream_id, fields) in &blocks {
            if let Some(status) = field(fields, "grpc-status") {
                let data: Vec<u8> = frames
                    .iter()
                    .filter(|f| f.kind == 0x0 && f.stream_id == *stream_id)
                    .flat_map(|f| f.payload.clone())
                    .collect();
                ended.insert(
                    *stream_id,
                    Ok((String::from_utf8_lossy(status).into_owned(), data)),
                );
            }
        }
    }
    ended.into_iter().collect()
}

#[tokio::test]
async fn tonic_answers_grpcio_through_the_fix_and_resets_it_without() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = identity_server(dir.path(), false).await;
    let fixed = identity_server(dir.path(), true).await;

    // Without the fix, h2 resets both streams: PROTOCOL_ERROR (1).
    let got = grpcio_calls(&plain).await;
    assert_eq!(got, vec![(1, Err(1)), (3, Err(1))]);

    let got = grpcio_calls(&fixed).await;
    assert_eq!(got.len(), 2);
    for (stream_id, outcome) in &got {
        let (status, data) = outcome.as_ref().expect("answered, not reset");
        assert_eq!(status, "0", "stream {stream_id}");
        if *stream_id == 1 {
            assert!(
                data.windows(14).any(|w| w == b"csi.iolane.dev"),
                "GetPluginInfo names the plugin"
            );
        }
    }
}
