//! Lets etcd's Go clients in that send a whole URL as the HTTP/2 `:authority`.
//!
//! etcdctl 3.4 dials each endpoint of `endpoint status`/`health` (and every member with
//! `--cluster`) with the endpoint as given, e.g. `http://10.0.0.1:2379`, and grpc-go puts
//! that string in `:authority`. etcd's Go server accepts it; the h2 crate under tonic
//! rejects the request as malformed (RST_STREAM PROTOCOL_ERROR) and offers no switch.
//! So each client connection is read through [`FixAuthority`], which passes every byte
//! through except HEADERS blocks: those it decodes (HPACK), strips a scheme and path from
//! `:authority`, and re-encodes. Frame boundaries, flags and all other frames are kept.
//!
//! The pre-parser holds at most one frame and one header block of a connection, and both
//! are bounded: a frame over the HTTP/2 default size (which the server never raises) or a
//! header block over [`MAX_HEADER_BLOCK`] closes the connection, as does a block the HPACK
//! decoder (loona-hpack, a maintained and fuzzed fork of the `hpack` crate) cannot read.
//! h2 would refuse them all anyway; here they never reach memory unbounded.
//!
//! A client names its authority once per connection, so the first HEADERS block decides:
//! if it needs no fix (every client but those etcdctl versions), the connection is passed
//! through untouched from then on. Decoding and re-encoding every request's headers was
//! a tenth of a leader's CPU with 2,500 agents renewing leases.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

const PREFACE_LEN: usize = 24; // "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The HTTP/2 default SETTINGS_MAX_FRAME_SIZE, which our server does not raise.
const MAX_FRAME: usize = 16_384;
/// The largest header block (HEADERS plus CONTINUATIONs) the pre-parser accepts. gRPC
/// clients send a few hundred bytes; h2's own limit on the decoded list is 16 KiB.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    original: Vec<u8>,
}

pub struct FixAuthority<S> {
    inner: S,
    raw: BytesMut,
    ready: BytesMut,
    preface_left: usize,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    block: Option<Block>,
    /// The first HEADERS block needed no fix: every byte from here on goes through as is.
    passthrough: bool,
    /// The first HEADERS block was seen.
    decided: bool,
    /// Why the connection must close (a bound exceeded, an unreadable header block).
    refused: Option<String>,
}

