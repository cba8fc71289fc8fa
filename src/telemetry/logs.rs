//! Log lines: text or JSON on standard error, written by a thread of their own, with
//! repeated identical warnings and errors written once per window.

use std::any::TypeId;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_core::callsite::{DefaultCallsite, Identifier};
use tracing_core::field::FieldSet;
use tracing_core::metadata::Kind;
use tracing_core::subscriber::Interest;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Registry};

use super::filter::PerCallFilter;
use crate::config::LogFormat;

/// A layer of the global subscriber.
pub(super) type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Maximum number of distinct warnings and errors remembered for suppression. Past it
/// the ones whose window has ended are forgotten, and then all of them if needed.
const MAX_REMEMBERED_LINES: usize = 4096;

/// Builds the log layer: `RUST_LOG` or `default_filter` picks the lines, a writer
/// thread writes them to standard error, and repeats within `repeat_window` are
/// suppressed. Lines are dropped rather than waited for when the writer thread falls
/// 128,000 lines behind. The guard flushes what is queued when it is dropped.
pub(super) fn log_layer(
    format: LogFormat,
    default_filter: &str,
    repeat_window: Duration,
) -> (BoxedLayer, WorkerGuard) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("erp-sync-log-writer")
        .finish(std::io::stderr());

    let lines: BoxedLayer = match format {
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false),
        ),
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_writer(writer),
        ),
    };
    let layer = RepeatLimiter::new(lines, repeat_window).with_filter(PerCallFilter(filter));
    (Box::new(layer), guard)
}

/// Passes events to `inner`, except warnings and errors identical to one written less
/// than `window` ago: the same callsite with the same field values. The next identical
/// line written after the window is followed by a line with the number suppressed.
pub(crate) struct RepeatLimiter<L> {
    inner: L,
    window: Duration,
    written: Mutex<HashMap<u64, Written>>,
}

/// When a line was last written and how many copies were suppressed since.
struct Written {
    at: Instant,
    suppressed: u64,
}

impl<L> RepeatLimiter<L> {
    pub(crate) fn new(inner: L, window: Duration) -> RepeatLimiter<L> {
        RepeatLimiter {
            inner,
            window,
            written: Mutex::new(HashMap::new()),
        }
    }

    /// Decides whether the line with this fingerprint is written at `now`. Returns the
    /// number of copies suppressed since it was last written, or `None` to suppress it.
    fn admit(&self, fingerprint: u64, now: Instant) -> Option<u64> {
        let mut written = self.written.lock().expect("repeat limiter lock");
        if let Some(line) = written.get_mut(&fingerprint) {
            if now.saturating_duration_since(line.at) < self.window {
                line.suppressed += 1;
                return None;
            }
            line.at = now;
            return Some(std::mem::take(&mut line.suppressed));
        }

        if written.len() >= MAX_REMEMBERED_LINES {
            written.retain(|_, line| now.saturating_duration_since(line.at) < self.window);
            if written.len() >= MAX_REMEMBERED_LINES {
                written.clear();
            }
        }
        written.insert(
            fingerprint,
            Written {
                at: now,
                suppressed: 0,
            },
        );
        Some(0)
    }
}

impl<S, L> Layer<S> for RepeatLimiter<L>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if self.window.is_zero() || level > Level::WARN {
            self.inner.on_event(event, ctx);
            return;
        }

        let line = Fingerprint::of(event);
        let Some(suppressed) = self.admit(line.hash, Instant::now()) else {
            return;
        };
        if suppressed > 0 {
            let summary = summary_metadata(level);
            let fields = summary.fields();
            let message = "identical log lines suppressed";
            let values: [Option<&dyn tracing::Value>; 3] = [
                Some(&message),
                Some(&suppressed),
                Some(&line.message.as_str()),
            ];
            let value_set = fields.value_set_all(&values);
            self.inner
                .on_event(&Event::new(summary, &value_set), ctx.clone());
        }
        self.inner.on_event(event, ctx);
    }

    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber);
    }

    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        self.inner.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.enabled(metadata, ctx)
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        self.inner.on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, span: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        self.inner.on_record(span, values, ctx);
    }

    fn on_follows_from(&self, span: &Id, follows: &Id, ctx: Context<'_, S>) {
        self.inner.on_follows_from(span, follows, ctx);
    }

    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.event_enabled(event, ctx)
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        self.inner.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        self.inner.on_exit(id, ctx);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        self.inner.on_close(id, ctx);
    }

    fn on_id_change(&self, old: &Id, new: &Id, ctx: Context<'_, S>) {
        self.inner.on_id_change(old, new, ctx);
    }

    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            return Some(self as *const Self as *const ());
        }
        // SAFETY: the inner layer upholds the contract for its own type ids.
        unsafe { self.inner.downcast_raw(id) }
    }
}

/// The identity of a line: its callsite and every field's value.
struct Fingerprint {
    hash: u64,
    message: String,
}

impl Fingerprint {
    fn of(event: &Event<'_>) -> Fingerprint {
        let mut hasher = DefaultHasher::new();
        event.metadata().callsite().hash(&mut hasher);
        let mut visitor = FingerprintVisitor {
            hasher,
            message: String::new(),
        };
        event.record(&mut visitor);
        Fingerprint {
            hash: visitor.hasher.finish(),
            message: visitor.message,
        }
    }
}

