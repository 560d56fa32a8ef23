//! Log setup for all three binaries, so an operator reads and ships their logs the same way:
//!
//! - `--log-format text|json` (or `TOLLGATE_LOG_FORMAT`): `text` is one line per event
//!   (`timestamp level span{fields}: target: message key=value…`), with newlines and other control
//!   characters in messages and fields escaped (`\n`), because `tollgate`'s lines land in Kong's
//!   error log and a line shipper splits on newlines; `json` is one JSON object per line with
//!   `timestamp`, `level`, `target`, `message`, the event's fields, `span` (the current span's
//!   name and fields) and `spans` (every enclosing span, outermost first).
//! - Colour only when stderr is a terminal and `NO_COLOR` is unset or empty (<https://no-color.org>).
//! - Filter from `TOLLGATE_LOG` (`info` by default; `tollgate_agent=debug,info` and the like); a
//!   filter that does not parse is reported in the log and `info` used.
//! - Everything goes to stderr, through [`redact::scrub`], so no line carries a registered secret
//!   or a URL's password.

use std::fmt;
use std::io::{self, IsTerminal, Write};

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::redact;

/// The filter's environment variable.
pub const FILTER_ENV: &str = "TOLLGATE_LOG";
/// The format's environment variable (the `--log-format` flag wins over it).
pub const FORMAT_ENV: &str = "TOLLGATE_LOG_FORMAT";

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The logging flags every binary takes (`#[command(flatten)]`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct LogArgs {
    /// Log format: `text` (one line per event) or `json` (one JSON object per line, for log
    /// shippers); default `$TOLLGATE_LOG_FORMAT`, else `text`. Logs go to stderr; the filter is
    /// `TOLLGATE_LOG` (default `info`).
    #[arg(long, value_enum, global = true)]
    pub log_format: Option<LogFormat>,
}

impl LogArgs {
    /// The format: the flag, else `TOLLGATE_LOG_FORMAT`, else text. A variable that is neither
    /// `text` nor `json` is an error naming the variable (clap's own `env =` support would name
    /// only the flag, which an operator who set the variable in a unit file never typed).
    pub fn format(&self) -> Result<LogFormat, InitError> {
        if let Some(format) = self.log_format {
            return Ok(format);
        }
        match std::env::var(FORMAT_ENV) {
            Ok(value) if !value.trim().is_empty() => {
                <LogFormat as clap::ValueEnum>::from_str(value.trim(), true).map_err(|_| {
                    InitError(format!("{FORMAT_ENV}={value:?}: expected `text` or `json`"))
                })
            }
            _ => Ok(LogFormat::Text),
        }
    }
}

/// The logger could not be installed.
#[derive(Debug)]
pub struct InitError(String);

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot set up logging: {}", self.0)
    }
}

impl std::error::Error for InitError {}

/// Installs the process's logger on stderr, as described in the module docs.
pub fn init(args: &LogArgs) -> Result<(), InitError> {
    let (filter, bad_filter) = filter_from_env();
    let ansi = use_colour(
        io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    subscriber(args.format()?, filter, ansi, Scrubbed(io::stderr))
        .try_init()
        .map_err(|e| InitError(e.to_string()))?;
    std::panic::set_hook(Box::new(log_panic));
    if let Some((value, why)) = bad_filter {
        tracing::warn!(
            filter = %value,
            error = %why,
            "{FILTER_ENV} is not a valid filter (e.g. `debug` or `tollgate_agent=debug,info`); logging at info"
        );
    }
    Ok(())
}

/// The panic hook [`init`] installs: a panic is one `ERROR` event (message, location and, when
/// `RUST_BACKTRACE` asks for one, the backtrace as a field), not the default hook's several lines.
fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let message = info
        .payload_as_str()
        .unwrap_or("(a panic payload that is not a string)");
    let location = info
        .location()
        .map(|l| format!("{}:{}", l.file(), l.line()))
        .unwrap_or_default();
    let backtrace = std::backtrace::Backtrace::capture();
    if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
        tracing::error!(panic = message, location, backtrace = %backtrace, "panicked");
    } else {
        tracing::error!(panic = message, location, "panicked");
    }
}

