//! W3C trace context (`traceparent`, `tracestate`) as it travels in AMQP headers, is
//! stored with events and commands, and is sent to the platform.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Header and column name of the W3C trace parent.
pub const TRACEPARENT: &str = "traceparent";
/// Header and column name of the W3C vendor trace state.
pub const TRACESTATE: &str = "tracestate";

/// A trace context in its W3C text form, as stored with an event or a command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Wraps header values as received; nothing is validated until the context is used.
    pub fn new(traceparent: Option<String>, tracestate: Option<String>) -> TraceContext {
        TraceContext {
            traceparent,
            tracestate,
        }
    }

    /// Returns the context of a `tracing` span, or `None` when the span has no valid
    /// OpenTelemetry context (no telemetry is installed, or the span is disabled).
    pub fn of_span(span: &tracing::Span) -> Option<TraceContext> {
        let context = span.context();
        if !context.span().span_context().is_valid() {
            return None;
        }

        let mut headers = HashMap::new();
        TraceContextPropagator::new().inject_context(&context, &mut headers);
        let traceparent = headers.remove(TRACEPARENT)?;
        let tracestate = headers.remove(TRACESTATE).filter(|state| !state.is_empty());
        Some(TraceContext::new(Some(traceparent), tracestate))
    }

    /// Parses the context into an OpenTelemetry context whose remote span is the
    /// parent of new spans. An absent or invalid `traceparent` gives an empty context,
    /// under which a new span starts a new trace.
    pub fn to_parent(&self) -> opentelemetry::Context {
        let Some(traceparent) = &self.traceparent else {
            return opentelemetry::Context::new();
        };
        let mut headers = HashMap::with_capacity(2);
        headers.insert(TRACEPARENT.to_owned(), traceparent.clone());
        if let Some(tracestate) = &self.tracestate {
            headers.insert(TRACESTATE.to_owned(), tracestate.clone());
        }
        TraceContextPropagator::new().extract(&headers)
    }

    /// Returns the span context that the `traceparent` names, when it is valid.
    pub fn span_context(&self) -> Option<SpanContext> {
        let parent = self.to_parent();
        let span_context = parent.span().span_context().clone();
        span_context.is_valid().then_some(span_context)
    }

    /// Returns the trace id in lower-case hex, when the `traceparent` is valid.
    pub fn trace_id(&self) -> Option<String> {
        self.span_context()
            .map(|context| context.trace_id().to_string())
    }

    /// Makes `span` a child of this context. Does nothing when the context is invalid
    /// or the span was already started, so the span then starts a trace of its own.
    pub fn adopt(&self, span: &tracing::Span) {
        if self.span_context().is_some() {
            // The only failures are a disabled span or no telemetry installed, and in
            // both cases there is no OpenTelemetry span to give a parent.
            let _ = span.set_parent(self.to_parent());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACEPARENT_VALUE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_traceparent_names_its_trace() {
        let context = TraceContext::new(Some(TRACEPARENT_VALUE.to_owned()), None);
        assert_eq!(
            context.trace_id().as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let span_context = context.span_context().unwrap();
        assert_eq!(span_context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(span_context.is_sampled());
        assert!(span_context.is_remote());
    }

    #[test]
    fn invalid_traceparent_gives_no_parent() {
        for value in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        ] {
            let context = TraceContext::new(Some(value.to_owned()), None);
            assert_eq!(context.span_context(), None, "{value}");
        }
        assert_eq!(TraceContext::default().trace_id(), None);
    }

    #[test]
    fn tracestate_travels_with_the_parent() {
        let context = TraceContext::new(
            Some(TRACEPARENT_VALUE.to_owned()),
            Some("vendor=value".to_owned()),
        );
        let span_context = context.span_context().unwrap();
        assert_eq!(span_context.trace_state().header(), "vendor=value");
    }

    #[test]
    fn span_without_telemetry_has_no_context() {
        let span = tracing::info_span!("no subscriber");
        assert_eq!(TraceContext::of_span(&span), None);
    }
}
