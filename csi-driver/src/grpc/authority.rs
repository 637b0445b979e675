//! The gRPC server's connections on the Unix socket: every client connection is wrapped so
//! that a request whose `:authority` is not a valid URI authority reaches tonic with
//! `:authority: localhost` instead of being reset.
//!
//! Why: gRPC clients put the socket's path in `:authority`. grpc-go sends `localhost`, but
//! grpcio (gRPC C core since 1.57, so Python's CSI tools) sends the path percent-encoded
//! (`var%2Flib%2Fkubelet%2F...%2Fcsi.sock`, measured with grpcio 1.85.3) and grpc-java the
//! bare path. The h2 server converts `:authority` with `http::uri::Authority`, which refuses
//! both (a `%` in a host, a `/`), and answers `RST_STREAM PROTOCOL_ERROR` to every such
//! request (`h2::server`, `convert_poll_message`); neither h2, hyper nor tonic has a setting
//! to relax it. On a Unix socket the authority names nothing, so it is replaced, before h2
//! reads it, by what grpc-go sends.
//!
//! How: the value cannot be patched in place. HPACK (RFC 7541) gives the client's encoder
//! and the server's decoder one shared dynamic table: grpcio adds `:authority` to it in the
//! connection's first request and refers to it by index afterwards, and a value of another
//! length would shift that table's evictions out of step. So every header block the client
//! sends (HEADERS and its CONTINUATION frames) is decoded here by a full HPACK decoder that
//! keeps the client's dynamic table, and re-encoded as literals that never index: h2's
//! table stays empty and both sides agree at every step. The preface and every other frame
//! pass on byte for byte, as they arrive (DATA is not buffered); the server-to-client
//! direction is untouched. Anything this does not understand (no HTTP/2 preface, a frame
//! between HEADERS and its CONTINUATION, an oversized frame, a block that does not decode)
//! is passed on unchanged from there on, for h2 to answer with its own error.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::{Stream, StreamExt, wrappers::UnixListenerStream};
use tonic::transport::server::{Connected, UdsConnectInfo};

/// What replaces an `:authority` h2 would refuse: what grpc-go sends on a Unix socket.
const REPLACEMENT: &[u8] = b"localhost";
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The largest frame a client may send: h2's default SETTINGS_MAX_FRAME_SIZE, which the
/// server keeps (it is also the protocol's minimum, so frames written here always fit).
const MAX_FRAME: usize = 16_384;
/// The most a header block may hold here across its frames (h2's own header-list limit
/// applies after this, to the decoded fields).
const MAX_BLOCK: usize = 1 << 20;
/// SETTINGS_HEADER_TABLE_SIZE as the server leaves it (the protocol default): a client's
/// table size update beyond it makes the block undecodable here, and h2 refuses it.
const TABLE_SIZE: usize = 4096;

/// The server's incoming connections on `listener`, each wrapped in [`AuthorityFix`].
pub fn incoming(
    listener: UnixListener,
) -> impl Stream<Item = io::Result<AuthorityFix<UnixStream>>> {
    UnixListenerStream::new(listener).map(|conn| conn.map(AuthorityFix::new))
}

/// A client connection whose reads come out with every header block re-encoded and each
/// refused `:authority` replaced (module doc); writes go straight through.
#[derive(Debug)]
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    /// Bytes for the server to read, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    scratch: Vec<u8>,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            rewriter: Rewriter::default(),
            out: Vec::new(),
            out_pos: 0,
            scratch: vec![0; MAX_FRAME],
            eof: false,
        }
    }
}

impl Connected for AuthorityFix<UnixStream> {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> UdsConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
                this.rewriter.finish(&mut this.out);
            } else {
                this.rewriter.feed(read.filled(), &mut this.out);
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Where the client's byte stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before (or inside) the connection preface.
    Preface,
    /// At a frame header.
    Frames,
    /// Inside a frame that passes unchanged: this many payload bytes still to pass.
    Passing(usize),
    /// Everything passes unchanged from here on (module doc).
    Raw,
}

