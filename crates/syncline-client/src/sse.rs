//! Reading a Server-Sent Events stream: bytes in, messages out, as the WHATWG HTML standard's "event stream
//! interpretation" describes it (https://html.spec.whatwg.org/multipage/server-sent-events.html): lines end
//! with CRLF, LF or CR; `event:` names the message, `data:` lines are joined with newlines, a line starting
//! with `:` is a comment (keep-alives), and a blank line dispatches. Pure: no I/O, bytes may arrive split
//! anywhere, even inside a UTF-8 character or between CR and LF.

/// One dispatched message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseMessage {
    /// The `event:` field, `message` when absent.
    pub event: String,
    pub data: String,
}

/// The parser's state between chunks.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    line: Vec<u8>,
    /// The last byte was a CR: an LF right after it ends nothing more.
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
}

/// Lines longer than this are cut (a stream of hints never sends them); keeps a broken server from
/// growing the buffer without end.
const MAX_LINE: usize = 64 * 1024;

impl SseParser {
    /// Feeds a chunk; returns the messages it completed, in order.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<SseMessage> {
        let mut out = Vec::new();
        for &b in chunk {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(m) = self.line_done(&line) {
                        out.push(m);
                    }
                }
                _ => {
                    self.after_cr = false;
                    if self.line.len() < MAX_LINE {
                        self.line.push(b);
                    }
                }
            }
        }
        out
    }

    fn line_done(&mut self, line: &[u8]) -> Option<SseMessage> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            let data = std::mem::take(&mut self.data);
            if !std::mem::take(&mut self.has_data) {
                return None;
            }
            return Some(SseMessage {
                event: if event.is_empty() {
                    "message".into()
                } else {
                    event
                },
                data,
            });
        }
        if line[0] == b':' {
            return None;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {} // `id`, `retry` and unknown fields: not used by Syncline's stream
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(chunks: &[&[u8]], expected: &[(&str, &str)]) {
        let mut p = SseParser::default();
        let got: Vec<(String, String)> = chunks
            .iter()
            .flat_map(|c| p.push(c))
            .map(|m| (m.event, m.data))
            .collect();
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(e, d)| (e.to_string(), d.to_string()))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn messages_comments_and_line_endings() {
        check(
            &[b"event: ready\ndata: {\"user\":\"a\"}\n\n: keep-alive\n\nevent: changes\r\ndata: {\"sequence\":4}\r\n\r\n"],
            &[("ready", "{\"user\":\"a\"}"), ("changes", "{\"sequence\":4}")],
        );
        check(&[b"data:x\rdata: y\r\r"], &[("message", "x\ny")]);
    }

    #[test]
    fn chunks_split_anywhere() {
        let text = "event: changes\r\ndata: {\"sequence\":12}\r\n\r\nevent: import\ndata: é\n\n";
        for cut in 0..text.len() {
            let (a, b) = text.as_bytes().split_at(cut);
            check(
                &[a, b],
                &[("changes", "{\"sequence\":12}"), ("import", "é")],
            );
        }
    }

    #[test]
    fn a_message_without_data_is_not_dispatched() {
        check(&[b"event: changes\n\n: only a comment\n\n"], &[]);
    }
}
