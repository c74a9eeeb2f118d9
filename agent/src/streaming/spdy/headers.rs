//! SPDY/3 header blocks: name/value pairs with 32-bit lengths, compressed
//! with one zlib stream per direction that is primed with the dictionary the
//! SPDY/3 draft defines (section 2.6.10.1).

use std::sync::OnceLock;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Largest decompressed header block accepted.
const MAX_HEADER_BLOCK: usize = 64 << 10;

/// Header names and values of one block, names lowercase.
pub type HeaderList = Vec<(String, String)>;

/// Why a header block is unreadable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SPDY header block: {0}")]
pub struct HeaderError(pub String);

/// The SPDY/3 compression dictionary: length-prefixed common header names,
/// then common values.
fn dictionary() -> &'static [u8] {
    static DICTIONARY: OnceLock<Vec<u8>> = OnceLock::new();
    DICTIONARY.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505\
            203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized\
            403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable\
            Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT\
            chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,\
            text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
        let mut out = Vec::with_capacity(1423);
        for word in WORDS {
            out.extend_from_slice(&u32::try_from(word.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(word.as_bytes());
        }
        out.extend_from_slice(TAIL.as_bytes());
        out
    })
}

/// The session's inbound header decompressor.
#[derive(Debug)]
pub struct HeaderDecoder {
    zlib: Decompress,
}

impl Default for HeaderDecoder {
    fn default() -> Self {
        Self { zlib: Decompress::new(true) }
    }
}

impl HeaderDecoder {
    /// Decompresses and parses one block.
    pub fn decode(&mut self, block: &[u8]) -> Result<HeaderList, HeaderError> {
        let mut out = Vec::with_capacity(1024);
        let mut input = block;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(HeaderError(format!("larger than {MAX_HEADER_BLOCK} bytes")));
                }
                out.reserve(out.len());
            }
            let before_in = self.zlib.total_in();
            let result = self.zlib.decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = usize::try_from(self.zlib.total_in() - before_in).unwrap_or(input.len());
            input = &input[used.min(input.len())..];
            match result {
                Ok(Status::Ok | Status::BufError) if input.is_empty() && out.len() < out.capacity() => break,
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.zlib.set_dictionary(dictionary()).map_err(|e| HeaderError(e.to_string()))?;
                }
                Err(e) => return Err(HeaderError(e.to_string())),
            }
        }
        parse_block(&out)
    }
}

/// The session's outbound header compressor.
#[derive(Debug)]
pub struct HeaderEncoder {
    zlib: Compress,
}

impl Default for HeaderEncoder {
    fn default() -> Self {
        let mut zlib = Compress::new(Compression::default(), true);
        // Only fails for a stream that already started; this one is new.
        let _ = zlib.set_dictionary(dictionary());
        Self { zlib }
    }
}

impl HeaderEncoder {
    /// Serialises and compresses one block.
    pub fn encode(&mut self, headers: &[(&str, &str)]) -> Bytes {
        let mut raw = BytesMut::new();
        raw.put_u32(u32::try_from(headers.len()).unwrap_or(0));
        for (name, value) in headers {
            raw.put_u32(u32::try_from(name.len()).unwrap_or(0));
            raw.put_slice(name.to_ascii_lowercase().as_bytes());
            raw.put_u32(u32::try_from(value.len()).unwrap_or(0));
            raw.put_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            if out.len() == out.capacity() {
                out.reserve(256);
            }
            let before = self.zlib.total_in();
            let _ = self.zlib.compress_vec(input, &mut out, FlushCompress::Sync);
            let used = usize::try_from(self.zlib.total_in() - before).unwrap_or(input.len());
            input = &input[used.min(input.len())..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        Bytes::from(out)
    }
}

fn parse_block(raw: &[u8]) -> Result<HeaderList, HeaderError> {
    let mut buf = raw;
    let short = || HeaderError("truncated".into());
    let take = |buf: &mut &[u8]| -> Result<String, HeaderError> {
        if buf.remaining() < 4 {
            return Err(short());
        }
        let len = usize::try_from(buf.get_u32()).map_err(|_| short())?;
        if buf.remaining() < len {
            return Err(short());
        }
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        buf.advance(len);
        Ok(text)
    };
    if buf.remaining() < 4 {
        return Err(short());
    }
    let count = buf.get_u32();
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = take(&mut buf)?.to_ascii_lowercase();
        let value = take(&mut buf)?;
        headers.push((name, value));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_has_the_spdy3_size_and_checksum() {
        assert_eq!(dictionary().len(), 1423);
        // The Adler-32 that SPDY/3 zlib streams name as their dictionary id.
        let mut a: u32 = 1;
        let mut b: u32 = 0;
        for byte in dictionary() {
            a = (a + u32::from(*byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[test]
    fn blocks_round_trip_across_a_session() {
        let (mut enc, mut dec) = (HeaderEncoder::default(), HeaderDecoder::default());
        for i in 0..5 {
            let port = i.to_string();
            let block = enc.encode(&[("streamType", "data"), ("port", &port)]);
            let got = dec.decode(&block).expect("decode");
            assert_eq!(got, [("streamtype".to_owned(), "data".to_owned()), ("port".to_owned(), port)]);
        }
    }

    #[test]
    fn random_blocks_never_panic() {
        // The fuzz target (agent/fuzz, spdy_headers) explores this far more.
        let mut seed = 0x9e37_79b9_u32;
        let mut decoder = HeaderDecoder::default();
        for _ in 0..500 {
            let mut block = vec![0x78, 0xbb];
            for _ in 0..(seed % 48) {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                block.push((seed >> 16) as u8);
            }
            let _ = decoder.decode(&block);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut dec = HeaderDecoder::default();
        assert!(dec.decode(b"not zlib at all").is_err());
        let mut enc = HeaderEncoder::default();
        let mut block = enc.encode(&[("a", "b")]).to_vec();
        block.truncate(block.len() / 2);
        let _ = HeaderDecoder::default().decode(&block);
    }
}