struct FingerprintVisitor {
    hasher: DefaultHasher,
    message: String,
}

impl Visit for FingerprintVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        field.name().hash(&mut self.hasher);
        text.hash(&mut self.hasher);
        if field.name() == "message" {
            self.message = text;
        }
    }
}

/// Field names of the line that reports suppressed repeats.
const SUMMARY_FIELDS: &[&str] = &["message", "suppressed", "line"];

static WARN_SUMMARY_CALLSITE: DefaultCallsite = DefaultCallsite::new(&WARN_SUMMARY);
static WARN_SUMMARY: Metadata<'static> = Metadata::new(
    "identical log lines suppressed",
    "erp_sync::telemetry",
    Level::WARN,
    Some(file!()),
    Some(line!()),
    Some(module_path!()),
    FieldSet::new(SUMMARY_FIELDS, Identifier(&WARN_SUMMARY_CALLSITE)),
    Kind::EVENT,
);

static ERROR_SUMMARY_CALLSITE: DefaultCallsite = DefaultCallsite::new(&ERROR_SUMMARY);
static ERROR_SUMMARY: Metadata<'static> = Metadata::new(
    "identical log lines suppressed",
    "erp_sync::telemetry",
    Level::ERROR,
    Some(file!()),
    Some(line!()),
    Some(module_path!()),
    FieldSet::new(SUMMARY_FIELDS, Identifier(&ERROR_SUMMARY_CALLSITE)),
    Kind::EVENT,
);

/// Chooses the metadata of the summary line, which has the level of the line it counts.
fn summary_metadata(level: Level) -> &'static Metadata<'static> {
    if level == Level::ERROR {
        &ERROR_SUMMARY
    } else {
        &WARN_SUMMARY
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// The message and the `suppressed` field of each line.
    type Lines = Vec<(String, Option<u64>)>;

    /// Collects the lines it receives.
    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Lines>>);

    impl<S: Subscriber> Layer<S> for Collect {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            struct Fields(String, Option<u64>);
            impl Visit for Fields {
                fn record_u64(&mut self, field: &Field, value: u64) {
                    if field.name() == "suppressed" {
                        self.1 = Some(value);
                    }
                }
                fn record_str(&mut self, field: &Field, value: &str) {
                    if field.name() == "message" {
                        self.0 = value.to_owned();
                    }
                }
                fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            let mut fields = Fields(String::new(), None);
            event.record(&mut fields);
            self.0.lock().unwrap().push((fields.0, fields.1));
        }
    }

    fn lines_written(window: Duration, emit: impl FnOnce()) -> Lines {
        let collect = Collect::default();
        let subscriber = Registry::default().with(RepeatLimiter::new(collect.clone(), window));
        tracing::subscriber::with_default(subscriber, emit);
        collect.0.lock().unwrap().clone()
    }

    #[test]
    fn identical_warnings_are_written_once() {
        let lines = lines_written(Duration::from_secs(60), || {
            for _ in 0..5 {
                tracing::warn!(error = "connection refused", "cannot claim commands");
            }
        });
        assert_eq!(lines, vec![("cannot claim commands".to_owned(), None)]);
    }

    #[test]
    fn warnings_with_other_fields_are_all_written() {
        let lines = lines_written(Duration::from_secs(60), || {
            for command in 0..3 {
                tracing::warn!(command.id = command, "platform call failed; retrying");
            }
        });
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn info_lines_are_never_suppressed() {
        let lines = lines_written(Duration::from_secs(60), || {
            for _ in 0..3 {
                tracing::info!("consuming events");
            }
        });
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn zero_window_writes_every_line() {
        let lines = lines_written(Duration::ZERO, || {
            for _ in 0..3 {
                tracing::error!("cannot store events");
            }
        });
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn line_after_the_window_reports_the_suppressed_count() {
        let limiter = RepeatLimiter::new((), Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(limiter.admit(7, start), Some(0));
        assert_eq!(limiter.admit(7, start + Duration::from_secs(1)), None);
        assert_eq!(limiter.admit(7, start + Duration::from_secs(9)), None);
        assert_eq!(limiter.admit(7, start + Duration::from_secs(10)), Some(2));
        assert_eq!(limiter.admit(7, start + Duration::from_secs(11)), None);
        assert_eq!(limiter.admit(8, start + Duration::from_secs(11)), Some(0));
    }

    #[test]
    fn summary_line_counts_what_was_suppressed() {
        let window = Duration::from_millis(20);
        let lines = lines_written(window, || {
            for copy in 0..4 {
                if copy == 3 {
                    // The window is measured in real time, so it has to pass.
                    std::thread::sleep(window + Duration::from_millis(5));
                }
                tracing::error!("cannot store events");
            }
        });
        assert_eq!(
            lines,
            vec![
                ("cannot store events".to_owned(), None),
                ("identical log lines suppressed".to_owned(), Some(2)),
                ("cannot store events".to_owned(), None),
            ]
        );
    }
}