/// Reports the error a binary exits with as one event: through the logger when [`init`] ran (so
/// it has the chosen format, and its cause chain is one line), else as one `error: …` line on
/// stderr. Either way it is scrubbed of secrets.
pub fn fatal(error: &dyn fmt::Display) {
    let text = format!("{error:#}");
    if tracing::dispatcher::has_been_set() {
        tracing::error!(error = %text, "exiting on an error");
    } else {
        let mut line = String::new();
        let _ = write_escaped(&mut line, &text);
        eprintln!("error: {}", redact::scrub(&line));
    }
}

/// `TOLLGATE_LOG` as a filter, or `info` and what was wrong with it.
fn filter_from_env() -> (EnvFilter, Option<(String, String)>) {
    match std::env::var(FILTER_ENV) {
        Ok(value) if !value.trim().is_empty() => match EnvFilter::try_new(&value) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new("info"), Some((value, e.to_string()))),
        },
        _ => (EnvFilter::new("info"), None),
    }
}

/// Colour only on a terminal, and never when `NO_COLOR` is set to a non-empty value.
pub fn use_colour(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The subscriber [`init`] installs, writing to `writer` (tests give it a buffer).
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).fmt_fields(EscapedFields).finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .with_ansi(false)
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(true)
                .map_event_format(AlwaysMessage)
                .finish(),
        ),
    }
}

/// `tracing-subscriber`'s JSON lines, with `"message":""` added to events that have no message
/// (some dependencies log fields only), so every line has the same required keys.
pub struct AlwaysMessage<T>(Format<Json, T>);

impl<S, N, T> FormatEvent<S, N> for AlwaysMessage<T>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    Format<Json, T>: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        if event.metadata().fields().field("message").is_some() {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // After the level (`{"timestamp":…,"level":"INFO",`), else right after the `{`.
        let at = line
            .find(",\"level\":\"")
            .and_then(|i| line[i + 10..].find("\",").map(|j| i + 10 + j + 2))
            .or_else(|| line.find('{').map(|i| i + 1));
        if let Some(at) = at {
            line.insert_str(at, "\"message\":\"\",");
        }
        writer.write_str(&line)
    }
}

/// A [`MakeWriter`] whose writers pass each finished log line through [`redact::scrub`].
/// `tracing-subscriber` formats an event into one buffer and writes it with one `write_all`, so
/// each call here is one whole line.
#[derive(Clone, Copy, Debug)]
pub struct Scrubbed<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Scrubbed<M> {
    type Writer = ScrubbedWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbedWriter(self.0.make_writer())
    }
}

/// The writer of [`Scrubbed`].
#[derive(Debug)]
pub struct ScrubbedWriter<W>(W);

impl<W: Write> Write for ScrubbedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match std::str::from_utf8(buf) {
            Ok(line) => self.0.write_all(redact::scrub(line).as_bytes()),
            Err(_) => {
                let line = String::from_utf8_lossy(buf);
                self.0.write_all(redact::scrub(&line).as_bytes())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Text-mode fields: `message` as is, the others as `name=value`, every value with its control
/// characters escaped, so an event is always exactly one line and carries no terminal escapes of
/// its own. Fields `log.*` (from crates logging through `log`) are metadata, not content: skipped,
/// as the default formatter does.
#[derive(Clone, Copy, Debug, Default)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl EscapingVisitor<'_> {
    fn write(&mut self, field: &Field, value: fmt::Arguments<'_>) -> fmt::Result {
        if !self.first {
            self.writer.write_char(' ')?;
        }
        self.first = false;
        if field.name() != "message" {
            write!(self.writer, "{}=", field.name())?;
        }
        let text = value.to_string();
        write_escaped(&mut self.writer, &text)
    }
}

impl Visit for EscapingVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        self.result = self.write(field, format_args!("{value:?}"));
    }
}

