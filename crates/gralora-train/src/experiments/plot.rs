//! Line charts for the experiments, as SVG and PNG (plotters; text drawn with a bundled font,
//! so no system fonts are needed). Files are written under a temporary name and renamed.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::prelude::*;

use crate::error::{Result, TrainError};

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// `(x, y)` points, in x order.
    pub points: Vec<(f64, f64)>,
    /// Draw dashed-looking (thin, no markers): a reference level rather than a measurement.
    pub reference: bool,
}

/// A chart: title, axis labels, lines.
#[derive(Debug, Clone)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// x-axis label.
    pub x_label: String,
    /// y-axis label.
    pub y_label: String,
    /// Logarithmic x axis (ranks).
    pub log_x: bool,
    /// The lines.
    pub series: Vec<Series>,
}

const SIZE: (u32, u32) = (900, 560);

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is embedded in the binary; it parses (a failure would only lose the text).
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Data {
        path: path.to_path_buf(),
        msg: format!("drawing the chart failed: {e}"),
    }
}

/// Write `chart` to `stem.svg` and `stem.png`; returns both paths.
pub fn write_chart(chart: &Chart, stem: &Path) -> Result<[PathBuf; 2]> {
    register_font();
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    for path in [&svg, &png] {
        gralora::io::replace_with(path, |tmp| {
            if path == &svg {
                draw(chart, SVGBackend::new(tmp, SIZE).into_drawing_area())
                    .map_err(|e| std::io::Error::other(e.to_string()))
            } else {
                draw(chart, BitMapBackend::new(tmp, SIZE).into_drawing_area())
                    .map_err(|e| std::io::Error::other(e.to_string()))
            }
        })
        .map_err(|e| plot_err(path, e))?;
    }
    Ok([svg, png])
}

fn bounds(chart: &Chart) -> ((f64, f64), (f64, f64)) {
    let pts = chart.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return ((1.0, 2.0), (0.0, 1.0));
    }
    if x0 == x1 {
        x1 = x0 * 2.0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.08).max(1e-3);
    ((x0, x1), (y0 - pad, y1 + pad))
}

fn draw<DB: DrawingBackend>(
    chart: &Chart,
    root: DrawingArea<DB, plotters::coord::Shift>,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let ((x0, x1), (y0, y1)) = bounds(chart);
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(&chart.title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72);
    if chart.log_x {
        let mut c = builder.build_cartesian_2d((x0 * 0.9..x1 * 1.1).log_scale(), y0..y1)?;
        c.configure_mesh()
            .x_desc(&chart.x_label)
            .y_desc(&chart.y_label)
            .label_style(("sans-serif", 15))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()?;
        for (i, s) in chart.series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let width = if s.reference { 1 } else { 2 };
            c.draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(width),
            ))?
            .label(&s.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
            if !s.reference {
                c.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
            }
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()?;
    } else {
        let mut c = builder.build_cartesian_2d(x0..x1, y0..y1)?;
        c.configure_mesh()
            .x_label_formatter(&|x| format!("{x:.0}"))
            .x_desc(&chart.x_label)
            .y_desc(&chart.y_label)
            .label_style(("sans-serif", 15))
            .draw()?;
        for (i, s) in chart.series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            c.draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(1),
            ))?
            .label(&s.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_svg_and_png_with_text() {
        let dir = std::env::temp_dir().join(format!("gralora-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let chart = Chart {
            title: "accuracy vs rank".into(),
            x_label: "rank r".into(),
            y_label: "accuracy".into(),
            log_x: true,
            series: vec![
                Series {
                    name: "LoRA".into(),
                    points: vec![(8.0, 0.8), (16.0, 0.82), (32.0, 0.81)],
                    reference: false,
                },
                Series {
                    name: "full".into(),
                    points: vec![(8.0, 0.85), (32.0, 0.85)],
                    reference: true,
                },
            ],
        };
        let [svg, png] = write_chart(&chart, &dir.join("sweep")).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg"), "{}", &text[..50.min(text.len())]);
        assert!(text.contains("LoRA") && text.contains("accuracy vs rank"));
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        // Text is rendered with the bundled font: the caption band above the plot area
        // holds dark pixels in the bitmap.
        let mut buf = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
        draw(
            &chart,
            BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area(),
        )
        .unwrap();
        let dark_in_caption = buf[..(SIZE.0 * 40 * 3) as usize]
            .chunks(3)
            .filter(|p| p.iter().all(|&c| c < 128))
            .count();
        assert!(dark_in_caption > 50, "{dark_in_caption} dark pixels");
        // No temporary files left.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
