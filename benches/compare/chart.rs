//! The results as a picture: sniroute's ratio to each other proxy, one group of bars per
//! metric, as a self-contained SVG (hand-written: a few rectangles and labels need no
//! plotting crate).

use std::fmt::Write as _;

/// Which way a metric improves, so the chart can say whether a ratio above 1 is good.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// One metric's group of bars: sniroute's value divided by each proxy's, `None` unmeasured.
pub struct Row {
    pub label: String,
    pub better: Better,
    pub ratios: Vec<Option<f64>>,
}

/// The proxies compared against, in bar order, with their colours.
pub const SERIES: [(&str, &str); 3] = [
    ("haproxy", "#1f77b4"),
    ("haproxy-splice", "#ff7f0e"),
    ("nginx", "#2ca02c"),
];

const WIDTH: f64 = 960.0;
const LABEL_WIDTH: f64 = 360.0;
const RIGHT_MARGIN: f64 = 70.0;
const TOP: f64 = 70.0;
const BAR: f64 = 11.0;
const GROUP_GAP: f64 = 14.0;
const BOTTOM: f64 = 40.0;

/// The chart: `title` on top, a bar per ratio, a line at 1.0 (as good as the other proxy).
pub fn svg(title: &str, rows: &[Row]) -> String {
    let group = BAR * SERIES.len() as f64 + GROUP_GAP;
    let height = TOP + group * rows.len() as f64 + BOTTOM;
    let largest = rows
        .iter()
        .flat_map(|r| r.ratios.iter().flatten())
        .fold(2.0_f64, |m, &r| if r.is_finite() { m.max(r) } else { m });
    // Half steps, so the axis ends on a round number just past the largest bar.
    let max = (largest * 2.0).ceil() / 2.0;
    let plot = WIDTH - LABEL_WIDTH - RIGHT_MARGIN;
    let x = |ratio: f64| LABEL_WIDTH + plot * ratio.clamp(0.0, max) / max;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(
        out,
        r##"<rect width="{WIDTH}" height="{height}" fill="white"/>"##
    );
    let _ = writeln!(
        out,
        r##"<text x="10" y="22" font-size="15" font-weight="bold">{}</text>"##,
        escape(title)
    );
    // Legend.
    let mut lx = 10.0;
    for (name, colour) in SERIES {
        let _ = writeln!(
            out,
            r##"<rect x="{lx}" y="36" width="12" height="12" fill="{colour}"/><text x="{}" y="46">sniroute ÷ {name}</text>"##,
            lx + 16.0
        );
        lx += 190.0;
    }
    let _ = writeln!(
        out,
        r##"<text x="{lx}" y="46" fill="#555">(↑: higher is better, ↓: lower is better)</text>"##
    );

    // Grid: every half step, 1.0 (parity) in black.
    let bottom = height - BOTTOM + 4.0;
    let mut step = 0.0;
    while step <= max + 1e-9 {
        let gx = x(step);
        let (colour, width) = if (step - 1.0).abs() < 1e-9 {
            ("#000", 1.5)
        } else {
            ("#ddd", 1.0)
        };
        let _ = writeln!(
            out,
            r##"<line x1="{gx:.1}" y1="{}" x2="{gx:.1}" y2="{bottom}" stroke="{colour}" stroke-width="{width}"/><text x="{gx:.1}" y="{}" text-anchor="middle" fill="#555">{step:.1}×</text>"##,
            TOP - 6.0,
            bottom + 14.0
        );
        step += 0.5;
    }

    for (i, row) in rows.iter().enumerate() {
        let top = TOP + group * i as f64;
        let arrow = match row.better {
            Better::Higher => "↑",
            Better::Lower => "↓",
        };
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{:.1}" text-anchor="end">{} {arrow}</text>"##,
            LABEL_WIDTH - 8.0,
            top + BAR * SERIES.len() as f64 / 2.0 + 4.0,
            escape(&row.label)
        );
        for (j, ((_, colour), ratio)) in SERIES.iter().zip(&row.ratios).enumerate() {
            let Some(ratio) = ratio.filter(|r| r.is_finite()) else {
                continue;
            };
            let y = top + BAR * j as f64;
            let _ = writeln!(
                out,
                r##"<rect x="{LABEL_WIDTH}" y="{y:.1}" width="{:.1}" height="{}" fill="{colour}"/><text x="{:.1}" y="{:.1}" font-size="10">{ratio:.2}×</text>"##,
                x(ratio) - LABEL_WIDTH,
                BAR - 1.0,
                x(ratio) + 3.0,
                y + BAR - 2.0
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