impl<S> FixAuthority<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            preface_left: PREFACE_LEN,
            decoder: loona_hpack::Decoder::new(),
            encoder: loona_hpack::Encoder::new(),
            block: None,
            passthrough: false,
            decided: false,
            refused: None,
        }
    }

    fn process(&mut self) {
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.raw.len());
            self.ready.extend_from_slice(&self.raw.split_to(n));
            self.preface_left -= n;
            if self.preface_left > 0 {
                return;
            }
        }
        while self.raw.len() >= 9 && self.refused.is_none() {
            if self.passthrough {
                let rest = self.raw.split();
                self.ready.extend_from_slice(&rest);
                return;
            }
            let len = (usize::from(self.raw[0]) << 16) | (usize::from(self.raw[1]) << 8) | usize::from(self.raw[2]);
            if len > MAX_FRAME {
                self.refused = Some(format!("a {len}-byte frame, over the {MAX_FRAME}-byte maximum"));
                return;
            }
            if self.raw.len() < 9 + len {
                return;
            }
            let frame = self.raw.split_to(9 + len);
            let (kind, flags) = (frame[3], frame[4]);
            let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
            match kind {
                HEADERS if self.block.is_none() => {
                    let mut p = &frame[9..];
                    let mut pad = 0;
                    if flags & PADDED != 0 && !p.is_empty() {
                        pad = usize::from(p[0]);
                        p = &p[1..];
                    }
                    let mut priority = None;
                    if flags & PRIORITY != 0 && p.len() >= 5 {
                        priority = Some([p[0], p[1], p[2], p[3], p[4]]);
                        p = &p[5..];
                    }
                    if pad > p.len() {
                        self.ready.extend_from_slice(&frame); // malformed: h2 will say so
                        continue;
                    }
                    self.block = Some(Block {
                        stream,
                        end_stream: flags & END_STREAM != 0,
                        priority,
                        fragment: p[..p.len() - pad].to_vec(),
                        original: frame.to_vec(),
                    });
                    if flags & END_HEADERS != 0 {
                        self.emit();
                    }
                }
                CONTINUATION if self.block.as_ref().is_some_and(|b| b.stream == stream) => {
                    let block = self.block.as_mut().expect("checked");
                    if block.original.len() + frame.len() > MAX_HEADER_BLOCK {
                        self.refused = Some(format!("a header block over {MAX_HEADER_BLOCK} bytes"));
                        self.block = None;
                        return;
                    }
                    block.fragment.extend_from_slice(&frame[9..]);
                    block.original.extend_from_slice(&frame);
                    if flags & END_HEADERS != 0 {
                        self.emit();
                    }
                }
                _ => self.ready.extend_from_slice(&frame),
            }
        }
    }

    fn emit(&mut self) {
        let Some(block) = self.block.take() else { return };
        let mut headers = match self.decoder.decode(&block.fragment) {
            Ok(h) => h,
            Err(e) => {
                // h2 would end the connection too (COMPRESSION_ERROR): the decoders'
                // tables can no longer agree.
                self.refused = Some(format!("an unreadable header block ({e:?})"));
                return;
            }
        };
        if !std::mem::replace(&mut self.decided, true)
            && headers
                .iter()
                .all(|(name, value)| name.as_slice() != b":authority" || strip_url(value) == *value)
        {
            self.passthrough = true;
            self.ready.extend_from_slice(&block.original);
            return;
        }
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority" {
                *value = strip_url(value);
            }
        }
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut rest = encoded.as_slice();
        let mut first = true;
        loop {
            let room = if first && block.priority.is_some() {
                MAX_FRAME - 5
            } else {
                MAX_FRAME
            };
            let n = rest.len().min(room);
            let (chunk, tail) = rest.split_at(n);
            let last = tail.is_empty();
            let mut flags = if last { END_HEADERS } else { 0 };
            let kind = if first { HEADERS } else { CONTINUATION };
            let mut len = chunk.len();
            if first {
                if block.end_stream {
                    flags |= END_STREAM;
                }
                if block.priority.is_some() {
                    flags |= PRIORITY;
                    len += 5;
                }
            }
            self.ready.put_uint(len as u64, 3);
            self.ready.put_u8(kind);
            self.ready.put_u8(flags);
            self.ready.put_u32(block.stream);
            if first {
                if let Some(p) = block.priority {
                    self.ready.extend_from_slice(&p);
                }
            }
            self.ready.extend_from_slice(chunk);
            first = false;
            rest = tail;
            if last {
                break;
            }
        }
    }
}

/// `http://host:port/path` → `host:port`; anything else unchanged.
fn strip_url(v: &[u8]) -> Vec<u8> {
    let s = match v {
        _ if v.starts_with(b"http://") => &v[7..],
        _ if v.starts_with(b"https://") => &v[8..],
        _ => return v.to_vec(),
    };
    let end = s.iter().position(|&c| c == b'/').unwrap_or(s.len());
    s[..end].to_vec()
}