/// Writes `text` with `\n`, `\r` and every other control character but tab escaped.
fn write_escaped(out: &mut impl fmt::Write, text: &str) -> fmt::Result {
    let mut rest = text;
    while let Some(i) = rest.find(|c: char| c.is_control() && c != '\t') {
        out.write_str(&rest[..i])?;
        let c = rest[i..].chars().next().unwrap_or_default();
        match c {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            c => write!(out, "\\u{{{:x}}}", c as u32)?,
        }
        rest = &rest[i + c.len_utf8()..];
    }
    out.write_str(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A [`MakeWriter`] into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn capture(format: LogFormat, ansi: bool, emit: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let sub = subscriber(
            format,
            EnvFilter::new("debug"),
            ansi,
            Scrubbed(buffer.clone()),
        );
        tracing::subscriber::with_default(sub, emit);
        let bytes = buffer.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8(bytes).unwrap_or_default()
    }

    fn sample() {
        let span = tracing::info_span!("destination", url = "http://billing:pw@10.0.0.2:8888");
        let _g = span.enter();
        tracing::warn!(
            subject = "consumer:1",
            error = %"first line\nsecond line\r\n\u{1b}[31mred",
            "delivery failed\nfor a while"
        );
        tracing::info!(batch = 7, "plain");
        tracing::debug!(state = "Flushing");
    }

    #[test]
    fn text_is_one_line_per_event_with_escapes_and_no_ansi() {
        let out = capture(LogFormat::Text, false, sample);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(!out.contains('\u{1b}'), "{out}");
        assert!(lines[0].contains("WARN"), "{out}");
        assert!(lines[0].contains("delivery failed\\nfor a while"), "{out}");
        assert!(
            lines[0].contains(r"error=first line\nsecond line\r\n\u{1b}[31mred"),
            "{out}"
        );
        assert!(lines[0].contains("subject=\"consumer:1\""), "{out}");
        assert!(lines[0].contains("destination{url="), "{out}");
        assert!(!out.contains(":pw@"), "{out}");
        assert!(lines[1].contains("plain batch=7"), "{out}");
    }

    #[test]
    fn text_on_a_terminal_is_coloured() {
        let out = capture(LogFormat::Text, true, sample);
        assert!(out.contains('\u{1b}'), "{out}");
        assert_eq!(out.lines().count(), 3);
    }

    #[test]
    fn json_lines_carry_the_required_fields() {
        let out = capture(LogFormat::Json, true, sample);
        assert!(!out.contains('\u{1b}'), "json never has colour: {out}");
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(lines.len(), 3, "{out}");
        for l in &lines {
            for key in ["timestamp", "level", "target", "message"] {
                assert!(l.get(key).is_some(), "{key} missing in {l}");
            }
            assert_eq!(l["span"]["name"], "destination", "{l}");
            assert_eq!(l["span"]["url"], "http://billing:***@10.0.0.2:8888", "{l}");
            assert_eq!(l["spans"][0]["name"], "destination", "{l}");
        }
        assert_eq!(lines[0]["message"], "delivery failed\nfor a while");
        assert_eq!(lines[0]["subject"], "consumer:1");
        assert_eq!(lines[1]["batch"], 7);
        assert_eq!(
            lines[2]["message"], "",
            "a fields-only event gets an empty message"
        );
        assert_eq!(lines[2]["state"], "Flushing");
    }

    #[test]
    fn a_panic_is_one_event() {
        let out = capture(LogFormat::Json, false, || {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(log_panic));
            let caught = std::panic::catch_unwind(|| panic!("boom\nsecond line"));
            std::panic::set_hook(previous);
            assert!(caught.is_err());
        });
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(lines.len(), 1, "{out}");
        assert_eq!(lines[0]["level"], "ERROR");
        assert_eq!(lines[0]["panic"], "boom\nsecond line");
        assert!(
            lines[0]["location"]
                .as_str()
                .is_some_and(|l| l.contains("logging.rs")),
            "{out}"
        );
    }

    #[test]
    fn no_color_wins_and_only_terminals_get_colour() {
        use std::ffi::OsStr;
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
    }

    #[test]
    fn escaping_leaves_ordinary_text_alone() {
        let mut s = String::new();
        write_escaped(&mut s, "a\tb ü €").unwrap_or_default();
        assert_eq!(s, "a\tb ü €");
    }
}