/// A header block being collected: HEADERS and its CONTINUATION frames so far.
struct Block {
    stream_id: u32,
    end_stream: bool,
    /// The header block fragments, padding and priority fields removed.
    fields: Vec<u8>,
    /// The frames as they came, passed on if the block cannot be rewritten.
    raw: Vec<u8>,
}

/// The client-to-server half of the rewrite, on bytes: [`Rewriter::feed`] what the client
/// sent, read what the server should see from `out`.
pub struct Rewriter {
    state: State,
    /// Bytes read and not yet consumed (at most one frame).
    pending: Vec<u8>,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    /// Authorities replaced so far on this connection.
    replaced: u64,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("state", &self.state)
            .field("pending", &self.pending.len())
            .field("replaced", &self.replaced)
            .finish_non_exhaustive()
    }
}

impl Default for Rewriter {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Rewriter {
            state: State::Preface,
            pending: Vec::new(),
            block: None,
            decoder,
            replaced: 0,
        }
    }
}

impl Rewriter {
    /// Takes bytes the client sent; appends to `out` what the server reads in their place,
    /// as far as whole units (the preface, frame headers, header blocks) allow.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(input);
        loop {
            match self.state {
                State::Raw => {
                    out.append(&mut self.pending);
                    return;
                }
                State::Preface => {
                    let n = self.pending.len().min(PREFACE.len());
                    if self.pending[..n] != PREFACE[..n] {
                        self.pass_raw(out);
                    } else if n < PREFACE.len() {
                        return;
                    } else {
                        out.extend(self.pending.drain(..n));
                        self.state = State::Frames;
                    }
                }
                State::Passing(left) => {
                    let n = left.min(self.pending.len());
                    out.extend(self.pending.drain(..n));
                    if n < left {
                        self.state = State::Passing(left - n);
                        return;
                    }
                    self.state = State::Frames;
                }
                State::Frames => {
                    if self.pending.len() < FRAME_HEADER {
                        return;
                    }
                    let h = &self.pending[..FRAME_HEADER];
                    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    let kind = h[3];
                    if kind != TYPE_HEADERS && kind != TYPE_CONTINUATION {
                        if self.block.is_some() {
                            // RFC 9113 6.10: nothing may come between HEADERS and the end
                            // of its block; h2 answers it as a connection error.
                            self.pass_raw(out);
                        } else {
                            out.extend(self.pending.drain(..FRAME_HEADER));
                            self.state = State::Passing(len);
                        }
                        continue;
                    }
                    if len > MAX_FRAME {
                        self.pass_raw(out);
                        continue;
                    }
                    if self.pending.len() < FRAME_HEADER + len {
                        return;
                    }
                    let frame: Vec<u8> = self.pending.drain(..FRAME_HEADER + len).collect();
                    if self.header_frame(frame, out).is_err() {
                        self.pass_raw(out);
                    }
                }
            }
        }
    }

    /// The client closed its side: whatever is held passes on as it came.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.pass_raw(out);
    }

    /// How many `:authority` values were replaced so far.
    pub fn replaced(&self) -> u64 {
        self.replaced
    }

    /// Everything held (a block being collected, then unread bytes) passes on unchanged,
    /// and so does everything after.
    fn pass_raw(&mut self, out: &mut Vec<u8>) {
        if let Some(block) = self.block.take() {
            out.extend_from_slice(&block.raw);
        }
        out.append(&mut self.pending);
        self.state = State::Raw;
    }

    /// A whole HEADERS or CONTINUATION frame: collected into the block, which is rewritten
    /// into `out` at END_HEADERS. `Err` when the frame is not what RFC 9113 allows here: the
    /// frame is then in the block's raw bytes, or it is the first one of a new block.
    fn header_frame(&mut self, frame: Vec<u8>, out: &mut Vec<u8>) -> Result<(), ()> {
        let kind = frame[3];
        let flags = frame[4];
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        if kind == TYPE_HEADERS {
            if self.block.is_some() {
                self.pending.splice(0..0, frame);
                return Err(());
            }
            let payload = &frame[FRAME_HEADER..];
            let (mut start, mut end) = (0, payload.len());
            if flags & FLAG_PADDED != 0 {
                let pad = usize::from(*payload.first().unwrap_or(&0));
                start = 1;
                end = end.saturating_sub(pad);
            }
            if flags & FLAG_PRIORITY != 0 {
                start += 5;
            }
            let fields = payload.get(start..end).map(<[u8]>::to_vec);
            let raw_block = Block {
                stream_id,
                end_stream: flags & FLAG_END_STREAM != 0,
                fields: fields.clone().unwrap_or_default(),
                raw: frame,
            };
            self.block = Some(raw_block);
            if fields.is_none() {
                return Err(());
            }
        } else {
            let Some(block) = self.block.as_mut() else {
                self.pending.splice(0..0, frame);
                return Err(());
            };
            block.raw.extend_from_slice(&frame);
            if block.stream_id != stream_id || block.fields.len() + frame.len() > MAX_BLOCK {
                return Err(());
            }
            block.fields.extend_from_slice(&frame[FRAME_HEADER..]);
        }
        if flags & FLAG_END_HEADERS == 0 {
            return Ok(());
        }
        let Some(block) = self.block.take() else {
            return Err(());
        };
        match self.rewrite(&block.fields) {
            Ok(encoded) => {
                write_header_frames(out, block.stream_id, block.end_stream, &encoded);
                Ok(())
            }
            Err(e) => {
                tracing::debug!(error = ?e, "a client header block does not decode; passing it on as it is");
                self.block = Some(block);
                Err(())
            }
        }
    }

    /// Decodes one header block (keeping the client's dynamic table) and re-encodes it as
    /// literals without indexing, a refused `:authority` replaced.
    fn rewrite(&mut self, block: &[u8]) -> Result<Vec<u8>, loona_hpack::decoder::DecoderError> {
        let mut fields = Vec::new();
        self.decoder.decode_with_cb(block, |name, value| {
            fields.push((name.into_owned(), value.into_owned()));
        })?;
        let mut encoded = Vec::with_capacity(block.len() + 64);
        for (name, value) in &fields {
            let mut value = value.as_slice();
            if name == b":authority" && http::uri::Authority::try_from(value).is_err() {
                tracing::debug!(
                    authority = %String::from_utf8_lossy(value),
                    "a client's :authority is not a URI authority; serving it as localhost"
                );
                self.replaced += 1;
                value = REPLACEMENT;
            }
            // Literal header field without indexing, new name (RFC 7541 6.2.2): 0x00, then
            // the name and the value as plain (not Huffman-coded) strings.
            encoded.push(0x00);
            encode_string(&mut encoded, name);
            encode_string(&mut encoded, value);
        }
        Ok(encoded)
    }
}

/// An HPACK string literal, not Huffman-coded: its length as an integer with a 7-bit
/// prefix (RFC 7541 5.1, 5.2), then the bytes.
fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    let mut n = s.len();
    if n < 0x7f {
        out.push(n as u8);
    } else {
        out.push(0x7f);
        n -= 0x7f;
        while n >= 0x80 {
            out.push((n % 0x80) as u8 | 0x80);
            n /= 0x80;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

/// `block` as one HEADERS frame and as many CONTINUATION frames as it needs.
fn write_header_frames(out: &mut Vec<u8>, stream_id: u32, end_stream: bool, block: &[u8]) {
    let mut chunks: Vec<&[u8]> = block.chunks(MAX_FRAME).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let (kind, mut flags) = if i == 0 {
            (TYPE_HEADERS, if end_stream { FLAG_END_STREAM } else { 0 })
        } else {
            (TYPE_CONTINUATION, 0)
        };
        if i == last {
            flags |= FLAG_END_HEADERS;
        }
        let len = chunk.len().to_be_bytes();
        out.extend_from_slice(&len[len.len() - 3..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream_id.to_be_bytes());
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
#[path = "authority_tests.rs"]
mod tests;
