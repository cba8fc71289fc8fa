//! Per-layer filters that decide on every call.
//!
//! A per-layer filter hands its decision from `enabled` to `on_event` through a
//! thread-local bit. When every filter accepts a callsite for good
//! (`Interest::always`), the `tracing` macros skip `enabled` and `on_event` reads
//! whatever bit the previous `enabled` call left. Libraries that ask "is this level
//! on?" without emitting anything, as `log::log_enabled!` does through the `log`
//! bridge after every sqlx query, leave such bits behind, and the next line of the
//! thread is dropped from the layer. [`PerCallFilter`] never grants `always`, so `enabled`
//! runs before every span and event and the bit is always the current one.

use tracing::Metadata;
use tracing::span::{Attributes, Id, Record};
use tracing_core::subscriber::Interest;
use tracing_core::{Event, LevelFilter};
use tracing_subscriber::layer::{Context, Filter};

/// Wraps a filter so that its callsites are re-evaluated on every call.
pub(super) struct PerCallFilter<F>(pub(super) F);

impl<S, F: Filter<S>> Filter<S> for PerCallFilter<F> {
    fn enabled(&self, metadata: &Metadata<'_>, ctx: &Context<'_, S>) -> bool {
        self.0.enabled(metadata, ctx)
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        let interest = self.0.callsite_enabled(metadata);
        if interest.is_always() {
            Interest::sometimes()
        } else {
            interest
        }
    }

    fn event_enabled(&self, event: &Event<'_>, ctx: &Context<'_, S>) -> bool {
        self.0.event_enabled(event, ctx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.0.max_level_hint()
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        self.0.on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        self.0.on_record(id, values, ctx);
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        self.0.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        self.0.on_exit(id, ctx);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        self.0.on_close(id, ctx);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::{Level, Subscriber};
    use tracing_core::callsite::{DefaultCallsite, Identifier};
    use tracing_core::field::FieldSet;
    use tracing_core::metadata::Kind;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::{Layer, SubscriberExt as _};
    use tracing_subscriber::{EnvFilter, Registry};

    use super::*;

    /// Counts the events it receives.
    #[derive(Clone, Default)]
    struct Count(Arc<Mutex<usize>>);

    impl<S: Subscriber> Layer<S> for Count {
        fn on_event(&self, _event: &Event<'_>, _ctx: Context<'_, S>) {
            *self.0.lock().unwrap() += 1;
        }
    }

    /// A debug line of a library that is asked about but never emitted.
    static PROBE_CALLSITE: DefaultCallsite = DefaultCallsite::new(&PROBE);
    static PROBE: Metadata<'static> = Metadata::new(
        "probe",
        "library::query",
        Level::DEBUG,
        None,
        None,
        None,
        FieldSet::new(&[], Identifier(&PROBE_CALLSITE)),
        Kind::EVENT,
    );

    #[test]
    fn per_call_filter_survives_level_probe() {
        let lines = Count::default();
        let spans = Count::default();
        let subscriber = Registry::default()
            .with(
                lines
                    .clone()
                    .with_filter(PerCallFilter(EnvFilter::new("info,library=warn"))),
            )
            .with(spans.clone().with_filter(PerCallFilter(
                Targets::new().with_target("erp_sync", Level::INFO),
            )));
        let dispatch = tracing::Dispatch::new(subscriber);
        tracing::dispatcher::with_default(&dispatch, || {
            for _ in 0..3 {
                tracing::info!("consuming events");
                dispatch.enabled(&PROBE);
            }
        });
        assert_eq!(*lines.0.lock().unwrap(), 3);
    }
}
