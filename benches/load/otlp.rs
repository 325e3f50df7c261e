//! A tiny OTLP/HTTP sink for the `KEYLESS_OTEL` instruction count: it reads each POST
//! body whole and answers `200` with an empty body, on keep-alive connections, for as
//! long as the bench runs. It decodes nothing; it counts the bodies, so the bench can
//! tell that spans were exported during the run.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A running sink.
pub struct Sink {
    pub addr: SocketAddr,
    bodies: Arc<AtomicUsize>,
}

impl Sink {
    /// Bodies (export requests) answered so far.
    pub fn bodies(&self) -> usize {
        self.bodies.load(Ordering::Relaxed)
    }
}

/// Binds an ephemeral loopback port and serves it on threads that live as long as the
/// process: a thread accepting, one a connection.
pub fn start() -> io::Result<Sink> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let bodies = Arc::new(AtomicUsize::new(0));
    let counted = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let counted = counted.clone();
            std::thread::spawn(move || {
                let _ = serve(stream, &counted);
            });
        }
    });
    Ok(Sink { addr, bodies })
}

/// Requests on one connection until the client closes it.
fn serve(stream: TcpStream, bodies: &AtomicUsize) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        // The head: a request line, headers, a blank line.
        let mut length = 0usize;
        let mut chunked = false;
        let mut first = true;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                if first {
                    continue;
                }
                break;
            }
            first = false;
            let lower = header.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        if chunked {
            loop {
                line.clear();
                reader.read_line(&mut line)?;
                let size = line.trim().split(';').next().unwrap_or("");
                let Ok(size) = usize::from_str_radix(size, 16) else {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"));
                };
                // The chunk and its CRLF; after the last (empty) one, the final CRLF.
                io::copy(&mut (&mut reader).take(size as u64 + 2), &mut io::sink())?;
                if size == 0 {
                    break;
                }
            }
        } else {
            io::copy(&mut (&mut reader).take(length as u64), &mut io::sink())?;
        }
        bodies.fetch_add(1, Ordering::Relaxed);
        writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")?;
    }
}