impl<S: AsyncRead + Unpin> AsyncRead for FixAuthority<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready.is_empty() {
                if let Some(why) = &this.refused {
                    tracing::debug!(why, "closing a client connection");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why.clone())));
                }
            }
            if this.passthrough && this.ready.is_empty() && this.raw.is_empty() && this.block.is_none() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    // EOF: whatever is incomplete goes to h2 as it is.
                    if let Some(b) = this.block.take() {
                        this.ready.extend_from_slice(&b.original);
                    }
                    let rest = this.raw.split();
                    this.ready.extend_from_slice(&rest);
                    if this.ready.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(())) => {
                    this.raw.extend_from_slice(rb.filled());
                    this.process();
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FixAuthority<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: Connected> Connected for FixAuthority<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[tokio::test]
    async fn rewrites_a_url_authority_across_continuations_and_keeps_the_rest() {
        let mut client = loona_hpack::Encoder::new();
        let block = client.encode(vec![
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/etcdserverpb.Maintenance/Status"),
            (b":authority", b"http://127.0.0.1:2379"),
            (b"content-type", b"application/grpc"),
        ]);
        let (a, b) = block.split_at(10);
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        wire.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        wire.extend(frame(HEADERS, 0, 1, a));
        wire.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        wire.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")); // DATA

        // Deliver it in awkward pieces.
        let mut mock = tokio_test_io(&wire);
        let mut out = Vec::new();
        let mut fixed = FixAuthority::new(&mut mock);
        fixed.read_to_end(&mut out).await.unwrap();

        assert_eq!(&out[..24], &wire[..24]);
        assert_eq!(&out[24..33], &frame(0x4, 0, 0, &[])[..], "other frames untouched");
        let rest = &out[33..];
        let len = (usize::from(rest[1]) << 8) | usize::from(rest[2]);
        assert_eq!((rest[3], rest[4] & END_HEADERS), (HEADERS, END_HEADERS));
        let headers = loona_hpack::Decoder::new().decode(&rest[9..9 + len]).unwrap();
        let authority = headers.iter().find(|(n, _)| n == b":authority").unwrap();
        assert_eq!(authority.1, b"127.0.0.1:2379");
        assert_eq!(headers.len(), 5);
        assert_eq!(&rest[9 + len..], &frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")[..]);
    }

    #[tokio::test]
    async fn a_connection_whose_first_authority_is_fine_is_passed_through_untouched() {
        let mut client = loona_hpack::Encoder::new();
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        wire.extend(frame(0x4, 0, 0, &[]));
        for (stream, path) in [
            (1u32, &b"/etcdserverpb.Lease/LeaseKeepAlive"[..]),
            (3, b"/etcdserverpb.KV/Range"),
        ] {
            let block = client.encode(vec![
                (&b":method"[..], &b"POST"[..]),
                (b":scheme", b"http"),
                (b":path", path),
                (b":authority", b"127.0.0.1:2379"),
            ]);
            wire.extend(frame(HEADERS, END_HEADERS, stream, &block));
            wire.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\0"));
        }
        let mut mock = tokio_test_io(&wire);
        let mut out = Vec::new();
        let mut fixed = FixAuthority::new(&mut mock);
        fixed.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, wire, "byte for byte, the client's own encoding");
        assert!(fixed.passthrough);
    }

    /// A reader that hands out 7 bytes at a time.
    fn tokio_test_io(data: &[u8]) -> Chunked {
        Chunked(data.to_vec())
    }

    struct Chunked(Vec<u8>);

    impl AsyncRead for Chunked {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let n = self.0.len().min(7).min(buf.remaining());
            let chunk: Vec<u8> = self.0.drain(..n).collect();
            buf.put_slice(&chunk);
            Poll::Ready(Ok(()))
        }
    }

    async fn read_all(wire: &[u8]) -> (Vec<u8>, io::Result<usize>) {
        let mut mock = tokio_test_io(wire);
        let mut out = Vec::new();
        let r = FixAuthority::new(&mut mock).read_to_end(&mut out).await;
        (out, r)
    }

    #[tokio::test]
    async fn unreadable_oversized_and_endless_header_blocks_close_the_connection() {
        let head = {
            let mut w = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            w.extend(frame(0x4, 0, 0, &[]));
            w
        };
        // 0x3f: an integer that never ends (it panicked the `hpack` crate).
        let mut wire = head.clone();
        wire.extend(frame(HEADERS, END_HEADERS, 1, &[0x3f]));
        let (out, r) = read_all(&wire).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(out, head, "what came before is passed on, the block is not");
        // A frame over the maximum size.
        let mut wire = head.clone();
        wire.extend([0x01, 0x00, 0x00, HEADERS, 0, 0, 0, 0, 1]);
        assert!(read_all(&wire)
            .await
            .1
            .unwrap_err()
            .to_string()
            .contains("65536-byte frame"));
        // CONTINUATIONs without end.
        let mut wire = head.clone();
        wire.extend(frame(HEADERS, 0, 1, &[0x82]));
        for _ in 0..8 {
            wire.extend(frame(CONTINUATION, 0, 1, &[0x82; MAX_FRAME]));
        }
        let e = read_all(&wire).await.1.unwrap_err();
        assert!(e.to_string().contains("header block over 65536 bytes"), "{e}");
    }

    #[test]
    fn the_decoder_survives_random_blocks() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200_000 {
            let len = (next() % 24) as usize;
            let block: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = loona_hpack::Decoder::new().decode(&block);
        }
    }

    #[test]
    fn strips_scheme_and_path_only() {
        assert_eq!(strip_url(b"http://a:1"), b"a:1");
        assert_eq!(strip_url(b"https://a:1/x"), b"a:1");
        assert_eq!(strip_url(b"a:1"), b"a:1");
    }
}
