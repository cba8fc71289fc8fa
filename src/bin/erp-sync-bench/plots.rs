//! SVG plots for the results page: events settled over time, and the latency
//! distribution.

use std::path::Path;

use plotters::prelude::*;

/// Plots events settled per second over time from (seconds, events done) samples.
pub fn throughput(path: &Path, title: &str, timeline: &[(f64, i64)]) -> anyhow::Result<()> {
    let rates: Vec<(f64, f64)> = timeline
        .windows(2)
        .filter(|pair| pair[1].0 > pair[0].0)
        .map(|pair| {
            (
                pair[1].0,
                (pair[1].1 - pair[0].1) as f64 / (pair[1].0 - pair[0].0),
            )
        })
        .collect();
    let x_max = timeline
        .last()
        .map(|(seconds, _)| *seconds)
        .unwrap_or(1.0)
        .max(1.0);
    let y_max = rates.iter().map(|(_, rate)| *rate).fold(1.0, f64::max) * 1.1;

    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the worker started")
        .y_desc("events settled per second")
        .draw()?;
    chart.draw_series(LineSeries::new(rates, &BLUE))?;
    root.present()?;
    Ok(())
}

/// Plots the share of events whose latency is at most x milliseconds.
pub fn latency(path: &Path, title: &str, sorted_ms: &[f64]) -> anyhow::Result<()> {
    let count = sorted_ms.len().max(1) as f64;
    let x_max = sorted_ms.last().copied().unwrap_or(1.0).max(1.0);
    let points: Vec<(f64, f64)> = sorted_ms
        .iter()
        .enumerate()
        .map(|(index, ms)| (*ms, (index + 1) as f64 / count * 100.0))
        .collect();

    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0.1..x_max * 1.1).log_scale(), 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc("latency from publish to the platform receiving the call, ms (log scale)")
        .y_desc("events, % (cumulative)")
        .draw()?;
    chart.draw_series(LineSeries::new(points, &BLUE))?;
    root.present()?;
    Ok(())
}
